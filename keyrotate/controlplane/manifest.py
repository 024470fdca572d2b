"""keyrotate.toml: the application's Workers, environments, secrets and encrypted columns.

Loaded once, validated whole: every error names the file, the table and the problem,
so a typo is caught before anything touches a Worker or a row.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from keyrotate.crypto.codecs import FORMATS
from keyrotate.db import DB_URL_HELP, is_database_url, refuse_credentials
from keyrotate.errors import ConfigError
from keyrotate.secrets.formats import ValueFormat
from keyrotate.secrets.names import check_name
from keyrotate.secrets.refs import parse_ref
from keyrotate.secrets.schemes import STORE_HELP, is_store_base

MANIFEST = "keyrotate.toml"
# internal: a secret only the application and keyrotate use (the Durable Object
# endpoint's bearer token): generated, pushed and rotated like the others
KINDS = ("master-key", "jwt-hs256", "external", "internal", "generic")
# what notification sinks can be told about (keyrotate.evidence.event defines them)
NOTIFY_EVENTS = ("rotation.started", "rotation.step", "rotation.paused", "rotation.failed",
                 "rotation.finished", "secret.overdue", "incident.report", "notify.test")
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


@dataclass(frozen=True)
class Environment:
    name: str
    database: str
    secrets: str                      # store base: dotenv:PATH, keyring:SERVICE, vault:MOUNT/PATH
    health: dict[str, str] = field(default_factory=dict)
    objects: dict[str, str] = field(default_factory=dict)  # Durable Object class -> endpoint


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


def find_manifest(start: Path | None = None, explicit: str | None = None) -> Path:
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise ConfigError(f"manifest not found: {p}")
        return p
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / MANIFEST).is_file():
            return d / MANIFEST
    raise ConfigError(f"no {MANIFEST} here or above (run `keyrotate init` to write one)")


def load_manifest(path: Path) -> Manifest:
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {type(e).__name__}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return _validate(path, data, text)


def _table(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{key}] must be a table")
    return value


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where} must be a list of names")
    return tuple(value)


# Every key each table may hold: anything else is a typo, and a typo must not quietly
# fall back to a default (`max_tokn_ttl = "2h"` would leave the default TTL in force).
KNOWN: dict[str, tuple[str, ...]] = {
    "": ("project", "environments", "secrets", "encrypted", "notify"),
    "notify": ("sinks", "timeout"),
    "notify.sinks": ("url", "format", "secret", "events"),
    "project": ("name", "worker_name", "workers_dir", "deploy_order", "wrangler", "migrations_dir"),
    "environments.*": ("database", "secrets", "health", "objects"),
    "secrets.*": ("kind", "workers", "generate", "previous", "max_token_ttl", "format", "canary"),
    "encrypted": ("secret", "table", "column", "format", "key_column", "object", "ids", "ledger",
                  "token"),
}


def _check_known(table: dict[str, Any], section: str, label: str, path: Path, text: str) -> None:
    """An unknown key is an error naming the file, its line and the closest known key."""
    known = KNOWN[section]
    for key in table:
        if key in known:
            continue
        line = _line_of(text, key)
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        raise ConfigError(f"{path}{f':{line}' if line else ''}: unknown key {key!r} in "
                          f"{label or 'the top level'}"
                          + (f"; did you mean {close[0]!r}?" if close else
                             f" (known: {', '.join(known)})"))


def _each_table(value: Any, label: str, section: str, path: Path,
                text: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each table of an array of tables, with unknown keys refused; `w` names its place
    for errors ("keyrotate.toml: [[encrypted]] #2")."""
    if not isinstance(value, list):
        raise ConfigError(f"{path}: {label} must be an array of tables")
    for i, t in enumerate(value):
        w = f"{path}: {label} #{i + 1}"
        if not isinstance(t, dict):
            raise ConfigError(f"{w} must be a table")
        _check_known(t, section, f"{label} #{i + 1}", path, text)
        yield w, t


def _line_of(text: str, key: str) -> int | None:
    """The first line that defines `key` (as a key, a [table] or an [[array]])."""
    word = re.escape(key)
    pattern = re.compile(rf'(^\s*\[+\s*(?:[\w"-]+\.)*"?{word}"?\s*[\].])|'
                         rf'((^|[{{,])\s*"?{word}"?\s*=)')
    for n, line in enumerate(text.splitlines(), 1):
        if pattern.search(line):
            return n
    return None


