"""The tminus envelope: AES-256-GCM payload under a random DEK, DEK wrapped by the master key.

Byte-for-byte what the Workers write with WebCrypto:

    {"iv": B64, "ciphertext": B64, "encryptedDek": B64, "dekIv": B64}

standard base64 with padding, 12-byte IVs, the 16-byte GCM tag appended to the
ciphertext, no associated data. keyrotate adds an optional non-secret "kid". Every
malformed or unauthentic input raises InvalidEnvelope with a short reason.

This is the hot loop of a rotation, so the exact shape the Workers write is parsed
without json (a strict fast path that accepts only what JSON.parse would read the same
way); anything else takes the general path, which gives the authoritative reason.

Judged as a Worker judges it: the Workers read an envelope with JSON.parse, which refuses
NaN, Infinity and -Infinity (Python's json accepts them), and reads 1e400 as Infinity.
So the general path refuses those three tokens, and never turns a number into a value at
all: a rewritten envelope is the stored text with only the fields keyrotate owns
replaced (encryptedDek, dekIv and kid; for fresh-dek iv and ciphertext too), every other
byte kept as it was. Re-serialising parsed values would write 1e400 back as `Infinity`,
which no Worker can parse.
"""

from __future__ import annotations

import binascii
import functools
import hmac
import json
import json.decoder
import json.scanner
import os
import re
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keyrotate.crypto.keys import MasterKey
from keyrotate.errors import InvalidEnvelope

IV_BYTES = 12
DEK_BYTES = 32
TAG_BYTES = 16
REQUIRED_FIELDS = ("iv", "ciphertext", "encryptedDek", "dekIv")
_HEX = frozenset("0123456789abcdef")


class Envelope:
    """A parsed envelope: raw bytes of each field, the kid, and where each field sits in the
    stored text, so a rewrite replaces the fields keyrotate owns and keeps every other byte.

    `source` is None for the canonical shape the Workers write (parsed by the fast path):
    there, the canonical serialisation is the stored text.
    """

    __slots__ = ("iv", "ciphertext", "encrypted_dek", "dek_iv", "kid", "source", "spans",
                 "close", "ct_span", "_iv_b64", "_ct_b64")

    def __init__(self, iv: bytes, ciphertext: bytes, encrypted_dek: bytes, dek_iv: bytes,
                 kid: str | None, iv_b64: str | None = None, ct_b64: str | None = None,
                 source: str | None = None, spans: dict[str, list[tuple[int, int]]] | None = None,
                 close: int = 0, ct_span: tuple[int, int] | None = None):
        self.iv, self.ciphertext, self.encrypted_dek, self.dek_iv = iv, ciphertext, encrypted_dek, dek_iv
        self.kid = kid
        self._iv_b64, self._ct_b64 = iv_b64, ct_b64
        self.source, self.spans, self.close = source, spans or {}, close
        # a heavy ciphertext is left undecoded in the source (its base64 lies at ct_span):
        # it is authenticated in chunks, never held whole (see authenticate)
        self.ct_span = ct_span

    def rewritten(self, fields: dict[str, str]) -> str:
        """The envelope with these fields (name -> base64 or kid string) replaced: every
        occurrence of each (JSON.parse reads the last of duplicates), a field it lacks added
        before the closing brace; all other text byte-identical."""
        if self.source is None:
            return _canonical({"iv": self._iv_b64 or _b64(self.iv),
                               "ciphertext": self._ct_b64 or _b64(self.ciphertext),
                               "encryptedDek": _b64(self.encrypted_dek),
                               "dekIv": _b64(self.dek_iv), **fields})
        edits: list[tuple[int, int, str, str]] = []   # (start, end, text before, value)
        for name, value in fields.items():
            places = self.spans.get(name)
            if places:
                edits += [(a, b, "", value) for a, b in places]
            else:
                edits.append((self.close, self.close, "," + json.dumps(name) + ":", value))
        edits.sort(key=lambda e: (e[0], e[1]))
        # grown in place piece by piece (CPython extends a str it holds the only reference
        # to): a heavy envelope is copied once, not once per piece and again to join them.
        # Values are base64 or hex: JSON strings as they are, nothing to escape.
        out, at = "", 0
        for a, b, before, value in edits:
            out += self.source[at:a]
            out += before
            out += '"'
            out += value
            out += '"'
            at = b
        out += self.source[at:]
        return out


