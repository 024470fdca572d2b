"""One interface for every place keys live: a .env file, the OS keyring, Vault / OpenBao.

A rotation writes the new value as *pending* before anything else changes (so a crash
never leaves the only copy of a key in memory), and *promote* makes it current while
keeping the old value as *previous* (the old key is never discarded before nothing
depends on it). Values are only ever returned to the caller; stores never log them.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal, Protocol

from keyrotate.crypto.keys import key_id
from keyrotate.secrets.audit_key import AuditKey
from keyrotate.secrets.names import check_name
from keyrotate.timeutil import now

Slot = Literal["current", "pending", "previous"]
SLOTS: tuple[Slot, ...] = ("current", "pending", "previous")


class SecretStore(Protocol):
    base: str  # e.g. "dotenv:.env", "keyring:tminus-production", "vault:secret/tminus/production"

    def ref(self, name: str, slot: Slot = "current") -> str:
        """The secret reference that reads this slot (usable as --old-key / --new-key)."""
        ...

    def read(self, name: str, slot: Slot = "current") -> str | None:
        """The value, or None if the slot is empty."""
        ...

    def write_pending(self, name: str, value: str) -> None:
        """Store a new value beside the current one; refuses to replace a different pending."""
        ...

    def promote(self, name: str) -> None:
        """pending -> current, current -> previous. Fails if nothing is pending."""
        ...

    def discard_pending(self, name: str) -> None: ...

    def write_new(self, name: str, value: str) -> None:
        """A brand-new secret; refuses to replace one that exists."""
        ...

    def write_state(self, name: str, value: str) -> None:
        """keyrotate's own non-secret bookkeeping (the audit trail's head), replaced in place."""
        ...

    def copies(self, name: str) -> list["StoredCopy"]:
        """Every place this store keeps a value of `name` (each slot, each version)."""
        ...

    def destroy(self, name: str, value: str) -> list[str]:
        """Remove every copy of `value` under `name` that is not its current or pending
        value; returns where each was (references), for the evidence."""
        ...

    def names(self) -> list[str]:
        """Names with a current value."""
        ...

    def set_at(self, name: str) -> datetime | None:
        """When the current value was set, if the store knows."""
        ...


@dataclass(frozen=True)
class StoredCopy:
    """One place a store keeps a value: its reference, the slot (current, pending,
    previous, or a Vault version's role), and the value, to compare only."""

    ref: str
    slot: str
    value: str | None = field(repr=False)   # None: a copy that cannot be read (may hold it)


def fingerprint(value: str, audit_key: AuditKey) -> str:
    """A one-way, printable fingerprint of a secret value (never the value), keyed by the
    environment's audit key: a leaked fingerprint is no guessing oracle (README, "Audit trail")."""
    return audit_key.fingerprint(value)


def same_secret(value: str, fp: str | None, audit_key: AuditKey) -> bool:
    """`fp` is this value's fingerprint: keyed, or as keyrotate 0.1 wrote it before the
    audit key (unkeyed; older trails and rotations hold those)."""
    if not fp:
        return False
    legacy = "fp:" + key_id(hashlib.sha256(value.encode("utf-8")).digest())
    return hmac.compare_digest(fingerprint(value, audit_key), fp) or hmac.compare_digest(legacy, fp)


def same_value(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def now_utc() -> datetime:
    """When a value is set, by keyrotate's clock (a secret's age is measured by it)."""
    return now().astimezone(timezone.utc).replace(microsecond=0)


# the names a store keeps beside NAME (dotenv and keyring: NAME_PENDING, NAME_PREVIOUS;
# keyring also NAME_SET_AT): a secret named like one of them would clobber another's slot
PENDING_SUFFIX, PREVIOUS_SUFFIX, SET_AT_SUFFIX = "_PENDING", "_PREVIOUS", "_SET_AT"
SLOT_SUFFIXES = (PENDING_SUFFIX, PREVIOUS_SUFFIX, SET_AT_SUFFIX)


def pending_name(name: str) -> str:
    return name + PENDING_SUFFIX


def previous_name(name: str) -> str:
    return name + PREVIOUS_SUFFIX


def set_at_name(name: str) -> str:
    return name + SET_AT_SUFFIX


def slot_name(name: str, slot: Slot) -> str:
    check_name(name, "secret store")
    return {"current": name, "pending": pending_name(name), "previous": previous_name(name)}[slot]
