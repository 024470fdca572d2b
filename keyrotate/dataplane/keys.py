"""Turn secret references into a codec: the only place data-plane commands touch key values."""

from __future__ import annotations

from keyrotate.crypto.codecs import FORMATS, MODES, Codec, make_codec
from keyrotate.errors import ConfigError
from keyrotate.secrets.refs import resolve


def codec_from_refs(fmt: str, new_ref: str, old_ref: str | None, mode: str = "rewrap",
                    new_flag: str = "--new-key", old_flag: str = "--old-key") -> Codec:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown --format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if mode not in MODES:
        raise ConfigError(f"unknown --mode {mode!r}; expected one of {', '.join(MODES)}")
    new_secret = resolve(new_ref, new_flag)
    old_secret = resolve(old_ref, old_flag) if old_ref is not None else None
    try:
        return make_codec(fmt, new_secret, old_secret, mode)
    except ValueError as e:
        # ValueError messages from make_codec never include key material
        if "same key" in str(e):
            raise ConfigError(f"{old_flag} {old_ref} and {new_flag} {new_ref} name the same key; "
                              "nothing to rotate") from None
        raise ConfigError(f"{fmt} key from {new_ref if old_ref is None else 'the references'}: "
                          f"{e}") from None