def _validate(path: Path, data: dict[str, Any], text: str = "") -> Manifest:
    where = str(path)
    _check_known(data, "", "", path, text)
    project = _table(data, "project", where)
    _check_known(project, "project", "[project]", path, text)
    order = _str_list(project.get("deploy_order", []), f"{where}: project.deploy_order")
    if not order:
        raise ConfigError(f"{where}: project.deploy_order lists no workers")
    if len(set(order)) != len(order):
        raise ConfigError(f"{where}: project.deploy_order lists a worker twice")
    worker_name = str(project.get("worker_name", "{project}-{worker}-{env}"))
    if "{worker}" not in worker_name:
        raise ConfigError(f"{where}: project.worker_name must contain {{worker}}")
    wrangler = _str_list(project.get("wrangler", ["npx", "wrangler"]), f"{where}: project.wrangler")

    secrets: dict[str, SecretSpec] = {}
    for name, spec in _table(data, "secrets", where).items():
        w = f"{where}: [secrets.{name}]"
        check_name(name, w)
        if not isinstance(spec, dict):
            raise ConfigError(f"{w} must be a table")
        _check_known(spec, "secrets.*", f"[secrets.{name}]", path, text)
        if spec.get("previous") is not None:
            check_name(str(spec["previous"]), f"{w} previous")
        kind = spec.get("kind", "generic")
        if kind not in KINDS:
            raise ConfigError(f"{w}: kind {kind!r} is not one of {', '.join(KINDS)}")
        workers = _str_list(spec.get("workers", []), f"{w} workers")
        for worker in workers:
            if worker not in order:
                raise ConfigError(f"{w}: unknown worker {worker!r} (not in deploy_order)")
        generate = spec.get("generate")
        if generate is not None and not re.fullmatch(r"(base64|hex):\d+", str(generate)):
            raise ConfigError(f"{w}: generate must be like base64:32 or hex:32")
        fmt = ValueFormat.parse(str(spec["format"]), w) if "format" in spec else None
        if fmt is not None and generate is None and fmt.can_generate:
            generate = str(fmt)  # a value that fits the format
        if fmt is not None and generate is not None and fmt.can_generate and str(fmt) != generate:
            raise ConfigError(f"{w}: generate = {generate!r} makes values that do not fit "
                              f"format = {str(fmt)!r}")
        ttl = spec.get("max_token_ttl")
        canary = _canary_steps(spec.get("canary"), w)
        secrets[name] = SecretSpec(
            name=name, kind=kind, workers=workers, generate=generate,
            previous=spec.get("previous"),
            max_token_ttl=parse_duration(str(ttl), f"{w} max_token_ttl") if ttl else None,
            format=fmt, canary=canary)

    environments: dict[str, Environment] = {}
    for name, env in _table(data, "environments", where).items():
        w = f"{where}: [environments.{name}]"
        if not isinstance(env, dict):
            raise ConfigError(f"{w} must be a table")
        _check_known(env, "environments.*", f"[environments.{name}]", path, text)
        database, store = env.get("database"), env.get("secrets")
        if not is_database_url(database):
            raise ConfigError(f"{w}: database must be a URL: {DB_URL_HELP}")
        refuse_credentials(str(database))
        if not is_store_base(store):
            raise ConfigError(f"{w}: secrets must be a store base: {STORE_HELP}")
        health = env.get("health", {})
        if not isinstance(health, dict):
            raise ConfigError(f"{w}: health must be a table of worker = URL")
        for worker, url in health.items():
            if worker not in order:
                raise ConfigError(f"{w}: health names unknown worker {worker!r}")
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ConfigError(f"{w}: health URL for {worker} must be http(s)://")
        objects = env.get("objects", {})
        if not isinstance(objects, dict) or not all(
                isinstance(u, str) and u.startswith(("http://", "https://")) for u in objects.values()):
            raise ConfigError(f"{w}: objects must be a table of DurableObjectClass = \"https://...\"")
        environments[name] = Environment(name, database, store, dict(health), dict(objects))

    encrypted = []
    for w, t in _each_table(data.get("encrypted", []), "[[encrypted]]", "encrypted", path, text):
        secret = t.get("secret")
        if secret not in secrets:
            raise ConfigError(f"{w}: secret {secret!r} is not declared under [secrets]")
        if secrets[secret].kind != "master-key":
            raise ConfigError(f"{w}: secret {secret!r} must be of kind master-key")
        encrypted.append(_object_target(t, w, secrets, environments) if "object" in t
                         else _column_target(t, w))

    names = [t.name for t in encrypted]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: an [[encrypted]] target is listed twice")
    return Manifest(
        path=path, project=str(project.get("name", "app")), worker_name=worker_name,
        workers_dir=str(project.get("workers_dir", "workers")), deploy_order=order,
        wrangler=wrangler, migrations_dir=str(project.get("migrations_dir", "migrations")),
        environments=environments, secrets=secrets, encrypted=tuple(encrypted),
        notify=_notify(data, path, text))


