"""Codecs bind a storage format to the keys of one rotation.

A codec answers two questions about one stored value, with authenticated decryption as
the only judge (a `kid` only orders which key is tried first):

- rotate(value): the value to write (under the new key, checked to open under it as a
  Worker reads it), or None if the row is already under the new key; InvalidEnvelope if the row is malformed, opens under none
  of the keys, or its payload does not authenticate (a row a Worker could not read is
  reported, never rewritten).
- census(value): the kid of the key the value opens under, payload included;
  InvalidEnvelope otherwise.

A rotation has one new key, one old key and possibly more old keys (`also_old`: after a
compromise takes over an open rotation, rows can be under either earlier key).

Codecs are plain picklable objects so worker processes receive them through the
process pool's initializer (a pipe), never through argv.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from cryptography.fernet import MultiFernet

from keyrotate.crypto import envelope as env_mod
from keyrotate.crypto import fernet_codec
from keyrotate.crypto.fernet_codec import FernetKey
from keyrotate.crypto.keys import MasterKey
from keyrotate.errors import InvalidEnvelope

FORMATS = ("tminus-envelope", "fernet")
MODES = ("rewrap", "fresh-dek")
NEITHER_KEY = "opens under neither the old nor the new key"
# rotate checks every value it makes opens under the new key as a Worker reads it, before
# anyone writes it (and the census trusts it: dataplane/vouch.py); never seen, but if a
# rewrite did not, the row is reported and left as it was
UNVERIFIED = "its rewrite did not open under the new key; left as it was"


class SameKey(ValueError):
    """The old and the new key are one key (a programmer's or operator's mistake, not
    hostile input): there is nothing to rotate."""


class Codec(Protocol):
    """The keys of one rotation, bound to a format. Key ids are one-way and printable."""

    mode: str

    @property
    def new_kid(self) -> str: ...

    @property
    def old_kid(self) -> str | None: ...

    @property
    def old_kids(self) -> tuple[str, ...]: ...

    def rotate(self, value: object) -> str | None: ...

    def census(self, value: object) -> str: ...


class _Keys:
    """Key ids from the codec's `new`, `old` and `also_old` keys."""

    new: MasterKey | FernetKey
    old: MasterKey | FernetKey | None
    also_old: tuple[MasterKey, ...] | tuple[FernetKey, ...]

    @property
    def new_kid(self) -> str:
        return self.new.kid

    @property
    def old_kid(self) -> str | None:
        return self.old.kid if self.old is not None else None

    @property
    def old_kids(self) -> tuple[str, ...]:
        return tuple(k.kid for k in self._olds())

    def _olds(self) -> list:
        return ([self.old] if self.old is not None else []) + list(self.also_old)

    def _neither(self) -> str:
        return NEITHER_KEY if self.old is not None else "does not open under the key"


@dataclass(frozen=True)
class EnvelopeCodec(_Keys):
    """tminus-envelope rows: `new` is the target key, `old` (and `also_old`) retiring keys."""

    new: MasterKey
    old: MasterKey | None = None
    mode: str = "rewrap"
    also_old: tuple[MasterKey, ...] = ()

    def _keys_in_order(self, kid: str | None) -> list[MasterKey]:
        """The key the kid names first; else the old keys (most rows during a rotation)."""
        keys = [*self._olds(), self.new]
        if kid is not None:
            keys.sort(key=lambda k: k.kid != kid)
        return keys

    def _open(self, value: object, payload: bool = False
              ) -> tuple[env_mod.Envelope, MasterKey, bytes, bytes | None]:
        """(envelope, key, DEK, payload if asked) of the first key that opens it; the
        payload always authenticated (a heavy one a chunk at a time, when not asked for)."""
        env = env_mod.parse(value)
        for key in self._keys_in_order(env.kid):
            dek = env_mod.unwrap_dek(env, key)
            if dek is not None:
                if payload:
                    return env, key, dek, env_mod.open_payload(env, dek)
                env_mod.authenticate(env, dek)
                return env, key, dek, None
        raise InvalidEnvelope(self._neither())

    def rotate(self, value: object) -> str | None:
        fresh = self.mode == "fresh-dek"
        env, key, dek, payload = self._open(value, payload=fresh)
        if key is self.new:
            return None
        if payload is not None:
            fields = env_mod.sealed_fields(payload, self.new)
            del payload        # a heavy payload is not held while the envelope is rewritten
            out = env.rewritten(fields)
            try:
                opened = self._open(out)[1] is self.new
            except InvalidEnvelope:
                opened = False
        else:
            out = env_mod.rewrap(env, dek, self.new)
            opened = env_mod.rewrap_opens(out, env, dek, self.new)
        if not opened:
            raise InvalidEnvelope(UNVERIFIED)
        return out

    def census(self, value: object) -> str:
        return self._open(value)[1].kid


@dataclass(frozen=True)
class FernetCodec(_Keys):
    """Fernet tokens. Fernet has no separate DEK: both modes re-encrypt with a fresh IV and
    keep the token's timestamp, as MultiFernet.rotate does (apps that decrypt with ttl=
    must not see expired tokens come back to life)."""

    new: FernetKey
    old: FernetKey | None = None
    mode: str = "rewrap"
    also_old: tuple[FernetKey, ...] = ()

    def _opener(self, token: bytes) -> FernetKey:
        for key in [self.new, *self._olds()]:
            if fernet_codec.opens(key, token) is not None:
                return key
        raise InvalidEnvelope(self._neither())

    def rotate(self, value: object) -> str | None:
        token = fernet_codec.token_bytes(value)
        key = self._opener(token)
        if key is self.new:
            return None
        rotator = MultiFernet([self.new.fernet, key.fernet])
        out = rotator.rotate(token)
        if fernet_codec.opens(self.new, out) is None:
            raise InvalidEnvelope(UNVERIFIED)
        return out.decode("ascii")

    def census(self, value: object) -> str:
        return self._opener(fernet_codec.token_bytes(value)).kid


def make_codec(fmt: str, new_secret: str, old_secret: str | None, mode: str = "rewrap",
               also_old: Sequence[str] = ()) -> Codec:
    """Build the codec for a format from secret strings. ValueError on bad keys or names."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    key_type: Callable[[str], Any]
    if fmt == "tminus-envelope":
        key_type = MasterKey.from_secret
    elif fmt == "fernet":
        key_type = FernetKey
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    new = key_type(new_secret)
    olds = [key_type(s) for s in ([old_secret] if old_secret is not None else [])]
    extra = tuple(key_type(s) for s in also_old)
    for other in [*olds, *extra]:
        if other.same_as(new):
            raise SameKey("the old key and the new key are the same key")
    codec_type = EnvelopeCodec if fmt == "tminus-envelope" else FernetCodec
    return codec_type(new=new, old=olds[0] if olds else None, mode=mode,
                      also_old=tuple(k for k in extra if not any(k.same_as(o) for o in olds)))
