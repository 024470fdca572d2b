"""The environment's audit key: what authenticates the audit trail and keys every
fingerprint (README, "Audit trail").

It is a secret of kind `internal` kept in the environment's own store, under
KEYROTATE_AUDIT_KEY, never in the database: someone who can write the database but not
read the store can neither forge an event nor test guesses against a fingerprint.

- chain: `mac = HMAC-SHA256(audit_key, prev_mac || canonical event)`, prev_mac as its 64
  lowercase hex characters (the genesis is 64 zeros);
- fingerprints: `fp:` + the first 12 hex of HMAC-SHA256(audit_key, "fp v1" || value);
- the HMAC key is the UTF-8 bytes of the stored value (keyrotate makes 64 hex characters).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field

from keyrotate.crypto.keys import key_id
from keyrotate.errors import ConfigError

AUDIT_KEY = "KEYROTATE_AUDIT_KEY"
AUDIT_HEAD = "KEYROTATE_AUDIT_HEAD"     # + _<ENV>: the trail's head, as the store last saw it
RESERVED = (AUDIT_KEY, AUDIT_HEAD)
MIN_BYTES = 32
FP_LABEL = b"fp v1"


def head_name(env: str) -> str:
    """Where the store keeps an environment's trail head (a name a .env line can hold)."""
    return f"{AUDIT_HEAD}_{re.sub(r'[^A-Za-z0-9]', '_', env).upper()}"


@dataclass(frozen=True)
class AuditKey:
    raw: bytes = field(repr=False)
    id: str                      # a one-way id of the key (as kids are): events name it
    created: bool = False        # made by this command (its creation goes into the trail)

    @classmethod
    def from_value(cls, value: str, where: str, created: bool = False) -> "AuditKey":
        raw = value.encode("utf-8")
        if len(raw) < MIN_BYTES or len(set(value)) < 8:
            raise ConfigError(f"{where} is too weak to be the audit key (at least {MIN_BYTES} "
                              "random bytes: keyrotate keygen --format hex makes one)")
        return cls(raw, key_id(raw), created)

    def mac(self, prev: str, data: bytes) -> str:
        return hmac.new(self.raw, prev.encode("ascii") + data, hashlib.sha256).hexdigest()

    def fingerprint(self, value: str) -> str:
        digest = hmac.new(self.raw, FP_LABEL + value.encode("utf-8"), hashlib.sha256).hexdigest()
        return "fp:" + digest[:12]

    def __repr__(self) -> str:
        return f"AuditKey(id={self.id!r})"
