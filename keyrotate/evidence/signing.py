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
import time

from keyrotate.errors import ConfigError

HEADER = "X-Keyrotate-Signature"
TOLERANCE = 300
MIN_SECRET_CHARS = 16


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
    is within tolerance. Refusing a replay within tolerance is the receiver's own memory."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    now = time.time() if now is None else now
    if abs(now - t) > tolerance:
        return False
    expected = sign(secret, body, t).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))
