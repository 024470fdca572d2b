"""`vault:MOUNT/PATH#FIELD@VERSION`: HashiCorp Vault / OpenBao KV v2 through hvac.

A store base `vault:secret/tminus/production` keeps secret NAME at
`secret/tminus/production/NAME`, its current value in field `value`. A pending value is
written as a new version that keeps `value` and adds field `pending` (so readers of the
latest `value` see no change); promote writes a version with `value` = pending. The
previous value is therefore the `value` of an earlier version. Every write uses
check-and-set on the version just read: a concurrent change is detected, never
overwritten. VAULT_ADDR and VAULT_TOKEN are read as hvac reads them.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, TypeVar

from keyrotate.errors import ConfigError, SecretStoreError, SecretStoreUnavailable
from keyrotate.secrets.base import Slot, StoredCopy, same_value
from keyrotate.secrets.names import check_name
from keyrotate.secrets.schemes import Scheme
from keyrotate.timeutil import parse_utc

T = TypeVar("T")
_SEGMENT = re.compile(r"[A-Za-z0-9_.-]+")
PENDING_FIELD = "pending"
MAX_VERSIONS_BACK = 20


@dataclass(frozen=True)
class VaultRef:
    mount: str
    path: str
    field: str = "value"
    version: int | None = None

    def __str__(self) -> str:
        text = f"vault:{self.mount}/{self.path}"
        if self.field != "value":
            text += f"#{self.field}"
        if self.version is not None:
            text += f"@{self.version}"
        return text


def parse_vault_ref(body: str) -> VaultRef:
    rest, version = body, None
    head, at, tail = body.rpartition("@")
    if at and tail.isdigit():
        rest, version = head, int(tail)
    rest, _, field = rest.partition("#")
    mount, _, path = rest.strip("/").partition("/")
    if not mount or not path:
        raise SecretStoreError(f"vault:{body}: expected vault:MOUNT/PATH[#FIELD][@VERSION]")
    if not all(_SEGMENT.fullmatch(p) for p in (mount, *path.split("/"))):
        raise ConfigError(f"vault:{mount}/...: path segments must be letters, digits, '.', '_' "
                          "or '-'")
    if field:
        check_name(field, f"vault:{mount}/{path}#...")
    return VaultRef(mount, path, field or "value", version)


def _client() -> Any:
    import hvac

    return hvac.Client(timeout=10)  # url from VAULT_ADDR, token from VAULT_TOKEN


def vault_call(where: str, fn: Callable[[], T]) -> T:
    """Run an hvac call; map every failure to a clear error naming the reference only."""
    import hvac.exceptions as hx
    import requests

    try:
        return fn()
    except requests.exceptions.RequestException:
        raise SecretStoreUnavailable(f"{where}: Vault is unreachable (check VAULT_ADDR)") from None
    except hx.VaultDown:
        raise SecretStoreUnavailable(f"{where}: Vault is sealed") from None
    except hx.Forbidden:
        raise SecretStoreError(f"{where}: permission denied (403); check VAULT_TOKEN's policy") from None
    except hx.Unauthorized:
        raise SecretStoreError(f"{where}: VAULT_TOKEN is missing or invalid") from None
    except hx.InvalidPath:
        raise SecretStoreError(f"{where}: no such secret, mount or version") from None
    except hx.InvalidRequest as e:
        if "check-and-set" in str(e):
            raise SecretStoreError(f"{where}: changed concurrently by someone else (check-and-set "
                                   "failed); nothing was overwritten, re-read and retry") from None
        raise SecretStoreError(f"{where}: Vault refused the request ({_first_line(e)})") from None
    except hx.VaultError as e:
        raise SecretStoreError(f"{where}: Vault error ({type(e).__name__}: {_first_line(e)})") from None


def _first_line(e: Exception) -> str:
    # hvac errors carry Vault's messages (no secret data); keep them short
    return (str(e).splitlines() or [""])[0][:200]


class VaultSecret:
    """One KV v2 secret: its versions and fields."""

    def __init__(self, mount: str, path: str, client: Any | None = None):
        self.mount, self.path = mount, path
        self.client = client or _client()
        self.where = f"vault:{mount}/{path}"

    def read_version(self, version: int | None = None) -> tuple[dict[str, Any], int] | None:
        """(data, version) or None if the secret does not exist; errors if that version is
        deleted or destroyed."""
        import hvac.exceptions as hx

        def call() -> Any:
            try:
                return self.client.secrets.kv.v2.read_secret_version(
                    path=self.path, version=version, mount_point=self.mount,
                    raise_on_deleted_version=False)
            except hx.InvalidPath as e:
                # a destroyed version is a 404 that still carries its metadata
                meta = ((getattr(e, "json", None) or {}).get("data") or {}).get("metadata") or {}
                if meta.get("destroyed") or meta.get("deletion_time"):
                    return {"data": {"data": None, "metadata": meta}}
                return None

        resp = vault_call(self.where + (f"@{version}" if version else ""), call)
        if resp is None:
            return None
        data, meta = resp["data"]["data"], resp["data"]["metadata"]
        if data is None or meta.get("destroyed") or meta.get("deletion_time"):
            raise SecretStoreError(f"{self.where}@{meta.get('version')}: that version is deleted "
                                   "or destroyed")
        return dict(data), int(meta["version"])

    def write(self, data: dict[str, Any], cas: int) -> int:
        """A new version, only if the latest is still `cas` (0: only if none exists)."""
        resp = vault_call(self.where, lambda: self.client.secrets.kv.v2.create_or_update_secret(
            path=self.path, secret=data, cas=cas, mount_point=self.mount))
        return int(resp["data"]["version"])

    def created_time(self, version: int) -> datetime | None:
        return parse_utc(self.versions().get(version, {}).get("created_time"))

    def versions(self) -> dict[int, dict[str, Any]]:
        """Every version Vault still lists, with its metadata (created_time,
        deletion_time, destroyed); {} if the secret does not exist."""
        import hvac.exceptions as hx

        def call() -> dict[str, Any]:
            try:
                meta = self.client.secrets.kv.v2.read_secret_metadata(path=self.path,
                                                                      mount_point=self.mount)
            except hx.InvalidPath:
                return {}
            return dict(meta["data"]["versions"])

        return {int(v): dict(m) for v, m in vault_call(self.where, call).items()}

    def destroy_versions(self, versions: list[int]) -> None:
        """Vault's `destroy`: the data of these versions is gone for good."""
        vault_call(self.where, lambda: self.client.secrets.kv.v2.destroy_secret_versions(
            path=self.path, versions=versions, mount_point=self.mount))


