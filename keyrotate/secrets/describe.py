"""What `secrets show` tells about a secret: fingerprints, never the value (unless asked).

A fingerprint is keyed by an environment's audit key, so `secrets show` gives
one only for an environment (`--env`): the same value then has the fingerprint the
environment's trail, notifications and rotations show."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keyrotate.crypto.keys import MasterKey, is_raw_hex_key
from keyrotate.secrets.audit_key import AuditKey
from keyrotate.secrets.base import fingerprint
from keyrotate.secrets.refs import parse_ref, resolve


@dataclass(frozen=True)
class SecretInfo:
    ref: str
    fingerprint: str | None  # with an environment's audit key only
    master_key_kid: str      # the kid this value gets as a MASTER_KEY (envelopes carry it)
    length: int
    derivation: str
    value: str | None = None  # only with --reveal
    exit_code: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "exit_code"}
        if self.value is None:
            out.pop("value")
        return out

    def text(self) -> str:
        return "\n".join(f"{k}: {v}" for k, v in self.as_dict().items() if v is not None)


def describe(ref_text: str, reveal: bool = False, audit_key: AuditKey | None = None) -> SecretInfo:
    ref = parse_ref(ref_text, "REF")
    value = resolve(ref_text, "REF")
    return SecretInfo(str(ref), fingerprint(value, audit_key) if audit_key else None,
                      MasterKey.from_secret(value).kid, len(value),
                      "raw 32 bytes (64 hex)" if is_raw_hex_key(value) else "SHA-256 of the string",
                      value if reveal else None)

