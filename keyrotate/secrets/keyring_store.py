"""`keyring:SERVICE#NAME`: the OS keychain through python `keyring` (Secret Service on Linux).

Entries: NAME, NAME_PENDING, NAME_PREVIOUS, plus two non-secret entries keyrotate keeps:
NAME_SET_AT (when the current value was set) and `keyrotate.index` (the names it manages,
since keyring cannot list a service's entries).
"""

from __future__ import annotations

import hmac
import json
from datetime import datetime
from typing import Callable, TypeVar

from keyrotate.errors import SecretStoreError
from keyrotate.secrets.base import (
    SLOTS,
    Slot,
    StoredCopy,
    now_utc,
    pending_name,
    previous_name,
    same_value,
    set_at_name,
    slot_name,
)
from keyrotate.secrets.refs import required
from keyrotate.secrets.schemes import Scheme

T = TypeVar("T")
INDEX = "keyrotate.index"


def _keyring_call(where: str, fn: Callable[[], T]) -> T:
    """Run a keyring call; backend problems become one clear, value-free error."""
    import keyring.errors

    try:
        return fn()
    except keyring.errors.NoKeyringError:
        raise SecretStoreError(f"{where}: no OS keyring backend is available (install and unlock "
                               "gnome-keyring or set PYTHON_KEYRING_BACKEND)") from None
    except keyring.errors.KeyringLocked:
        raise SecretStoreError(f"{where}: the keyring is locked; unlock it and retry") from None
    except keyring.errors.KeyringError as e:
        raise SecretStoreError(f"{where}: keyring error ({type(e).__name__})") from None
    except Exception as e:  # backends raise their own types (dbus, jeepney, secretstorage)
        raise SecretStoreError(f"{where}: keyring backend failed ({type(e).__name__})") from None


class KeyringStore:
    def __init__(self, service: str):
        if not service:
            raise SecretStoreError("keyring: needs a service name")
        self.service = service
        self.base = f"keyring:{service}"

    def ref(self, name: str, slot: Slot = "current") -> str:
        return f"keyring:{self.service}#{slot_name(name, slot)}"

    def _get(self, user: str) -> str | None:
        import keyring

        return _keyring_call(f"keyring:{self.service}#{user}",
                             lambda: keyring.get_password(self.service, user))

    def _set(self, user: str, value: str) -> None:
        import keyring

        _keyring_call(f"keyring:{self.service}#{user}",
                      lambda: keyring.set_password(self.service, user, value))

    def _delete(self, user: str) -> None:
        import keyring
        import keyring.errors

        def delete() -> None:
            try:
                keyring.delete_password(self.service, user)
            except keyring.errors.PasswordDeleteError:
                pass  # already gone

        _keyring_call(f"keyring:{self.service}#{user}", delete)

    def read(self, name: str, slot: Slot = "current") -> str | None:
        return self._get(slot_name(name, slot))

    def write_pending(self, name: str, value: str) -> None:
        existing = self.read(name, "pending")
        if existing is not None:
            if hmac.compare_digest(existing.encode(), value.encode()):
                return
            raise SecretStoreError(f"{self.ref(name, 'pending')} already holds a different "
                                   "pending value: finish or abort that rotation first")
        self._set(pending_name(name), value)
        if self._get(pending_name(name)) is None:
            raise SecretStoreError(f"{self.ref(name, 'pending')}: the keyring did not keep the value")
        self._index_add(name)

    def promote(self, name: str) -> None:
        pending = self.read(name, "pending")
        if pending is None:
            raise SecretStoreError(f"nothing pending at {self.ref(name, 'pending')}")
        current = self.read(name)
        # order matters: at every step each value still exists somewhere. A promote stopped
        # after the new value became current only finishes: copying "current" to previous
        # again would put the new value there and drop the old one
        if current is None or not same_value(current, pending):
            if current is not None:
                self._set(previous_name(name), current)
            self._set(name, pending)
        self._set(set_at_name(name), now_utc().isoformat())
        self._delete(pending_name(name))
        self._index_add(name)

    def discard_pending(self, name: str) -> None:
        self._delete(pending_name(name))

    def write_new(self, name: str, value: str) -> None:
        """keygen --to: a brand-new entry; never replaces an existing key."""
        if self.read(name) is not None:
            raise SecretStoreError(f"{self.ref(name)} is already set; refusing to overwrite a key")
        self._set(name, value)
        self._set(set_at_name(name), now_utc().isoformat())
        self._index_add(name)

    def write_state(self, name: str, value: str) -> None:
        self._set(name, value)

    def copies(self, name: str) -> list[StoredCopy]:
        found = [(slot, self.read(name, slot)) for slot in SLOTS]
        return [StoredCopy(self.ref(name, slot), slot, v) for slot, v in found if v is not None]

    def destroy(self, name: str, value: str) -> list[str]:
        """Delete NAME_PREVIOUS if it holds `value`; refuses if it is current or pending."""
        held = {slot: self.read(name, slot) for slot in SLOTS}
        for slot in ("current", "pending"):
            if held[slot] is not None and same_value(str(held[slot]), value):
                raise SecretStoreError(f"{self.ref(name, slot)} holds that value: it is in use")
        if held["previous"] is None or not same_value(held["previous"], value):
            return []
        self._delete(previous_name(name))
        if self.read(name, "previous") is not None:
            raise SecretStoreError(f"{self.ref(name, 'previous')}: the keyring kept the entry")
        return [self.ref(name, "previous")]

    def names(self) -> list[str]:
        return [n for n in self._index() if self.read(n) is not None]

    def set_at(self, name: str) -> datetime | None:
        raw = self._get(set_at_name(name))
        try:
            return datetime.fromisoformat(raw) if raw else None
        except ValueError:
            return None

    def _index(self) -> list[str]:
        raw = self._get(INDEX)
        try:
            names = json.loads(raw) if raw else []
        except ValueError:
            names = []
        return [n for n in names if isinstance(n, str)]

    def _index_add(self, name: str) -> None:
        names = self._index()
        if name not in names:
            self._set(INDEX, json.dumps(sorted(names + [name])))


def read_keyring_ref(body: str) -> str:
    service, _, name = body.rpartition("#")
    return required(f"keyring:{body}", KeyringStore(service).read(name))


def write_new_keyring_ref(body: str, value: str) -> None:
    service, _, name = body.rpartition("#")
    KeyringStore(service).write_new(name, value)


SCHEMES = {"keyring": Scheme("keyring", read_keyring_ref, write_new_keyring_ref, KeyringStore)}