class VaultStore:
    def __init__(self, base_body: str, client: Any | None = None):
        mount, _, prefix = base_body.strip("/").partition("/")
        if not mount:
            raise SecretStoreError(f"vault:{base_body}: expected vault:MOUNT/PATH")
        self.mount, self.prefix = mount, prefix
        self.base = f"vault:{base_body.strip('/')}"
        self._client = client

    def _secret(self, name: str) -> VaultSecret:
        check_name(name, self.base)
        path = f"{self.prefix}/{name}" if self.prefix else name
        if self._client is None:
            self._client = _client()
        return VaultSecret(self.mount, path, self._client)

    def ref(self, name: str, slot: Slot = "current") -> str:
        base = f"vault:{self.mount}/{self.prefix + '/' if self.prefix else ''}{name}"
        if slot == "pending":
            return base + "#" + PENDING_FIELD
        if slot == "previous":
            found = self._previous(name)
            return base + (f"@{found[1]}" if found else "@0")
        return base

    def read(self, name: str, slot: Slot = "current") -> str | None:
        if slot == "previous":
            found = self._previous(name)
            return found[0] if found else None
        latest = self._secret(name).read_version()
        if latest is None:
            return None
        return latest[0].get("value" if slot == "current" else PENDING_FIELD)

    def _previous(self, name: str) -> tuple[str, int] | None:
        """The most recent earlier version whose `value` differs from the current one."""
        secret = self._secret(name)
        latest = secret.read_version()
        if latest is None:
            return None
        current, version = latest[0].get("value"), latest[1]
        for v in range(version - 1, max(0, version - MAX_VERSIONS_BACK), -1):
            try:
                got = secret.read_version(v)
            except SecretStoreError:
                continue   # destroyed (keys destroy) or deleted: holds nothing to read
            if got and got[0].get("value") is not None and got[0].get("value") != current:
                return got[0]["value"], v
        return None

    def write_pending(self, name: str, value: str) -> None:
        secret = self._secret(name)
        latest = secret.read_version()
        data, version = latest if latest else ({}, 0)
        existing = data.get(PENDING_FIELD)
        if existing is not None:
            if hmac.compare_digest(str(existing).encode(), value.encode()):
                return
            raise SecretStoreError(f"{self.ref(name, 'pending')} already holds a different pending "
                                   "value: finish or abort that rotation first")
        secret.write({**data, PENDING_FIELD: value}, cas=version)

    def promote(self, name: str) -> None:
        secret = self._secret(name)
        latest = secret.read_version()
        if latest is None or latest[0].get(PENDING_FIELD) is None:
            raise SecretStoreError(f"nothing pending at {self.ref(name, 'pending')}")
        data, version = latest
        new = {k: v for k, v in data.items() if k != PENDING_FIELD}
        new["value"] = data[PENDING_FIELD]
        secret.write(new, cas=version)

    def discard_pending(self, name: str) -> None:
        secret = self._secret(name)
        latest = secret.read_version()
        if latest and PENDING_FIELD in latest[0]:
            secret.write({k: v for k, v in latest[0].items() if k != PENDING_FIELD}, cas=latest[1])

    def write_new(self, name: str, value: str) -> None:
        """keygen --to: only if the secret does not exist yet (cas=0)."""
        if self._secret(name).read_version() is not None:
            raise SecretStoreError(f"{self.ref(name)} already exists; refusing to overwrite a key")
        self._secret(name).write({"value": value}, cas=0)

    def write_state(self, name: str, value: str) -> None:
        secret = self._secret(name)
        latest = secret.read_version()
        secret.write({"value": value}, cas=latest[1] if latest else 0)

    def copies(self, name: str) -> list[StoredCopy]:
        """Each field of each version Vault keeps. A soft-deleted version cannot be read
        without undeleting it: listed with an unknown value (it may hold anything)."""
        secret = self._secret(name)
        versions = secret.versions()
        latest = max(versions, default=0)
        base, out = f"vault:{self.mount}/{secret.path}", []
        for v, meta in sorted(versions.items()):
            if meta.get("destroyed"):
                continue
            if meta.get("deletion_time"):
                out.append(StoredCopy(f"{base}@{v}", "deleted version", None))
                continue
            got = secret.read_version(v)
            for fld, value in (got[0] if got else {}).items():
                if isinstance(value, str) and fld in ("value", PENDING_FIELD):
                    role = ({"value": "current", PENDING_FIELD: "pending"}[fld] if v == latest
                            else "earlier version")
                    out.append(StoredCopy(base + ("" if fld == "value" else f"#{fld}") + f"@{v}",
                                          role, value))
        return out

    def destroy(self, name: str, value: str) -> list[str]:
        """Vault `destroy` of every earlier version holding `value` in a field; refuses if
        the latest version holds it (current or pending)."""
        secret = self._secret(name)
        copies = [c for c in self.copies(name) if c.value is not None and same_value(c.value, value)]
        in_use = [c.ref for c in copies if c.slot in ("current", "pending")]
        if in_use:
            raise SecretStoreError(f"{in_use[0]} holds that value: it is in use")
        versions = sorted({int(c.ref.rpartition("@")[2]) for c in copies})
        if versions:
            secret.destroy_versions(versions)
            left = secret.versions()
            kept = [v for v in versions if not left.get(v, {}).get("destroyed")]
            if kept:
                raise SecretStoreError(f"{secret.where}: Vault did not destroy versions {kept}")
        return [f"vault:{self.mount}/{secret.path}@{v}" for v in versions]

    def names(self) -> list[str]:
        import hvac.exceptions as hx

        def call() -> list[str]:
            try:
                resp = self._client_or_new().secrets.kv.v2.list_secrets(
                    path=self.prefix, mount_point=self.mount)
            except hx.InvalidPath:
                return []
            return [k for k in resp["data"]["keys"] if not k.endswith("/")]

        return vault_call(self.base, call)

    def _client_or_new(self) -> Any:
        if self._client is None:
            self._client = _client()
        return self._client

    def set_at(self, name: str) -> datetime | None:
        """Creation time of the oldest consecutive version holding the current value."""
        secret = self._secret(name)
        latest = secret.read_version()
        if latest is None:
            return None
        current, since = latest[0].get("value"), latest[1]
        for v in range(latest[1] - 1, max(0, latest[1] - MAX_VERSIONS_BACK), -1):
            try:
                got = secret.read_version(v)
            except SecretStoreError:
                break
            if not got or got[0].get("value") != current:
                break
            since = v
        return secret.created_time(since)


def read_vault_ref(body: str) -> str:
    ref = parse_vault_ref(body)
    found = VaultSecret(ref.mount, ref.path).read_version(ref.version)
    if found is None:
        raise SecretStoreError(f"{ref}: no such secret" + (" version" if ref.version else ""))
    value = found[0].get(ref.field)
    if value is None:
        raise SecretStoreError(f"{ref}: no field {ref.field!r}")
    if not isinstance(value, str) or value == "":
        raise SecretStoreError(f"{ref}: field {ref.field!r} is empty or not a string")
    return value


def write_new_vault_ref(body: str, value: str) -> None:
    """keygen --to vault:MOUNT/PATH: a brand-new secret (check-and-set 0) only."""
    vref = parse_vault_ref(body)
    if vref.version is not None or vref.field != "value":
        raise ConfigError(f"--to {vref}: name the secret, without #FIELD or @VERSION")
    parent, _, name = vref.path.rpartition("/")
    VaultStore(f"{vref.mount}/{parent}" if parent else vref.mount).write_new(name, value)


SCHEMES = {"vault": Scheme("vault", read_vault_ref, write_new_vault_ref, VaultStore)}
