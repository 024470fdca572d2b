"""Fernet tokens (cryptography's format), rotated as MultiFernet.rotate does."""

from __future__ import annotations

import base64
import binascii
import hmac

from cryptography.fernet import Fernet, InvalidToken

from keyrotate.crypto.keys import key_id
from keyrotate.errors import InvalidEnvelope


def fernet_key_bytes(secret: str) -> bytes:
    """The 32 bytes of a Fernet key string; ValueError if the string is not one."""
    try:
        raw = base64.urlsafe_b64decode(secret.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ValueError("not a Fernet key (32 url-safe base64-encoded bytes)") from None
    if len(raw) != 32:
        raise ValueError("not a Fernet key (32 url-safe base64-encoded bytes)")
    return raw


class FernetKey:
    """A Fernet key with a non-secret id. Its repr never shows the key."""

    def __init__(self, secret: str):
        raw = fernet_key_bytes(secret)
        self.kid = key_id(raw)
        self._raw = raw
        self._secret = secret
        self.fernet = Fernet(secret.encode("ascii"))

    def same_as(self, other: "FernetKey") -> bool:
        """By the key's bytes: one key spelled two ways (padding, the standard alphabet,
        a trailing newline) is one key."""
        return hmac.compare_digest(self._raw, other._raw)

    def __reduce__(self):  # picklable for worker processes (sent over a pipe, never argv)
        return (FernetKey, (self._secret,))

    def __repr__(self) -> str:
        return f"FernetKey(kid={self.kid!r})"


def token_bytes(value: object) -> bytes:
    """The token as bytes, or InvalidEnvelope if the stored value cannot be a token."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise InvalidEnvelope("value is a BLOB, not a Fernet token")
    if not isinstance(value, str):
        raise InvalidEnvelope(f"value is {type(value).__name__}, not a Fernet token")
    if value == "":
        raise InvalidEnvelope("value is an empty string")
    try:
        return value.encode("ascii")
    except UnicodeEncodeError:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidEnvelope("value is not valid UTF-8 text") from None
        raise InvalidEnvelope("value is not a Fernet token (non-ASCII)") from None


def opens(key: FernetKey, token: bytes) -> bytes | None:
    """The plaintext if `key` opens the token, else None."""
    try:
        return key.fernet.decrypt(token)
    except InvalidToken:
        return None


def reencrypt(payload: bytes, new_key: FernetKey) -> str:
    """A fresh token for the payload under the new key (what MultiFernet.rotate produces)."""
    return new_key.fernet.encrypt(payload).decode("ascii")
