"""One environment of the manifest, with what commands on it share: the deployed Worker
names, the secret store, and one lazily opened database connection.

The connection is opened on first use and closed once, when the command ends (the CLI
closes the context): on a d1:// database every open-and-check costs API requests.
`shared` is where the layers above keep what one command shares and this layer cannot
name (the audit trail, API clients): made once, closed with the context.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from keyrotate.config.load import find_manifest, load_manifest
from keyrotate.config.manifest import Environment, Manifest
from keyrotate.db.base import RowStore, Target
from keyrotate.db.connect import open_database
from keyrotate.db.own_schema import ensure_journal_schema
from keyrotate.db.table_shape import resolve_target
from keyrotate.secrets.base import SecretStore
from keyrotate.secrets.schemes import open_secret_store

T = TypeVar("T")


@dataclass
class Context:
    manifest: Manifest
    env: Environment
    _db: RowStore | None = field(default=None, repr=False)
    _secret_store: SecretStore | None = field(default=None, repr=False)
    _targets: dict[tuple[str, str | None], Target] = field(default_factory=dict, repr=False)
    _shared: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, env_name: str, manifest_path: str | None = None) -> "Context":
        m = load_manifest(find_manifest(explicit=manifest_path))
        return cls(m, m.env(env_name))

    def for_env(self, env_name: str) -> "Context":
        """Another environment of the same manifest (its own connection)."""
        return Context(self.manifest, self.manifest.env(env_name))

    def _local(self, scheme: str, value: str) -> str:
        """file: and dotenv: paths in the manifest are relative to the manifest's folder."""
        prefix = scheme + ":"
        if value.startswith(prefix) and not value.startswith(prefix + "/"):
            return prefix + str(self.manifest.root / value[len(prefix):])
        return value

    def reference(self, ref: str) -> str:
        """A secret reference from the manifest, with dotenv: and file: paths taken
        relative to the manifest's folder."""
        return self._local("file", self._local("dotenv", ref))

    def database_url(self) -> str:
        return self._local("file", self.env.database)

    @property
    def db(self) -> RowStore:
        """The environment's database, opened on first use, with keyrotate's tables."""
        if self._db is None:
            self._db = open_database(self.database_url())
            ensure_journal_schema(self._db)
        return self._db

    def target(self, spec: str, key_column: str | None) -> Target:
        """TABLE.COLUMN checked against the schema once per command (five queries each
        time, so five D1 requests: a rotation's reencrypt, verify and sweep share one)."""
        if (spec, key_column) not in self._targets:
            self._targets[(spec, key_column)] = resolve_target(self.db, spec, key_column)
        return self._targets[(spec, key_column)]

    @property
    def secrets(self) -> SecretStore:
        if self._secret_store is None:
            self._secret_store = open_secret_store(self._local("dotenv", self.env.secrets))
        return self._secret_store

    def worker_name(self, worker: str) -> str:
        """The deployed Worker's full name (tminus-api-staging)."""
        return self.manifest.deployed_name(worker, self.env.name)

    @property
    def state_dir(self) -> Path:
        """Local files keyrotate keeps beside the manifest (audit log, incident reports)."""
        return self.manifest.root / ".keyrotate"

    def shared(self, key: str, make: Callable[[], T]) -> T:
        """One `make()` per command, kept under `key`; closed (if it can be) with the context."""
        if key not in self._shared:
            self._shared[key] = make()
        return self._shared[key]  # type: ignore[no-any-return]

    def settle(self) -> None:
        """What the command's shared things still owe before its result may be told (the
        audit trail's deferred records): raises if they cannot be written."""
        for thing in list(self._shared.values()):
            settle = getattr(thing, "settle", None)
            if callable(settle):
                settle()

    def close(self) -> None:
        for thing in reversed(list(self._shared.values())):
            closer = getattr(thing, "close", None)
            if callable(closer):
                closer()
        self._shared.clear()
        if self._db is not None:
            self._db.close()
            self._db = None
