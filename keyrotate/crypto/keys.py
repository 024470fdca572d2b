"""Master keys exactly as the Workers derive them, and their non-secret identifiers.

The Workers turn the MASTER_KEY secret string into an AES-256 key like this: a string of
exactly 64 hex characters is the raw 32-byte key; any other string is hashed with SHA-256
over its UTF-8 bytes. keyrotate must do the same or rotated rows would not open.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass, field

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_KID_LABEL = b"keyrotate key id v1"


def is_raw_hex_key(secret: str) -> bool:
    """Exactly 64 hex characters: the Workers use these as the raw key bytes."""
    return bool(_HEX64.fullmatch(secret))


def derive_master_key(secret: str) -> bytes:
    """The 32-byte AES key the Workers derive from the secret string."""
    if not isinstance(secret, str):
        raise TypeError("a master key secret is a str")
    if not secret:
        raise ValueError("a master key secret must not be empty")
    if is_raw_hex_key(secret):
        return bytes.fromhex(secret)
    return hashlib.sha256(secret.encode("utf-8")).digest()


# One range for every new key keyrotate makes or accepts: `keygen --bytes`, the manifest's
# `generate` / `format`, and reencrypt's check of --new-key all use it.
MIN_NEW_KEY_BYTES = 32
MAX_NEW_KEY_BYTES = 1024
NEW_KEY_RANGE = f"{MIN_NEW_KEY_BYTES} to {MAX_NEW_KEY_BYTES} bytes"
_HEX = re.compile(r"[0-9a-fA-F]+")
_B64 = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")


def _bare(secret: str) -> str:
    return secret.strip().lstrip("\ufeff").strip()


def hex_fallback(secret: str) -> bool:
    """A 64-hex key with a stray space, BOM or newline: the Workers hash it as a
    passphrase (SHA-256) instead of using its bytes, silently."""
    return not is_raw_hex_key(secret) and is_raw_hex_key(_bare(secret))


def new_key_problem(secret: str) -> str | None:
    """Why a value is unfit to become a new master key (None if it is fit): under 32 bytes
    of key material as hex, base64 or raw bytes, or a hex key that would fall back to
    SHA-256. Never includes the value."""
    if hex_fallback(secret):
        return ("looks like a 64-hex-character key but has a space, BOM or newline around it: "
                "the Workers would hash it as a passphrase instead of using its bytes")
    if secret != _bare(secret) or any(c in secret for c in "\r\n"):
        return "has whitespace, a BOM or a newline around or in it"
    if _HEX.fullmatch(secret) and len(secret) != 64:
        return (f"is {len(secret)} hex characters; a raw key is exactly 64 "
                f"({MIN_NEW_KEY_BYTES} bytes)")
    if _B64.fullmatch(secret) and len(secret) % 4 == 0:
        try:
            n = len(base64.b64decode(secret.replace("-", "+").replace("_", "/"), validate=True))
        except ValueError:
            n = len(secret.encode())
        if n < MIN_NEW_KEY_BYTES:
            return f"decodes to {n} bytes; a new key needs at least {MIN_NEW_KEY_BYTES}"
        return None
    if len(secret.encode("utf-8")) < MIN_NEW_KEY_BYTES:
        return (f"is only {len(secret.encode('utf-8'))} bytes; a new key needs at least "
                f"{MIN_NEW_KEY_BYTES} bytes of key material (keyrotate keygen makes one)")
    return None


def new_key_size_problem(nbytes: int) -> str | None:
    """Why a new key of `nbytes` bytes would be refused later (None if it would not)."""
    if MIN_NEW_KEY_BYTES <= nbytes <= MAX_NEW_KEY_BYTES:
        return None
    return (f"{nbytes} bytes is outside {NEW_KEY_RANGE}: a new key needs at least "
            f"{MIN_NEW_KEY_BYTES} bytes of key material")


def key_id(raw_key: bytes) -> str:
    """A short, stable, one-way identifier of a key: safe to store and to print.

    HMAC keyed by the key itself, so the id reveals nothing about the key and cannot be
    computed without it. 12 hex characters: collisions among a handful of keys are
    negligible, and a wrong guess costs only a trial decryption.
    """
    if len(raw_key) == 0:
        raise ValueError("empty key")
    return hmac.new(raw_key, _KID_LABEL, hashlib.sha256).hexdigest()[:12]


@dataclass(frozen=True)
class MasterKey:
    """A derived AES-256 master key. Its repr never shows the key."""

    raw: bytes = field(repr=False)
    kid: str

    @classmethod
    def from_secret(cls, secret: str) -> "MasterKey":
        raw = derive_master_key(secret)
        return cls(raw=raw, kid=key_id(raw))

    def same_as(self, other: "MasterKey") -> bool:
        """Constant-time equality of the key bytes."""
        return hmac.compare_digest(self.raw, other.raw)

    def __repr__(self) -> str:
        return f"MasterKey(kid={self.kid!r})"
