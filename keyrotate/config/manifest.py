"""keyrotate.toml as data: the application's Workers, environments, secrets, encrypted
targets and notification sinks (config.load reads and checks the file)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from keyrotate.config.window import Window
from keyrotate.errors import ConfigError
from keyrotate.secrets.formats import ValueFormat

MANIFEST = "keyrotate.toml"
# internal: a secret only the application and keyrotate use (the Durable Object
# endpoint's bearer token): generated, pushed and rotated like the others
KINDS = ("master-key", "jwt-hs256", "external", "internal", "generic")
# what notification sinks can be told about (keyrotate.evidence.event defines them)
NOTIFY_EVENTS = ("rotation.started", "rotation.step", "rotation.paused", "rotation.failed",
                 "rotation.finished", "secret.overdue", "secret.unchecked", "incident.report",
                 "notify.test")
NOTIFY_FORMATS = ("json", "slack")
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, where: str) -> int:
    """'90d', '1h', '30m' -> seconds."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ConfigError(f"{where}: {text!r} is not a duration like 30m, 1h, 90d")
    return int(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True)
class SecretSpec:
    name: str
    kind: str
    workers: tuple[str, ...]
    generate: str | None = None       # "base64:32" | "hex:32"
    previous: str | None = None       # name of the overlap secret the Workers read
    max_token_ttl: int | None = None  # seconds (jwt-hs256)
    format: ValueFormat | None = None  # what every value must look like
    canary: tuple[int, ...] | None = None  # traffic steps (%) for new values, e.g. (10, 50, 100)
    max_age: int | None = None        # seconds: the cryptoperiod (status and keys report past it)
    auto: bool = False                # `rollover` rotates it unattended (else: reports it due)
    finish_after: int | None = None   # seconds the overlap stays open before rollover finishes it
    window: Window | None = None      # when rollover may start a step (None: at any time)


@dataclass(frozen=True)
class Environment:
    name: str
    database: str
    secrets: str                      # store base: dotenv:PATH, keyring:SERVICE, vault:MOUNT/PATH
    health: dict[str, str] = field(default_factory=dict)
    objects: dict[str, str] = field(default_factory=dict)  # Durable Object class -> endpoint
    # worker -> its keyrotate route, which answers `ping` with the kids of the keys that
    # version holds: how keyrotate asks each serving version which keys it reads
    key_routes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ColumnTarget:
    """An encrypted column of the environment's database."""

    secret: str
    table: str
    column: str
    format: str = "tminus-envelope"
    key_column: str | None = None

    @property
    def name(self) -> str:
        """TABLE.COLUMN, as --target takes it."""
        return f"{self.table}.{self.column}"


@dataclass(frozen=True)
class ObjectTarget:
    """Envelopes inside Durable Objects, reached through the Worker's endpoint: one object
    per id in a D1 column, progress in the application's own ledger table."""

    secret: str
    object: str            # the Durable Object class, also the key of `objects` per environment
    ids: str               # TABLE.COLUMN listing the objects
    ledger: str            # key_rotation_log
    token: str             # the secret holding the endpoint's bearer token

    @property
    def name(self) -> str:
        return self.object

    @property
    def ids_table(self) -> str:
        return self.ids.split(".")[0]

    @property
    def ids_column(self) -> str:
        return self.ids.split(".")[1]


EncryptedTarget = ColumnTarget | ObjectTarget


@dataclass(frozen=True)
class NotifySink:
    """Where notifications go. The URL is a secret reference: a Slack webhook URL is a
    credential. `json` bodies are signed with `secret` (a reference too)."""

    url: str
    format: str
    secret: str | None = None
    events: tuple[str, ...] = NOTIFY_EVENTS

    @property
    def label(self) -> str:
        return f"{self.format} sink {self.url}"


@dataclass(frozen=True)
class NotifyConfig:
    sinks: tuple[NotifySink, ...] = ()
    timeout: float = 5.0    # seconds per try; three tries with backoff


@dataclass(frozen=True)
class Manifest:
    path: Path
    project: str
    worker_name: str
    workers_dir: str
    deploy_order: tuple[str, ...]
    wrangler: tuple[str, ...]
    migrations_dir: str
    environments: dict[str, Environment]
    secrets: dict[str, SecretSpec]
    encrypted: tuple[EncryptedTarget, ...]
    notify: NotifyConfig = NotifyConfig()
    route_token: str | None = None     # the secret holding the keyrotate routes' bearer token

    @property
    def root(self) -> Path:
        return self.path.parent

    def env(self, name: str) -> Environment:
        if name not in self.environments:
            raise ConfigError(f"{self.path}: no environment {name!r} "
                              f"(have: {', '.join(self.environments) or 'none'})")
        return self.environments[name]

    def secret(self, name: str) -> SecretSpec:
        if name not in self.secrets:
            raise ConfigError(f"{self.path}: no secret {name!r} "
                              f"(have: {', '.join(self.secrets) or 'none'})")
        return self.secrets[name]

    def worker(self, name: str) -> str:
        if name not in self.deploy_order:
            raise ConfigError(f"{self.path}: no worker {name!r} in deploy_order")
        return name

    def deployed_name(self, worker: str, env: str) -> str:
        """The deployed Worker's name, resolved here because `wrangler rollback --env`
        (4.x) does not add the environment suffix (docs/cloudflare.md)."""
        return self.worker_name.format(worker=worker, env=env, project=self.project)

    def worker_dir(self, worker: str) -> Path:
        return self.root / self.workers_dir / worker

    def workers_holding(self, secret: str) -> list[str]:
        """Workers that hold a secret, in deploy order."""
        holders = set(self.secret(secret).workers)
        return [w for w in self.deploy_order if w in holders]

    def kind_of(self, name: str) -> str:
        """The kind of a secret, or of the secret whose `previous` name this is."""
        if name in self.secrets:
            return self.secrets[name].kind
        owner = next((s for s in self.secrets.values() if s.previous == name), None)
        return owner.kind if owner else "generic"

    def targets_of(self, secret: str) -> list[EncryptedTarget]:
        return [t for t in self.encrypted if t.secret == secret]

    def columns_of(self, secret: str) -> list[ColumnTarget]:
        return [t for t in self.encrypted if t.secret == secret and isinstance(t, ColumnTarget)]

    def objects_of(self, secret: str) -> list[ObjectTarget]:
        return [t for t in self.encrypted if t.secret == secret and isinstance(t, ObjectTarget)]

    def object_target(self, name: str) -> ObjectTarget:
        found = next((t for t in self.encrypted if isinstance(t, ObjectTarget) and t.object == name),
                     None)
        if found is None:
            have = [t.object for t in self.encrypted if isinstance(t, ObjectTarget)]
            raise ConfigError(f"{self.path}: no [[encrypted]] object target {name!r} "
                              f"(have: {', '.join(have) or 'none'})")
        return found
