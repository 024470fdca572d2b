"""Codecs bind a storage format to the keys of one rotation.

A codec answers two questions about one stored value, with authenticated decryption as
the only judge (a `kid` only orders which key is tried first):

- rotate(value): the value to write (under the new key), or None if the row is
  already under the new key; InvalidEnvelope if the row is malformed or opens under
  neither key.
- census(value): "ok" (opens under the key being verified, payload included) or "old"
  (opens under the old key); InvalidEnvelope otherwise.

Codecs are plain picklable objects so worker processes receive them through the
process pool's initializer (a pipe), never through argv.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from keyrotate.crypto import envelope as env_mod
from keyrotate.crypto import fernet_codec
from keyrotate.crypto.fernet_codec import FernetKey
from keyrotate.crypto.keys import MasterKey
from keyrotate.errors import InvalidEnvelope

FORMATS = ("tminus-envelope", "fernet")
MODES = ("rewrap", "fresh-dek")
Verdict = Literal["ok", "old"]  # what census() says of one value


class Codec(Protocol):
    """The keys of one rotation, bound to a format. Key ids are one-way and printable."""

    mode: str

    @property
    def new_kid(self) -> str: ...

    @property
    def old_kid(self) -> str | None: ...

    def rotate(self, value: object) -> str | None: ...

    def census(self, value: object) -> Verdict: ...


class _KeyIds:
    """new_kid / old_kid from the codec's `new` and `old` keys."""

    new: MasterKey | FernetKey
    old: MasterKey | FernetKey | None

    @property
    def new_kid(self) -> str:
        return self.new.kid

    @property
    def old_kid(self) -> str | None:
        return self.old.kid if self.old is not None else None


NEITHER_KEY = "opens under neither the old nor the new key"


@dataclass(frozen=True)
class EnvelopeCodec(_KeyIds):
    """tminus-envelope rows: `new` is the target key, `old` the key being retired."""

    new: MasterKey
    old: MasterKey | None = None
    mode: str = "rewrap"

    def _keys_in_order(self, kid: str | None) -> list[tuple[str, MasterKey]]:
        """Old key first (most rows during a rotation), unless the kid names the new key."""
        if self.old is None:
            return [("new", self.new)]
        if kid == self.new.kid:
            return [("new", self.new), ("old", self.old)]
        return [("old", self.old), ("new", self.new)]

    def rotate(self, value: object) -> str | None:
        env = env_mod.parse(value)
        for name, key in self._keys_in_order(env.kid):
            dek = env_mod.unwrap_dek(env, key)
            if dek is None:
                continue
            if name == "new":
                return None
            if self.mode == "fresh-dek":
                return env_mod.fresh_dek(env, dek, self.new)
            return env_mod.rewrap(env, dek, self.new)
        raise InvalidEnvelope(NEITHER_KEY)

    def census(self, value: object) -> Verdict:
        env = env_mod.parse(value)
        for name, key in self._keys_in_order(env.kid):
            dek = env_mod.unwrap_dek(env, key)
            if dek is None:
                continue
            env_mod.open_payload(env, dek)
            return "ok" if name == "new" else "old"
        raise InvalidEnvelope(NEITHER_KEY if self.old else "does not open under the key")


@dataclass(frozen=True)
class FernetCodec(_KeyIds):
    """Fernet tokens. Fernet has no separate DEK: both modes re-encrypt with a fresh IV."""

    new: FernetKey
    old: FernetKey | None = None
    mode: str = "rewrap"

    def rotate(self, value: object) -> str | None:
        token = fernet_codec.token_bytes(value)
        if fernet_codec.opens(self.new, token) is not None:
            return None
        payload = fernet_codec.opens(self.old, token) if self.old else None
        if payload is None:
            raise InvalidEnvelope(NEITHER_KEY)
        return fernet_codec.reencrypt(payload, self.new)

    def census(self, value: object) -> Verdict:
        token = fernet_codec.token_bytes(value)
        if fernet_codec.opens(self.new, token) is not None:
            return "ok"
        if self.old is not None and fernet_codec.opens(self.old, token) is not None:
            return "old"
        raise InvalidEnvelope(NEITHER_KEY if self.old else "does not open under the key")


def make_codec(fmt: str, new_secret: str, old_secret: str | None, mode: str = "rewrap") -> Codec:
    """Build the codec for a format from secret strings. ValueError on bad keys or names."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if fmt == "tminus-envelope":
        new = MasterKey.from_secret(new_secret)
        old = MasterKey.from_secret(old_secret) if old_secret is not None else None
        if old is not None and old.same_as(new):
            raise ValueError("the old key and the new key are the same key")
        return EnvelopeCodec(new=new, old=old, mode=mode)
    if fmt == "fernet":
        newf = FernetKey(new_secret)
        oldf = FernetKey(old_secret) if old_secret is not None else None
        if oldf is not None and oldf.same_as(newf):
            raise ValueError("the old key and the new key are the same key")
        return FernetCodec(new=newf, old=oldf, mode=mode)
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