def _notify(data: dict[str, Any], path: Path, text: str) -> NotifyConfig:
    where = f"{path}: [notify]"
    table = _table(data, "notify", str(path))
    _check_known(table, "notify", "[notify]", path, text)
    timeout = table.get("timeout", 5)
    if not isinstance(timeout, (int, float)) or not 0 < timeout <= 60:
        raise ConfigError(f"{where}: timeout must be a number of seconds, at most 60")
    sinks = []
    for w, sink in _each_table(table.get("sinks", []), "[notify] sink", "notify.sinks", path, text):
        url = sink.get("url")
        if not isinstance(url, str):
            raise ConfigError(f"{w}: url is missing")
        if url.startswith(("http://", "https://")):
            raise ConfigError(f"{w}: url must name the webhook URL, not be it (a webhook URL is "
                              "a credential): env:SLACK_WEBHOOK_URL, dotenv:.env#SLACK_WEBHOOK_URL, "
                              "vault:...")
        parse_ref(url, f"{w}: url")
        fmt = sink.get("format", "json")
        if fmt not in NOTIFY_FORMATS:
            raise ConfigError(f"{w}: format must be one of {', '.join(NOTIFY_FORMATS)}")
        secret = sink.get("secret")
        if fmt == "json":
            if not isinstance(secret, str):
                raise ConfigError(f"{w}: a json sink signs its bodies: give secret = "
                                  "\"env:ROTATION_WEBHOOK_SECRET\" (a secret reference)")
            parse_ref(secret, f"{w}: secret")
        elif secret is not None:
            raise ConfigError(f"{w}: a slack sink is not signed by keyrotate: remove secret")
        events = sink.get("events", list(NOTIFY_EVENTS))
        if not isinstance(events, list) or not events or any(e not in NOTIFY_EVENTS for e in events):
            raise ConfigError(f"{w}: events must list some of {', '.join(NOTIFY_EVENTS)}")
        sinks.append(NotifySink(url, fmt, secret, tuple(events)))
    return NotifyConfig(tuple(sinks), float(timeout))


def _column_target(t: dict[str, Any], w: str) -> ColumnTarget:
    if not t.get("table") or not t.get("column"):
        raise ConfigError(f"{w}: needs table and column (or object, ids, ledger, token)")
    stray = [k for k in ("ids", "ledger", "token") if k in t]
    if stray:
        raise ConfigError(f"{w}: {', '.join(stray)} belong to an object target (object = ...)")
    fmt = t.get("format", "tminus-envelope")
    if fmt not in FORMATS:
        raise ConfigError(f"{w}: format {fmt!r} is not one of {', '.join(FORMATS)}")
    return ColumnTarget(t["secret"], t["table"], t["column"], fmt, t.get("key_column"))


def _object_target(t: dict[str, Any], w: str, secrets: dict[str, SecretSpec],
                   environments: dict[str, Environment]) -> ObjectTarget:
    stray = [k for k in ("table", "column", "key_column") if k in t]
    if stray:
        raise ConfigError(f"{w}: {', '.join(stray)} belong to a column target, not object =")
    missing = [k for k in ("ids", "ledger", "token") if not t.get(k)]
    if missing:
        raise ConfigError(f"{w}: an object target needs {', '.join(missing)}")
    if t.get("format", "tminus-envelope") != "tminus-envelope":
        raise ConfigError(f"{w}: object targets hold tminus envelopes")
    ids = str(t["ids"])
    if ids.count(".") != 1 or not all(ids.split(".")):
        raise ConfigError(f"{w}: ids must be TABLE.COLUMN (the D1 column listing the objects)")
    token = str(t["token"])
    if token not in secrets:
        raise ConfigError(f"{w}: token {token!r} is not declared under [secrets]")
    if not secrets[t["secret"]].previous:
        raise ConfigError(f"{w}: the Worker rewraps objects with both keys: [secrets."
                          f"{t['secret']}] needs previous = \"{t['secret']}_PREVIOUS\"")
    for env in environments.values():
        if str(t["object"]) not in env.objects:
            raise ConfigError(f"{w}: [environments.{env.name}] objects has no endpoint for "
                              f"{t['object']!r}")
    return ObjectTarget(t["secret"], str(t["object"]), ids, str(t["ledger"]), token)


def _canary_steps(value: Any, w: str) -> tuple[int, ...] | None:
    """`canary = true` (10, 50, 100) or a list of rising percentages ending at 100."""
    if value is None or value is False:
        return None
    if value is True:
        return (10, 50, 100)
    if (not isinstance(value, list) or not value or value[-1] != 100
            or not all(isinstance(v, int) and 0 < v <= 100 for v in value)
            or value != sorted(set(value))):
        raise ConfigError(f"{w}: canary must be true or rising percentages ending at 100, "
                          "like [10, 50, 100]")
    return tuple(value)
