"""The tminus envelope: AES-256-GCM payload under a random DEK, DEK wrapped by the master key.

Byte-for-byte what the Workers write with WebCrypto:

    {"iv": B64, "ciphertext": B64, "encryptedDek": B64, "dekIv": B64}

standard base64 with padding, 12-byte IVs, the 16-byte GCM tag appended to the
ciphertext, no associated data. keyrotate adds an optional non-secret "kid". Every
malformed or unauthentic input raises InvalidEnvelope with a short reason.

This is the hot loop of a rotation, so the exact shape the Workers write is parsed
without json (a strict fast path that accepts only what json.loads would read the same
way); anything else takes the general path, which gives the authoritative reason.
"""

from __future__ import annotations

import binascii
import functools
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keyrotate.crypto.keys import MasterKey
from keyrotate.errors import InvalidEnvelope

IV_BYTES = 12
DEK_BYTES = 32
TAG_BYTES = 16
REQUIRED_FIELDS = ("iv", "ciphertext", "encryptedDek", "dekIv")
_HEX = frozenset("0123456789abcdef")


class Envelope:
    """A parsed envelope: raw bytes of each field, the kid, and fields keyrotate does not own.

    Keeps the original base64 of iv and ciphertext so a rewrap writes them back untouched.
    """

    __slots__ = ("iv", "ciphertext", "encrypted_dek", "dek_iv", "kid", "extra", "_iv_b64", "_ct_b64")

    def __init__(self, iv: bytes, ciphertext: bytes, encrypted_dek: bytes, dek_iv: bytes,
                 kid: str | None, extra: tuple[tuple[str, Any], ...] = (),
                 iv_b64: str | None = None, ct_b64: str | None = None):
        self.iv, self.ciphertext, self.encrypted_dek, self.dek_iv = iv, ciphertext, encrypted_dek, dek_iv
        self.kid, self.extra = kid, extra
        self._iv_b64, self._ct_b64 = iv_b64, ct_b64

    def to_json(self) -> str:
        """Serialise in the Workers' field order, compact, with kid and unknown fields kept."""
        iv = self._iv_b64 if self._iv_b64 is not None else _b64(self.iv)
        ct = self._ct_b64 if self._ct_b64 is not None else _b64(self.ciphertext)
        head = (f'{{"iv":"{iv}","ciphertext":"{ct}","encryptedDek":"{_b64(self.encrypted_dek)}",'
                f'"dekIv":"{_b64(self.dek_iv)}"')
        if self.extra:
            # unknown fields of other writers: let json escape them
            head += "".join("," + json.dumps(k) + ":" + json.dumps(v, separators=(",", ":"))
                            for k, v in self.extra)
        if self.kid is not None:
            head += ',"kid":' + json.dumps(self.kid)
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


_P_IV, _P_CT, _P_EDEK, _P_DEKIV = '{"iv":"', '","ciphertext":"', '","encryptedDek":"', '","dekIv":"'


def _fast_fields(value: str) -> tuple[str, str, str, str, str | None] | None:
    """The four base64 strings and kid of the canonical shape, or None to take the slow path.

    Accepts only {"iv":"..","ciphertext":"..","encryptedDek":"..","dekIv":".."[,"kid":"<hex>"]}
    whose fields are later checked as strict base64 (so they hold no quote or backslash):
    exactly the strings json.loads reads as those same fields.
    """
    if not value.startswith(_P_IV):
        return None
    a = len(_P_IV)
    b = value.find(_P_CT, a)
    c = value.find(_P_EDEK, b)
    d = value.find(_P_DEKIV, c)
    if b < 0 or c < 0 or d < 0:
        return None
    e = value.find('"', d + len(_P_DEKIV))
    if e < 0:
        return None
    tail = value[e:]
    kid = None
    if tail != '"}':
        if not (tail.startswith('","kid":"') and tail.endswith('"}')):
            return None
        kid = tail[9:-2]
        if not kid or not _HEX.issuperset(kid):
            return None
    return (value[a:b], value[b + len(_P_CT):c], value[c + len(_P_EDEK):d],
            value[d + len(_P_DEKIV):e], kid)


