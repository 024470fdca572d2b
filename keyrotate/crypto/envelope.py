"""The tminus envelope: AES-256-GCM payload under a random DEK, DEK wrapped by the master key.

Byte-for-byte what the Workers write with WebCrypto:

    {"iv": B64, "ciphertext": B64, "encryptedDek": B64, "dekIv": B64}

standard base64 with padding, 12-byte IVs, the 16-byte GCM tag appended to the
ciphertext, no associated data. keyrotate adds an optional non-secret "kid". Every
malformed or unauthentic input raises InvalidEnvelope with a short reason.
"""

from __future__ import annotations

import binascii
import functools
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keyrotate.errors import InvalidEnvelope
from keyrotate.crypto.keys import MasterKey

IV_BYTES = 12
DEK_BYTES = 32
TAG_BYTES = 16
REQUIRED_FIELDS = ("iv", "ciphertext", "encryptedDek", "dekIv")


@dataclass(frozen=True)
class Envelope:
    """A parsed envelope: raw bytes of each field, plus any fields keyrotate does not own."""

    iv: bytes
    ciphertext: bytes
    encrypted_dek: bytes
    dek_iv: bytes
    kid: str | None
    extra: tuple[tuple[str, Any], ...] = ()

    def to_json(self) -> str:
        """Serialise in the Workers' field order, compact, with kid and unknown fields kept."""
        head = (f'{{"iv":"{_b64(self.iv)}","ciphertext":"{_b64(self.ciphertext)}",'
                f'"encryptedDek":"{_b64(self.encrypted_dek)}","dekIv":"{_b64(self.dek_iv)}"')
        if self.extra:
            # unknown fields of other writers: let json escape them
            head += "".join("," + json.dumps(k) + ":" + json.dumps(v, separators=(",", ":"))
                            for k, v in self.extra)
        if self.kid is not None:
            head += "," + '"kid":' + json.dumps(self.kid)
        return head + "}"


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _unb64(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidEnvelope(f"field {name} is not a string")
    try:
        return binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError):
        raise InvalidEnvelope(f"field {name} is not valid base64") from None


@functools.lru_cache(maxsize=16)
def _aead(raw_key: bytes) -> AESGCM:
    """One AES-GCM context per master key (building one costs more than a decryption)."""
    return AESGCM(raw_key)


# The exact shape the Workers (and keyrotate) write. Base64 and hex need no JSON escapes,
# so a full match parses to the same fields json.loads would give; anything else takes
# the general path.
_B64 = r'([A-Za-z0-9+/]*={0,2})'
_CANONICAL = re.compile(r'\{"iv":"' + _B64 + r'","ciphertext":"' + _B64 + r'","encryptedDek":"'
                        + _B64 + r'","dekIv":"' + _B64 + r'"(?:,"kid":"([0-9a-f]{1,64})")?\}')


def _fields(value: str) -> tuple[dict[str, Any], str | None]:
    m = _CANONICAL.fullmatch(value)
    if m:
        return {"iv": m[1], "ciphertext": m[2], "encryptedDek": m[3], "dekIv": m[4]}, m[5]
    try:
        obj = json.loads(value)
    except (ValueError, RecursionError):
        raise InvalidEnvelope("value is not valid JSON") from None
    if not isinstance(obj, dict):
        raise InvalidEnvelope("value is JSON but not an object")
    kid = obj.pop("kid", None)
    if kid is not None and not isinstance(kid, str):
        raise InvalidEnvelope("field kid is not a string")
    return obj, kid


