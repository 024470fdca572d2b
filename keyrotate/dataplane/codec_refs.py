"""Turn secret references into a codec: the only place data-plane commands touch key values.

A new tminus-envelope key must be fit for the job (crypto.keys.new_key_problem): a weak
or malformed new key is refused before anything is written. An old key that looks like
hex but falls back to SHA-256 is only warned about: it is what the Workers use.
"""

from __future__ import annotations

import logging
from typing import Sequence

from keyrotate.crypto.codecs import FORMATS, MODES, Codec, SameKey, make_codec
from keyrotate.crypto.keys import hex_fallback, new_key_problem
from keyrotate.errors import ConfigError
from keyrotate.secrets.refs import resolve

log = logging.getLogger("keyrotate")


def codec_from_refs(fmt: str, new_ref: str, old_ref: str | None, mode: str = "rewrap",
                    new_flag: str = "--new-key", old_flag: str = "--old-key",
                    also_old: Sequence[str] = (), check_new: bool = True) -> Codec:
    """check_new=False where the "new" key is only read against (verify --key, status)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown --format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if mode not in MODES:
        raise ConfigError(f"unknown --mode {mode!r}; expected one of {', '.join(MODES)}")
    new_secret = resolve(new_ref, new_flag)
    old_secret = resolve(old_ref, old_flag) if old_ref is not None else None
    more = [resolve(ref, old_flag) for ref in also_old]
    if fmt == "tminus-envelope":
        problem = new_key_problem(new_secret) if check_new else None
        if problem:
            raise ConfigError(f"{new_flag} {new_ref} {problem}; nothing was changed")
        for ref, secret in ((new_ref, new_secret), (old_ref, old_secret)):
            if secret is not None and hex_fallback(secret):
                log.warning("%s looks like a 64-hex key but is not exactly one: it is used as "
                            "the Workers use it, hashed with SHA-256", ref)
    try:
        return make_codec(fmt, new_secret, old_secret, mode, more)
    except SameKey:
        raise ConfigError(f"{old_flag} {old_ref} and {new_flag} {new_ref} name the same key; "
                          "nothing to rotate") from None
    except ValueError as e:
        # ValueError messages from make_codec never include key material
        raise ConfigError(f"{fmt} key from {new_ref if old_ref is None else 'the references'}: "
                          f"{e}") from None
