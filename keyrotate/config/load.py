"""Reading keyrotate.toml: loaded once, validated whole, one section at a time. Every error
names the file, the line, the table and the problem, so a typo, or a setting that would
break the application, is caught before anything touches a Worker, a store or a row."""

from __future__ import annotations

import difflib
import re
import string
import tomllib
from pathlib import Path
from typing import Any, Iterator

from keyrotate.config.manifest import (
    KINDS,
    MANIFEST,
    NOTIFY_EVENTS,
    NOTIFY_FORMATS,
    ColumnTarget,
    EncryptedTarget,
    Environment,
    Manifest,
    NotifyConfig,
    NotifySink,
    ObjectTarget,
    SecretSpec,
    parse_duration,
)
from keyrotate.config.window import Window
from keyrotate.crypto.codecs import FORMATS
from keyrotate.crypto.keys import new_key_size_problem
from keyrotate.db.urls import DB_URL_HELP, has_credentials, is_database_url, refuse_credentials
from keyrotate.errors import ConfigError
from keyrotate.secrets.audit_key import RESERVED
from keyrotate.secrets.base import PREVIOUS_SUFFIX, SLOT_SUFFIXES
from keyrotate.secrets.formats import ValueFormat, bytes_problem
from keyrotate.secrets.names import check_name
from keyrotate.secrets.refs import parse_ref
from keyrotate.secrets.schemes import STORE_HELP, is_store_base

# Every key each table may hold: anything else is a typo, and a typo must not quietly
# fall back to a default (`max_tokn_ttl = "2h"` would leave the default TTL in force).
KNOWN: dict[str, tuple[str, ...]] = {
    "": ("project", "environments", "secrets", "encrypted", "notify"),
    "notify": ("sinks", "timeout"),
    "notify.sinks": ("url", "format", "secret", "events"),
    "project": ("name", "worker_name", "workers_dir", "deploy_order", "wrangler", "migrations_dir",
                "route_token"),
    "environments.*": ("database", "secrets", "health", "objects", "key_routes"),
    "secrets.*": ("kind", "workers", "generate", "previous", "max_token_ttl", "format", "canary",
                  "max_age", "auto", "finish_after", "window"),
    "encrypted": ("secret", "table", "column", "format", "key_column", "object", "ids", "ledger",
                  "token"),
}
# what each [[encrypted]] key names: any other type is refused, never converted
ENCRYPTED_NAMES = {"secret": "a secret name", "table": "a table name", "column": "a column name",
                   "format": "a format name", "key_column": "a column name",
                   "object": "a Durable Object class name", "ids": "TABLE.COLUMN",
                   "ledger": "a table name", "token": "a secret name"}
WORKER_NAME_FIELDS = ("worker", "env", "project")
# kinds whose secret the app itself reads: one that no Worker holds is a mistake
HELD_KINDS = ("master-key", "jwt-hs256")


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
    return ManifestReader(path, text).read(data)


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where} must be a list of names")
    return tuple(value)


def _line_of(text: str, key: str) -> int | None:
    """The first line that defines `key` (as a key, a [table] or an [[array]])."""
    word = re.escape(key)
    pattern = re.compile(rf'(^\s*\[+\s*(?:[\w"-]+\.)*"?{word}"?\s*[\].])|'
                         rf'((^|[{{,])\s*"?{word}"?\s*=)')
    for n, line in enumerate(text.splitlines(), 1):
        if pattern.search(line):
            return n
    return None


_HEADER = re.compile(r"^\s*\[\[?\s*([^\[\]]+?)\s*\]\]?\s*(?:#.*)?$")


def _header(line: str) -> tuple[str, ...] | None:
    """The table path of a `[a.b]` or `[[a]]` line (None for any other line)."""
    m = _HEADER.match(line)
    return tuple(p.strip().strip("\"'") for p in m.group(1).split(".")) if m else None