def parse(value: Any) -> Envelope:
    """Parse a stored column value. Raises InvalidEnvelope on anything malformed."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise InvalidEnvelope("value is a BLOB, not JSON text")
    if not isinstance(value, str):
        raise InvalidEnvelope(f"value is {type(value).__name__}, not JSON text")
    if value == "":
        raise InvalidEnvelope("value is an empty string")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: the cell held invalid UTF-8
            raise InvalidEnvelope("value is not valid UTF-8 text") from None
    obj, kid = _fields(value)
    missing = [f for f in REQUIRED_FIELDS if f not in obj]
    if missing:
        raise InvalidEnvelope("missing field " + ", ".join(missing))
    iv = _unb64(obj["iv"], "iv")
    ciphertext = _unb64(obj["ciphertext"], "ciphertext")
    encrypted_dek = _unb64(obj["encryptedDek"], "encryptedDek")
    dek_iv = _unb64(obj["dekIv"], "dekIv")
    if len(iv) != IV_BYTES:
        raise InvalidEnvelope(f"iv is {len(iv)} bytes, expected {IV_BYTES}")
    if len(dek_iv) != IV_BYTES:
        raise InvalidEnvelope(f"dekIv is {len(dek_iv)} bytes, expected {IV_BYTES}")
    if len(ciphertext) < TAG_BYTES:
        raise InvalidEnvelope("ciphertext is shorter than the GCM tag")
    if len(encrypted_dek) != DEK_BYTES + TAG_BYTES:
        raise InvalidEnvelope(
            f"encryptedDek is {len(encrypted_dek)} bytes, expected {DEK_BYTES + TAG_BYTES}"
        )
    extra = tuple((k, v) for k, v in obj.items() if k not in REQUIRED_FIELDS)
    return Envelope(iv, ciphertext, encrypted_dek, dek_iv, kid, extra)


def unwrap_dek(env: Envelope, key: MasterKey) -> bytes | None:
    """The DEK if `key` opens it, else None (wrong key or tampered wrapping)."""
    try:
        dek = _aead(key.raw).decrypt(env.dek_iv, env.encrypted_dek, None)
    except InvalidTag:
        return None
    if len(dek) != DEK_BYTES:
        return None
    return dek


def open_payload(env: Envelope, dek: bytes) -> bytes:
    """Decrypt the payload with its DEK. Raises InvalidEnvelope if it does not authenticate."""
    try:
        return AESGCM(dek).decrypt(env.iv, env.ciphertext, None)
    except InvalidTag:
        raise InvalidEnvelope("payload does not authenticate under its DEK") from None


def seal(payload: bytes, key: MasterKey, *, with_kid: bool = True) -> str:
    """Encrypt a payload as the Workers do, under a fresh DEK and fresh IVs."""
    dek = AESGCM.generate_key(bit_length=256)
    iv, dek_iv = os.urandom(IV_BYTES), os.urandom(IV_BYTES)
    env = Envelope(
        iv=iv,
        ciphertext=AESGCM(dek).encrypt(iv, payload, None),
        encrypted_dek=_aead(key.raw).encrypt(dek_iv, dek, None),
        dek_iv=dek_iv,
        kid=key.kid if with_kid else None,
    )
    return env.to_json()


def rewrap(env: Envelope, dek: bytes, new_key: MasterKey) -> str:
    """The same DEK wrapped under the new key with a fresh dekIv; iv and ciphertext kept."""
    dek_iv = os.urandom(IV_BYTES)
    wrapped = _aead(new_key.raw).encrypt(dek_iv, dek, None)
    return Envelope(env.iv, env.ciphertext, wrapped, dek_iv, new_key.kid, env.extra).to_json()


def fresh_dek(env: Envelope, dek: bytes, new_key: MasterKey) -> str:
    """The payload re-encrypted under a brand-new DEK and IV, wrapped under the new key.

    For compromise response: whoever held the old master key could unwrap every old DEK.
    """
    payload = open_payload(env, dek)
    new_dek = AESGCM.generate_key(bit_length=256)
    iv, dek_iv = os.urandom(IV_BYTES), os.urandom(IV_BYTES)
    return Envelope(
        iv=iv,
        ciphertext=AESGCM(new_dek).encrypt(iv, payload, None),
        encrypted_dek=_aead(new_key.raw).encrypt(dek_iv, new_dek, None),
        dek_iv=dek_iv,
        kid=new_key.kid,
        extra=env.extra,
    ).to_json()
