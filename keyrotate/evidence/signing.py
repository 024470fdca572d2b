"""Signed notification bodies, so a receiver knows keyrotate sent them and can refuse a
replay:

    X-Keyrotate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>

The scheme Stripe and Slack use for their webhooks. A receiver recomputes the HMAC over
the raw body bytes as received, compares in constant time, and refuses a `t` outside its
tolerance (five minutes) or one it has already seen with that signature.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

from keyrotate.errors import ConfigError

HEADER = "X-Keyrotate-Signature"
TOLERANCE = 300
MIN_SECRET_CHARS = 16
_T = re.compile(r"[0-9]{1,12}")          # unix seconds: 12 digits reach year 33658
_V1 = re.compile(r"[0-9a-f]{64}")


def check_signing_secret(secret: str, ref: str) -> None:
    if len(secret) < MIN_SECRET_CHARS:
        raise ConfigError(f"the signing secret {ref} is too short to sign with "
                          f"(fewer than {MIN_SECRET_CHARS} characters)")


def sign(secret: str, body: bytes, t: int | None = None) -> str:
    """The header value for `body`, signed at unix time `t` (now by default)."""
    t = int(time.time()) if t is None else t
    mac = hmac.new(secret.encode(), str(t).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, header: str, body: bytes, now: float | None = None,
           tolerance: int = TOLERANCE) -> bool:
    """A receiver's check (Python receivers may import it): the signature matches and `t`
    is within tolerance. Refusing a replay within tolerance is the receiver's own memory.

    Any malformed input (a missing or garbled header, a non-ASCII or wrong-length `v1`, a
    huge `t`, a body that is not bytes) is simply not a valid signature: False, never an
    exception."""
    if not isinstance(secret, str) or not secret or not isinstance(header, str) \
            or not isinstance(body, (bytes, bytearray)):
        return False
    parts: dict[str, str] = {}
    for part in header.split(","):
        name, eq, value = part.strip().partition("=")
        if not eq or name in parts:
            return False
        parts[name] = value
    t, v1 = parts.get("t", ""), parts.get("v1", "")
    if not _T.fullmatch(t) or not _V1.fullmatch(v1):
        return False
    try:
        now = time.time() if now is None else float(now)
        if abs(now - int(t)) > tolerance:
            return False
        expected = sign(secret, bytes(body), int(t)).split("v1=", 1)[1]
    except (ValueError, OverflowError, UnicodeEncodeError):
        return False
    return hmac.compare_digest(expected.encode("ascii"), v1.encode("ascii"))