def _canonical(fields: dict[str, str]) -> str:
    """The Workers' field order, compact; kid (when given) last. Values are base64 or hex."""
    head = (f'{{"iv":"{fields["iv"]}","ciphertext":"{fields["ciphertext"]}",'
            f'"encryptedDek":"{fields["encryptedDek"]}","dekIv":"{fields["dekIv"]}"')
    if fields.get("kid") is not None:
        head += ',"kid":' + json.dumps(fields["kid"])
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


def _fast_spans(value: str) -> tuple[int, int, int, int, int, str | None] | None:
    """Where the canonical shape's fields are, and its kid; None to take the slow path.

    Accepts only {"iv":"..","ciphertext":"..","encryptedDek":"..","dekIv":".."[,"kid":"<hex>"]}
    whose fields are later checked as strict base64 (so they hold no quote or backslash):
    exactly the strings JSON.parse reads as those same fields. Returns (a, b, c, d, e, kid):
    iv is value[a:b], ciphertext value[b + len(_P_CT):c], encryptedDek
    value[c + len(_P_EDEK):d], dekIv value[d + len(_P_DEKIV):e].
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
    return a, b, c, d, e, kid


def _fast_envelope(value: str) -> Envelope | None:
    spans = _fast_spans(value)
    if spans is None:
        return None
    a, b, c, d, e, kid = spans
    ct = (b + len(_P_CT), c)
    heavy = ct[1] - ct[0] > STREAM_FROM
    try:
        iv_b64 = value[a:b]
        iv, edek, dek_iv = (binascii.a2b_base64(f, strict_mode=True) for f in (
            iv_b64, value[c + len(_P_EDEK):d], value[d + len(_P_DEKIV):e]))
        ct_b64 = None if heavy else value[ct[0]:ct[1]]
        ciphertext = b"" if ct_b64 is None else binascii.a2b_base64(ct_b64, strict_mode=True)
    except (binascii.Error, ValueError):
        return None     # let the general path name the bad field
    if not heavy:
        _checked(iv, len(ciphertext), edek, dek_iv)
        return Envelope(iv, ciphertext, edek, dek_iv, kid, iv_b64, ct_b64)
    _checked(iv, _b64_length(value, *ct), edek, dek_iv)
    # value spans (quotes included), for rewriting the stored text in place
    fields = {"iv": [(a - 1, b + 1)], "ciphertext": [(ct[0] - 1, c + 1)],
              "encryptedDek": [(c + len(_P_EDEK) - 1, d + 1)],
              "dekIv": [(d + len(_P_DEKIV) - 1, e + 1)]}
    if kid is not None:
        fields["kid"] = [(e + 8, len(value) - 1)]
    return Envelope(iv, b"", edek, dek_iv, kid, iv_b64, None, source=value, spans=fields,
                    close=len(value) - 1, ct_span=ct)


STREAM_FROM = 256 << 10   # base64 characters: a longer ciphertext is checked in chunks
CHUNK = 1 << 20           # base64 characters per chunk (a multiple of 4)


def _b64_length(value: str, start: int, end: int) -> int:
    """Bytes the base64 in value[start:end] decodes to (its padding checked when decoded)."""
    n = end - start
    if n % 4:
        raise InvalidEnvelope("field ciphertext is not valid base64")
    return n // 4 * 3 - (value[end - 1] == "=") - (value[end - 2] == "=")


def _checked(iv: bytes, ciphertext: int, encrypted_dek: bytes, dek_iv: bytes) -> None:
    if len(iv) != IV_BYTES:
        raise InvalidEnvelope(f"iv is {len(iv)} bytes, expected {IV_BYTES}")
    if len(dek_iv) != IV_BYTES:
        raise InvalidEnvelope(f"dekIv is {len(dek_iv)} bytes, expected {IV_BYTES}")
    if ciphertext < TAG_BYTES:
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
    fast = _fast_envelope(value)
    if fast is not None:
        return fast
    return _parse_general(value)


_WS = re.compile(r"[ \t\n\r]*")  # JSON's whitespace, and JSON.parse's


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _Number:
    """Any JSON number: its value is never needed (the text is kept), so it is never
    converted (no float('inf'), no int() past Python's digit limit)."""


_NUMBER = _Number()
# What JSON.parse reads, this reads: the three tokens it refuses are refused.
_scan_value = json.scanner.make_scanner(json.JSONDecoder(
    parse_constant=_refuse_constant, parse_int=lambda _: _NUMBER, parse_float=lambda _: _NUMBER))


def _members(text: str) -> tuple[list[tuple[str, Any, int, int]], int]:
    """The top-level members of a JSON object, as JSON.parse reads it: (name, value, start,
    end of the value's text) in order, and where the closing brace is. ValueError if the
    text is not one JSON object that JSON.parse would accept."""
    i = _WS.match(text, 0).end()
    if text[i:i + 1] != "{":
        try:
            _, end = _scan_value(text, i)
        except StopIteration:
            raise ValueError("not JSON") from None
        if _WS.match(text, end).end() == len(text):
            raise TypeError("JSON, but not an object")
        raise ValueError("extra data")
    i = _WS.match(text, i + 1).end()
    members: list[tuple[str, Any, int, int]] = []
    if text[i:i + 1] == "}":
        close = i
    else:
        while True:
            if text[i:i + 1] != '"':
                raise ValueError("expected a field name")
            name, i = json.decoder.scanstring(text, i + 1, True)
            i = _WS.match(text, i).end()
            if text[i:i + 1] != ":":
                raise ValueError("expected ':'")
            start = _WS.match(text, i + 1).end()
            try:
                value, end = _scan_value(text, start)
            except StopIteration:
                raise ValueError("expected a value") from None
            members.append((name, value, start, end))
            i = _WS.match(text, end).end()
            if text[i:i + 1] == ",":
                i = _WS.match(text, i + 1).end()
                continue
            if text[i:i + 1] != "}":
                raise ValueError("expected ',' or '}'")
            close = i
            break
    if _WS.match(text, close + 1).end() != len(text):
        raise ValueError("extra data after the object")
    return members, close


def _parse_general(value: str) -> Envelope:
    try:
        members, close = _members(value)
    except TypeError:
        raise InvalidEnvelope("value is JSON but not an object") from None
    except (ValueError, RecursionError):
        raise InvalidEnvelope("value is not valid JSON") from None
    obj: dict[str, Any] = {}
    spans: dict[str, list[tuple[int, int]]] = {}
    for name, v, start, end in members:
        obj[name] = v                       # the last of duplicates, as JSON.parse keeps
        spans.setdefault(name, []).append((start, end))
    missing = [f for f in REQUIRED_FIELDS if f not in obj]
    if missing:
        raise InvalidEnvelope("missing field " + ", ".join(missing))
    iv = _unb64(obj["iv"], "iv")
    ciphertext = _unb64(obj["ciphertext"], "ciphertext")
    encrypted_dek = _unb64(obj["encryptedDek"], "encryptedDek")
    dek_iv = _unb64(obj["dekIv"], "dekIv")
    _checked(iv, len(ciphertext), encrypted_dek, dek_iv)
    # readers ignore kid (and choose keys by it only when it is a string): any other kid
    # is no hint, and is replaced when the row is rewritten
    kid = obj.get("kid") if isinstance(obj.get("kid"), str) else None
    return Envelope(iv, ciphertext, encrypted_dek, dek_iv, kid, source=value, spans=spans,
                    close=close)


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
    ciphertext = env.ciphertext
    if env.ct_span is not None and env.source is not None:
        ciphertext = _unb64(env.source[env.ct_span[0]:env.ct_span[1]], "ciphertext")
    try:
        return AESGCM(dek).decrypt(env.iv, ciphertext, None)
    except InvalidTag:
        raise InvalidEnvelope("payload does not authenticate under its DEK") from None


def authenticate(env: Envelope, dek: bytes) -> None:
    """That the payload authenticates under its DEK (what a Worker's read checks), without
    keeping it: a heavy ciphertext is decoded and decrypted a chunk at a time, so a row of
    megabytes costs a chunk of memory, not three copies of itself. InvalidEnvelope if not."""
    if env.ct_span is None or env.source is None:
        open_payload(env, dek)
        return
    source, (start, end) = env.source, env.ct_span
    decryptor = Cipher(algorithms.AES(dek), modes.GCM(env.iv)).decryptor()
    held = b""                        # the last bytes seen: the tag, once all is read
    try:
        for i in range(start, end, CHUNK):
            stop = min(i + CHUNK, end)
            if stop < end and source.find("=", i, stop) >= 0:
                # padding ends the whole string, never a chunk: atob refuses it mid-string,
                # and strict mode alone would take it at a chunk's end
                raise InvalidEnvelope("field ciphertext is not valid base64")
            data = held + binascii.a2b_base64(source[i:stop], strict_mode=True)
            decryptor.update(data[:-TAG_BYTES])
            held = data[-TAG_BYTES:]
        decryptor.finalize_with_tag(held)
    except (binascii.Error, ValueError):
        raise InvalidEnvelope("field ciphertext is not valid base64") from None
    except InvalidTag:
        raise InvalidEnvelope("payload does not authenticate under its DEK") from None


def seal(payload: bytes, key: MasterKey, *, with_kid: bool = True) -> str:
    """Encrypt a payload as the Workers do, under a fresh DEK and fresh IVs."""
    return _canonical(_sealed_fields(payload, key, key.kid if with_kid else None))


def sealed_fields(payload: bytes, key: MasterKey) -> dict[str, str]:
    """A payload re-encrypted under a brand-new DEK and IVs, wrapped under `key`, as the
    fields to write into its envelope (Envelope.rewritten keeps other writers' fields).
    For compromise response: whoever held the old master key could unwrap every old DEK."""
    return _sealed_fields(payload, key, key.kid)


def _sealed_fields(payload: bytes, key: MasterKey, kid: str | None) -> dict[str, str]:
    dek = AESGCM.generate_key(bit_length=256)
    iv, dek_iv = os.urandom(IV_BYTES), os.urandom(IV_BYTES)
    fields = {"iv": _b64(iv), "ciphertext": _b64(AESGCM(dek).encrypt(iv, payload, None)),
              "encryptedDek": _b64(_aead(key.raw).encrypt(dek_iv, dek, None)),
              "dekIv": _b64(dek_iv)}
    if kid is not None:
        fields["kid"] = kid
    return fields


def rewrap(env: Envelope, dek: bytes, new_key: MasterKey) -> str:
    """The same DEK wrapped under the new key with a fresh dekIv; everything else kept."""
    dek_iv = os.urandom(IV_BYTES)
    wrapped = _aead(new_key.raw).encrypt(dek_iv, dek, None)
    return env.rewritten({"encryptedDek": _b64(wrapped), "dekIv": _b64(dek_iv),
                          "kid": new_key.kid})


def rewrap_opens(value: str, env: Envelope, dek: bytes, key: MasterKey) -> bool:
    """Whether `value`, the rewrap of `env` (whose payload authenticated under `dek`),
    opens under `key` as a Worker reads it: read as stored, its DEK unwraps under `key`
    to `dek`, and its iv and ciphertext are the ones that authenticated. In the Workers'
    own shape, the text of iv and ciphertext is compared with the text that was decoded
    and authenticated (the same strict base64 reads as the same bytes); any other shape
    is parsed whole, and a heavy payload authenticated again a chunk at a time."""
    if env.source is None and env._iv_b64 is not None and env._ct_b64 is not None:
        spans = _fast_spans(value)
        if spans is None:
            return False
        a, b, c, d, e, _ = spans
        if value[a:b] != env._iv_b64 or value[b + len(_P_CT):c] != env._ct_b64:
            return False
        try:
            edek = binascii.a2b_base64(value[c + len(_P_EDEK):d], strict_mode=True)
            dek_iv = binascii.a2b_base64(value[d + len(_P_DEKIV):e], strict_mode=True)
        except (binascii.Error, ValueError):
            return False
        if len(dek_iv) != IV_BYTES or len(edek) != DEK_BYTES + TAG_BYTES:
            return False
        try:
            got = _aead(key.raw).decrypt(dek_iv, edek, None)
        except InvalidTag:
            return False
        return hmac.compare_digest(got, dek)
    try:
        new = parse(value)
    except InvalidEnvelope:
        return False
    got = unwrap_dek(new, key)
    if got is None or not hmac.compare_digest(got, dek):
        return False
    if new.ct_span is None and env.ct_span is None:
        return new.iv == env.iv and new.ciphertext == env.ciphertext
    try:
        authenticate(new, got)
    except InvalidEnvelope:
        return False
    return True