def _checked(iv: bytes, ciphertext: bytes, encrypted_dek: bytes, dek_iv: bytes) -> None:
    if len(iv) != IV_BYTES:
        raise InvalidEnvelope(f"iv is {len(iv)} bytes, expected {IV_BYTES}")
    if len(dek_iv) != IV_BYTES:
        raise InvalidEnvelope(f"dekIv is {len(dek_iv)} bytes, expected {IV_BYTES}")
    if len(ciphertext) < TAG_BYTES:
        raise InvalidEnvelope("ciphertext is shorter than the GCM tag")
    if len(encrypted_dek) != DEK_BYTES + TAG_BYTES:
        raise InvalidEnvelope(
            f"encryptedDek is {len(encrypted_dek)} bytes, expected {DEK_BYTES + TAG_BYTES}")


def parse(value: Any) -> Envelope:
    """Parse a stored column value. Raises InvalidEnvelope on anything malformed."""
    if value.__class__ is not str:
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
    fast = _fast_fields(value)
    if fast is not None:
        try:
            iv, ct, edek, dek_iv = (binascii.a2b_base64(f, strict_mode=True) for f in fast[:4])
        except (binascii.Error, ValueError):
            fast = None  # let the general path name the bad field
        else:
            _checked(iv, ct, edek, dek_iv)
            return Envelope(iv, ct, edek, dek_iv, fast[4], (), fast[0], fast[1])
    return _parse_general(value)


def _parse_general(value: str) -> Envelope:
    try:
        obj = json.loads(value)
    except (ValueError, RecursionError):
        raise InvalidEnvelope("value is not valid JSON") from None
    if not isinstance(obj, dict):
        raise InvalidEnvelope("value is JSON but not an object")
    kid = obj.pop("kid", None)
    if kid is not None and not isinstance(kid, str):
        raise InvalidEnvelope("field kid is not a string")
    missing = [f for f in REQUIRED_FIELDS if f not in obj]
    if missing:
        raise InvalidEnvelope("missing field " + ", ".join(missing))
    iv = _unb64(obj["iv"], "iv")
    ciphertext = _unb64(obj["ciphertext"], "ciphertext")
    encrypted_dek = _unb64(obj["encryptedDek"], "encryptedDek")
    dek_iv = _unb64(obj["dekIv"], "dekIv")
    _checked(iv, ciphertext, encrypted_dek, dek_iv)
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
    return _sealed(payload, key, extra=(), kid=key.kid if with_kid else None)


def _sealed(payload: bytes, key: MasterKey, extra: tuple[tuple[str, Any], ...],
            kid: str | None) -> str:
    dek = AESGCM.generate_key(bit_length=256)
    iv, dek_iv = os.urandom(IV_BYTES), os.urandom(IV_BYTES)
    return Envelope(iv, AESGCM(dek).encrypt(iv, payload, None),
                    _aead(key.raw).encrypt(dek_iv, dek, None), dek_iv, kid, extra).to_json()


def rewrap(env: Envelope, dek: bytes, new_key: MasterKey) -> str:
    """The same DEK wrapped under the new key with a fresh dekIv; iv and ciphertext kept."""
    dek_iv = os.urandom(IV_BYTES)
    wrapped = _aead(new_key.raw).encrypt(dek_iv, dek, None)
    return Envelope(env.iv, env.ciphertext, wrapped, dek_iv, new_key.kid, env.extra,
                    env._iv_b64, env._ct_b64).to_json()


def seal_payload(payload: bytes, new_key: MasterKey,
                 extra: tuple[tuple[str, Any], ...] = ()) -> str:
    """An opened payload re-encrypted under a brand-new DEK and IV, wrapped under the new
    key, other writers' fields kept. For compromise response: whoever held the old master
    key could unwrap every old DEK."""
    return _sealed(payload, new_key, extra=extra, kid=new_key.kid)