def _line_in(text: str, path: tuple[str, ...], key: str | None = None, index: int = 0) -> int | None:
    """The line of `key` in the table at `path` (the index-th of an array of tables), or
    of the table itself when `key` is None or not written there. A table written inline
    or with dotted keys: the first line that names it."""
    lines = text.splitlines()
    starts = [n for n, line in enumerate(lines, 1) if _header(line) == path]
    if index >= len(starts):
        return _line_of(text, path[-1])
    if key is None:
        return starts[index]
    wanted = re.compile(rf'(^|[{{,])\s*["\']?{re.escape(key)}["\']?\s*=')
    for n in range(starts[index] + 1, len(lines) + 1):
        if _header(lines[n - 1]) is not None:
            break
        if wanted.search(lines[n - 1]):
            return n
    return starts[index]


class ManifestReader:
    """One file's validation: each section read by its own method, in dependency order
    (workers, then secrets, environments, encrypted targets, notifications)."""

    def __init__(self, path: Path, text: str = ""):
        self.path, self.text, self.where = path, text, str(path)

    def read(self, data: dict[str, Any]) -> Manifest:
        self.check_known(data, "", "")
        project = self.table(data, "project")
        self.check_known(project, "project", "[project]")
        order = self.deploy_order(project)
        worker_name = self.worker_name(project)
        wrangler = _str_list(project.get("wrangler", ["npx", "wrangler"]),
                             f"{self.at(('project',), 'wrangler')}: project.wrangler")
        if not wrangler:
            raise ConfigError(f"{self.at(('project',), 'wrangler')}: project.wrangler must name the "
                              'command, like ["npx", "wrangler"]')
        secrets = self.secrets(self.table(data, "secrets"), order)
        environments = self.environments(self.table(data, "environments"), order)
        if len(environments) > 1 and "{env}" not in worker_name:
            raise ConfigError(f"{self.at(('project',), 'worker_name')}: project.worker_name has no "
                              "{env}: every environment would act on the same Workers (a staging "
                              "rotation would push to production's)")
        encrypted = self.encrypted(data.get("encrypted", []), secrets, environments)
        route_token = self.route_token(project, secrets, environments, encrypted)
        return Manifest(
            path=self.path, project=str(project.get("name", "app")), worker_name=worker_name,
            workers_dir=str(project.get("workers_dir", "workers")), deploy_order=order,
            wrangler=wrangler, migrations_dir=str(project.get("migrations_dir", "migrations")),
            environments=environments, secrets=secrets, encrypted=encrypted,
            notify=self.notify(self.table(data, "notify")), route_token=route_token)

    # -- helpers ---------------------------------------------------------------------------
    def at(self, path: tuple[str, ...], key: str | None = None, index: int = 0) -> str:
        """`file:line` of a key (or a table) for an error message; `file` if not found."""
        line = _line_in(self.text, path, key, index)
        return f"{self.path}:{line}" if line else self.where

    def credentials_in(self, url: str, where: str) -> bool:
        try:
            return has_credentials(url)
        except ConfigError as e:   # a URL that does not parse: refused, not repeated
            raise ConfigError(f"{where}: {e}") from None

    def table(self, data: dict[str, Any], key: str) -> dict[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{self.where}: [{key}] must be a table")
        return value

    def check_known(self, table: dict[str, Any], section: str, label: str) -> None:
        """An unknown key is an error naming the file, its line and the closest known key."""
        known = KNOWN[section]
        for key in table:
            if key in known:
                continue
            line = _line_of(self.text, key)
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            raise ConfigError(f"{self.path}{f':{line}' if line else ''}: unknown key {key!r} in "
                              f"{label or 'the top level'}"
                              + (f"; did you mean {close[0]!r}?" if close else
                                 f" (known: {', '.join(known)})"))

    def each_table(self, value: Any, label: str, section: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Each table of an array of tables, with unknown keys refused; `w` names its place
        for errors ("keyrotate.toml: [[encrypted]] #2")."""
        if not isinstance(value, list):
            raise ConfigError(f"{self.path}: {label} must be an array of tables")
        for i, t in enumerate(value):
            w = f"{self.at(tuple(section.split('.')), None, i)}: {label} #{i + 1}"
            if not isinstance(t, dict):
                raise ConfigError(f"{w} must be a table")
            self.check_known(t, section, f"{label} #{i + 1}")
            yield w, t

    # -- sections --------------------------------------------------------------------------
    def worker_name(self, project: dict[str, Any]) -> str:
        """The template of a deployed Worker's name: only {worker}, {env} and {project},
        checked here so that resolving a name can never fail mid-command."""
        name = project.get("worker_name", "{project}-{worker}-{env}")
        w = f"{self.at(('project',), 'worker_name')}: project.worker_name"
        if not isinstance(name, str):
            raise ConfigError(f'{w} must be a string like "{{project}}-{{worker}}-{{env}}"')
        try:
            fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(name)
                      if f is not None]
        except ValueError:
            raise ConfigError(f"{w} has an unclosed or stray brace (a literal one is written "
                              "{{ or }})") from None
        for field, spec, conv in fields:
            if field not in WORKER_NAME_FIELDS:
                raise ConfigError(f"{w} has an unknown placeholder {{{field}}} (known: {{worker}}, "
                                  "{env}, {project})")
            if spec or conv:
                raise ConfigError(f"{w}: placeholders must be plain {{worker}}, {{env}} or "
                                  "{project}, without a conversion or format")
        if "worker" not in (f for f, _, _ in fields):
            raise ConfigError(f"{w} must contain {{worker}}")
        return name

    def deploy_order(self, project: dict[str, Any]) -> tuple[str, ...]:
        order = _str_list(project.get("deploy_order", []), f"{self.where}: project.deploy_order")
        if not order:
            raise ConfigError(f"{self.where}: project.deploy_order lists no workers")
        if len(set(order)) != len(order):
            raise ConfigError(f"{self.where}: project.deploy_order lists a worker twice")
        return order

    def secrets(self, table: dict[str, Any], order: tuple[str, ...]) -> dict[str, SecretSpec]:
        specs = {name: self.secret(name, spec, order) for name, spec in table.items()}
        self.previous_names(specs)
        return specs

    def previous_names(self, specs: dict[str, SecretSpec]) -> None:
        """Each `previous` names a Worker secret of its own: not another declared secret
        (a cycle: a rotation would overwrite it), not another secret's store slot, and not
        shared by two secrets (one rotation would overwrite the other's old value)."""
        owners: dict[str, str] = {}
        for spec in specs.values():
            if not spec.previous:
                continue
            w = f"{self.at(('secrets', spec.name), 'previous')}: [secrets.{spec.name}] previous"
            if spec.previous in specs:
                raise ConfigError(f"{w} is [secrets.{spec.previous}] itself: a rotation of "
                                  f"{spec.name} would overwrite {spec.previous} on the Workers "
                                  f"with {spec.name}'s old value; use \"{spec.name}_PREVIOUS\"")
            if spec.previous in owners:
                raise ConfigError(f"{w}: {spec.previous} is also the previous of "
                                  f"[secrets.{owners[spec.previous]}]: each rotation would "
                                  "overwrite the other's old value on the Workers")
            slot_of = next((o for o in specs for suffix in SLOT_SUFFIXES
                            if spec.previous == o + suffix
                            and (o, suffix) != (spec.name, PREVIOUS_SUFFIX)), None)
            if slot_of:
                raise ConfigError(f"{w}: {spec.previous} is a store slot of {slot_of}; use "
                                  f"\"{spec.name}_PREVIOUS\"")
            owners[spec.previous] = spec.name

    def secret(self, name: str, spec: Any, order: tuple[str, ...]) -> SecretSpec:
        path = ("secrets", name)
        w = f"{self.at(path)}: [secrets.{name}]"
        check_name(name, w)
        if name.startswith(RESERVED):
            raise ConfigError(f"{w}: {name} is keyrotate's own (the audit key and the trail's head "
                              "live in each environment's store): choose another name")
        suffix = next((s for s in SLOT_SUFFIXES if name.endswith(s)), None)
        if suffix:
            raise ConfigError(f"{w}: the name ends in {suffix}, which the secret stores keep beside "
                              f"{name[:-len(suffix)] or 'a secret'} as one of its slots: choose "
                              "another name")
        if not isinstance(spec, dict):
            raise ConfigError(f"{w} must be a table")
        self.check_known(spec, "secrets.*", f"[secrets.{name}]")
        previous = spec.get("previous")
        if previous is not None:
            pw = f"{self.at(path, 'previous')}: [secrets.{name}] previous"
            check_name(previous if isinstance(previous, str) else "", pw)
            if previous == name:
                raise ConfigError(f"{pw} is the secret's own name: the rotation would "
                                  f"push the old value as {name}, then --finish would remove "
                                  f"{name} from every Worker; use \"{name}_PREVIOUS\"")
        kind = spec.get("kind", "generic")
        if kind not in KINDS:
            raise ConfigError(f"{w}: kind {kind!r} is not one of {', '.join(KINDS)}")
        workers = _str_list(spec.get("workers", []), f"{self.at(path, 'workers')}: [secrets.{name}] "
                                                     "workers")
        for worker in workers:
            if worker not in order:
                raise ConfigError(f"{w}: unknown worker {worker!r} (not in deploy_order)")
        if kind in HELD_KINDS and not workers:
            raise ConfigError(f"{self.at(path, 'workers')}: [secrets.{name}]: a {kind} secret is "
                              "read by the application, and no Worker holds it: list the Workers "
                              "that do in workers = [...]")
        generate = spec.get("generate")
        if generate is not None:
            gw = f"{self.at(path, 'generate')}: [secrets.{name}] generate"
            m = re.fullmatch(r"(base64|hex):(\d+)", str(generate))
            if not m:
                raise ConfigError(f"{gw} must be like base64:32 or hex:32")
            # what keyrotate generates is a new key: one range everywhere (crypto.keys)
            problem = (new_key_size_problem if kind != "external" else bytes_problem)(int(m.group(2)))
            if problem:
                raise ConfigError(f"{gw}: {problem}")
        fmt = (ValueFormat.parse(str(spec["format"]), f"{self.at(path, 'format')}: [secrets.{name}]")
               if "format" in spec else None)
        if fmt is not None and generate is None and fmt.can_generate:
            generate = str(fmt)  # a value that fits the format
        if fmt is not None and generate is not None and fmt.can_generate and str(fmt) != generate:
            raise ConfigError(f"{w}: generate = {generate!r} makes values that do not fit "
                              f"format = {str(fmt)!r}")
        if generate is not None and kind != "external":
            problem = new_key_size_problem(int(str(generate).partition(":")[2]))
            if problem:
                raise ConfigError(f"{w}: {'generate' if 'generate' in spec else 'format'} = "
                                  f"{generate!r}: {problem}")
        ttl = spec.get("max_token_ttl")
        if kind == "jwt-hs256" and previous and not ttl:
            raise ConfigError(f"{self.at(path, 'previous')}: [secrets.{name}]: a jwt-hs256 secret "
                              "with previous needs max_token_ttl (the longest a token lives): "
                              "--finish removes the previous secret only once that has passed, "
                              "and without it tokens signed before the rotation are refused at once")
        max_token_ttl = parse_duration(str(ttl), f"{w} max_token_ttl") if ttl else None
        return SecretSpec(
            name=name, kind=kind, workers=workers, generate=generate,
            previous=spec.get("previous"), max_token_ttl=max_token_ttl,
            format=fmt, canary=_canary_steps(spec.get("canary"), w),
            **_rollover_policy(name, spec, kind, max_token_ttl, w))

    def environments(self, table: dict[str, Any], order: tuple[str, ...]) -> dict[str, Environment]:
        return {name: self.environment(name, env, order) for name, env in table.items()}

    def environment(self, name: str, env: Any, order: tuple[str, ...]) -> Environment:
        path = ("environments", name)
        w = f"{self.at(path)}: [environments.{name}]"
        if not isinstance(env, dict):
            raise ConfigError(f"{w} must be a table")
        self.check_known(env, "environments.*", f"[environments.{name}]")
        database, store = env.get("database"), env.get("secrets")
        if not is_database_url(database):
            raise ConfigError(f"{w}: database must be a URL: {DB_URL_HELP}")
        try:
            refuse_credentials(str(database))
        except ConfigError as e:
            raise ConfigError(f"{self.at(path, 'database')}: [environments.{name}]: {e}") from None
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
            if self.credentials_in(url, f"{self.at(path, 'health')}: [environments.{name}]"):
                raise ConfigError(f"{self.at(path, 'health')}: [environments.{name}]: the health "
                                  f"URL for {worker} must not carry credentials (they would end up "
                                  "in logs, results and the audit trail; the URL is not repeated "
                                  "here): a health endpoint answers without them")
        objects = env.get("objects", {})
        if not isinstance(objects, dict) or not all(
                isinstance(u, str) and u.startswith(("http://", "https://")) for u in objects.values()):
            raise ConfigError(f"{w}: objects must be a table of DurableObjectClass = \"https://...\"")
        for cls, url in objects.items():
            if self.credentials_in(url, f"{self.at(path, 'objects')}: [environments.{name}]"):
                raise ConfigError(f"{self.at(path, 'objects')}: [environments.{name}]: the objects "
                                  f"URL for {cls} must not carry credentials (the URL is not "
                                  "repeated here): keyrotate sends the bearer token named by the "
                                  "[[encrypted]] target's token")
        key_routes = env.get("key_routes", {})
        if not isinstance(key_routes, dict):
            raise ConfigError(f"{w}: key_routes must be a table of worker = \"https://...\"")
        for worker, url in key_routes.items():
            if worker not in order:
                raise ConfigError(f"{w}: key_routes names unknown worker {worker!r}")
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ConfigError(f"{w}: the key route of {worker} must be http(s)://")
            if self.credentials_in(url, f"{self.at(path, 'key_routes')}: [environments.{name}]"):
                raise ConfigError(f"{self.at(path, 'key_routes')}: [environments.{name}]: the key "
                                  f"route of {worker} must not carry credentials (the URL is not "
                                  "repeated here): keyrotate sends the route_token secret")
        return Environment(name, str(database), str(store), dict(health), dict(objects),
                           dict(key_routes))

    def encrypted(self, value: Any, secrets: dict[str, SecretSpec],
                  environments: dict[str, Environment]) -> tuple[EncryptedTarget, ...]:
        encrypted: list[EncryptedTarget] = []
        for i, (w, t) in enumerate(self.each_table(value, "[[encrypted]]", "encrypted")):
            for key, what in ENCRYPTED_NAMES.items():
                if key in t and (not isinstance(t[key], str) or not t[key]):
                    raise ConfigError(f"{self.at(('encrypted',), key, i)}: [[encrypted]] #{i + 1}: "
                                      f"{key} must be {what}")
            secret = t.get("secret")
            if secret not in secrets:
                raise ConfigError(f"{w}: secret {secret!r} is not declared under [secrets]")
            if secrets[secret].kind != "master-key":
                raise ConfigError(f"{w}: secret {secret!r} must be of kind master-key")
            encrypted.append(_object_target(t, w, secrets, environments) if "object" in t
                             else _column_target(t, w))
        names = [t.name for t in encrypted]
        if len(set(names)) != len(names):
            raise ConfigError(f"{self.where}: an [[encrypted]] target is listed twice")
        return tuple(encrypted)

    def route_token(self, project: dict[str, Any], secrets: dict[str, SecretSpec],
                    environments: dict[str, Environment],
                    encrypted: tuple[EncryptedTarget, ...]) -> str | None:
        """The secret the keyrotate routes take as bearer token: `route_token`, else the
        token of the first Durable Object target (the same route answers both)."""
        name = project.get("route_token")
        if name is None:
            name = next((t.token for t in encrypted if isinstance(t, ObjectTarget)), None)
        elif not isinstance(name, str) or name not in secrets:
            raise ConfigError(f"{self.where}: project.route_token must name a secret declared "
                              "under [secrets] (kind = \"internal\")")
        if name is None and any(e.key_routes for e in environments.values()):
            raise ConfigError(f"{self.where}: key_routes need a bearer token: set "
                              "project.route_token = \"KEYROTATE_OBJECTS_TOKEN\" (a secret of "
                              "kind internal, pushed to those Workers)")
        return name

    def notify(self, table: dict[str, Any]) -> NotifyConfig:
        where = f"{self.path}: [notify]"
        self.check_known(table, "notify", "[notify]")
        timeout = table.get("timeout", 5)
        if not isinstance(timeout, (int, float)) or not 0 < timeout <= 60:
            raise ConfigError(f"{where}: timeout must be a number of seconds, at most 60")
        sinks = [_sink(w, sink) for w, sink in
                 self.each_table(table.get("sinks", []), "[notify] sink", "notify.sinks")]
        return NotifyConfig(tuple(sinks), float(timeout))


def _sink(w: str, sink: dict[str, Any]) -> NotifySink:
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
    return NotifySink(url, fmt, secret, tuple(events))


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


def _rollover_policy(name: str, spec: dict[str, Any], kind: str, max_token_ttl: int | None,
                     w: str) -> dict[str, Any]:
    """max_age, auto, finish_after and window: what `rollover` may do with this secret
    unattended. Refused here, before any run: a policy rollover could only follow by
    breaking the app (a cutover, a JWT finish before its tokens expire) or cannot follow
    at all (an external value, no age to go by, an overlap with no end)."""
    max_age = spec.get("max_age")
    finish = spec.get("finish_after")
    auto = spec.get("auto", False)
    if not isinstance(auto, bool):
        raise ConfigError(f"{w}: auto must be true or false")
    policy: dict[str, Any] = {
        "max_age": parse_duration(str(max_age), f"{w} max_age") if max_age else None,
        "auto": auto,
        "finish_after": parse_duration(str(finish), f"{w} finish_after") if finish else None,
        "window": Window.parse(spec["window"], f"{w} window") if "window" in spec else None}
    overlap = bool(spec.get("previous")) and kind in ("master-key", "jwt-hs256")
    if policy["finish_after"] is not None and not overlap:
        raise ConfigError(f"{w}: finish_after is how long an overlap stays open, and {kind} "
                          "without previous has none: remove finish_after (or add previous)")
    if kind == "jwt-hs256" and policy["finish_after"] is not None:
        if max_token_ttl is None:
            raise ConfigError(f"{w}: finish_after for a JWT needs max_token_ttl, so that no "
                              "finish logs out users whose tokens are still valid")
        if policy["finish_after"] < max_token_ttl:
            raise ConfigError(f"{w}: finish_after = {finish!r} is shorter than max_token_ttl = "
                              f"{spec.get('max_token_ttl')!r}: finishing then would log out users "
                              "whose tokens are still valid")
    if not auto:
        return policy
    if policy["max_age"] is None:
        raise ConfigError(f"{w}: auto = true needs max_age, the age at which rollover starts a "
                          "rotation (for example max_age = \"90d\")")
    if kind == "external":
        raise ConfigError(f"{w}: auto = true cannot apply to an external secret: its new value "
                          "comes from the provider's console. Keep auto = false (rollover reports "
                          "it due) and rotate it by hand")
    if kind in ("master-key", "jwt-hs256") and not overlap:
        raise ConfigError(f"{w}: auto = true needs previous = \"{name}_PREVIOUS\": without an "
                          f"overlap a {kind} rotation is a cutover that "
                          + ("logs every user out" if kind == "jwt-hs256" else
                             "the Workers cannot read through")
                          + ", which only a person may decide (keyrotate rotate ... --yes)")
    if overlap and policy["finish_after"] is None:
        raise ConfigError(f"{w}: auto = true needs finish_after, how long the overlap stays open "
                          "before rollover finishes it (for example finish_after = \"7d\")")
    return policy


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
