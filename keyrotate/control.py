"""Control-plane operations on an environment: secrets list/push, validate, deploy,
rollback. Each returns a plain dict (rendered as text or --json by the CLI).

Runbook rules kept here: Workers are deployed in deploy order and rolled back in reverse;
secrets go to one Worker at a time (concurrent puts to one Worker time out); a failed
health check after a deploy rolls back what this run deployed; a rollback to a version
from before a MASTER_KEY or JWT change is refused unless forced, because it would
restore the old secret values (and `wrangler rollback --yes` forces through Cloudflare's
own 10220 refusal without asking: seen with wrangler 4.86).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from keyrotate.cloudflare.health import check
from keyrotate.cloudflare.wrangler import Wrangler
from keyrotate.engine.migrations import ensure_journal_schema
from keyrotate.errors import ConfigError, DeployError
from keyrotate.manifest import Environment, Manifest, find_manifest, load_manifest
from keyrotate.secrets.base import SecretStore, fingerprint
from keyrotate.secrets.stores import open_secret_store
from keyrotate.store import open_store
from keyrotate.store.base import RowStore, Statement
from keyrotate.timeutil import now_iso, parse_utc

Say = Callable[[str], None]
ROTATION_KINDS = ("master-key", "jwt-hs256")


@dataclass
class Context:
    manifest: Manifest
    env: Environment
    wrangler: Wrangler

    @classmethod
    def load(cls, env_name: str, manifest_path: str | None = None) -> "Context":
        m = load_manifest(find_manifest(explicit=manifest_path))
        return cls(m, m.env(env_name), Wrangler(m.wrangler, m.root))

    def database_url(self) -> str:
        """file: paths in the manifest are relative to the manifest's folder."""
        url = self.env.database
        if url.startswith("file:") and not url.startswith("file:/"):
            return "file:" + str(self.manifest.root / url[len("file:"):])
        return url

    def secret_store(self) -> SecretStore:
        base = self.env.secrets
        if base.startswith("dotenv:") and not base.startswith("dotenv:/"):
            base = "dotenv:" + str(self.manifest.root / base[len("dotenv:"):])
        return open_secret_store(base)

    def full(self, worker: str) -> str:
        return self.manifest.full_name(worker, self.env.name)

    def open_db(self) -> RowStore:
        return open_store(self.database_url())


def expected_secrets(m: Manifest, worker: str) -> list[str]:
    return sorted(name for name, s in m.secrets.items() if worker in s.workers)


# --- events: what keyrotate pushed, when -------------------------------------------------

def record_events(ctx: Context, rows: list[dict[str, Any]]) -> None:
    store = ctx.open_db()
    try:
        ensure_journal_schema(store)
        store.apply([], None, [Statement(
            "INSERT INTO keyrotate_events (environment, worker, kind, secret, secret_kind, "
            "fingerprint, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (ctx.env.name, r["worker"], r["kind"], r.get("secret"), r.get("secret_kind"),
             r.get("fingerprint"), r.get("at") or now_iso())) for r in rows])
    finally:
        store.close()


def last_rotation_push(ctx: Context, worker_full: str) -> tuple[str, str] | None:
    """(secret, at) of the latest push that *changed* a MASTER_KEY / JWT kind value on this
    Worker: re-pushing the same value (same fingerprint) is no change to roll back across.
    The first recorded push of a secret counts as a change (what was there before is unknown)."""
    store = ctx.open_db()
    try:
        ensure_journal_schema(store)
        rows = store.query(
            "SELECT secret, fingerprint, at FROM keyrotate_events WHERE environment = ? AND "
            "worker = ? AND kind = 'secret-push' AND secret_kind IN (?, ?) ORDER BY at, id",
            (ctx.env.name, worker_full, *ROTATION_KINDS))
    finally:
        store.close()
    seen: dict[str, str] = {}
    change: tuple[str, str] | None = None
    for secret, fp, at in rows:
        if seen.get(str(secret)) != fp:
            change = (str(secret), str(at))
        seen[str(secret)] = fp
    return change


# --- secrets --------------------------------------------------------------------------------

def secrets_list(ctx: Context) -> dict[str, Any]:
    workers = []
    for w in ctx.manifest.deploy_order:
        expected = expected_secrets(ctx.manifest, w)
        present = ctx.wrangler.secret_names(ctx.full(w))
        workers.append({"worker": w, "name": ctx.full(w), "expected": expected, "present": present,
                        "missing": sorted(set(expected) - set(present)),
                        "extra": sorted(set(present) - set(expected))})
    return {"env": ctx.env.name, "workers": workers,
            "drift": any(w["missing"] or w["extra"] for w in workers),
            "missing": any(w["missing"] for w in workers)}


def push_plan(ctx: Context, only: str | None) -> list[tuple[str, str, dict[str, str]]]:
    """(worker, full name, {secret: value}) in deploy order; every value read before any push."""
    names = [ctx.manifest.secret(only).name] if only else list(ctx.manifest.secrets)
    store = ctx.secret_store()
    values: dict[str, str] = {}
    for name in names:
        value = store.read(name)
        if value is None:
            raise ConfigError(f"{name} has no value in {store.ref(name)}: nothing was pushed")
        values[name] = value
    plan = []
    for w in ctx.manifest.deploy_order:
        mine = {n: values[n] for n in names if w in ctx.manifest.secrets[n].workers}
        if mine:
            plan.append((w, ctx.full(w), mine))
    return plan


def secrets_push(ctx: Context, only: str | None, dry_run: bool, say: Say) -> dict[str, Any]:
    plan = push_plan(ctx, only)
    steps = [{"worker": w, "name": full,
              "secrets": {n: fingerprint(v) for n, v in sorted(vals.items())}} for w, full, vals in plan]
    if dry_run:
        return {"env": ctx.env.name, "dry_run": True, "steps": steps}
    for _worker, full, vals in plan:  # one Worker at a time: each push deploys a new version
        say(f"pushing {', '.join(sorted(vals))} to {full}")
        at = now_iso()  # before the push: the version it creates is newer than this
        if len(vals) == 1:
            (name, value), = vals.items()
            ctx.wrangler.secret_put(full, name, value)
        else:
            ctx.wrangler.secret_bulk(full, vals)
        record_events(ctx, [{"worker": full, "kind": "secret-push", "secret": n, "at": at,
                             "secret_kind": ctx.manifest.secrets[n].kind,
                             "fingerprint": fingerprint(v)} for n, v in vals.items()])
    return {"env": ctx.env.name, "dry_run": False, "steps": steps}


# --- health, deploy, rollback -------------------------------------------------------------

def validate(ctx: Context, workers: list[str] | None = None) -> dict[str, Any]:
    results = [check(w, url).as_dict() for w, url in ctx.env.health.items()
               if workers is None or w in workers]
    return {"env": ctx.env.name, "workers": results, "ok": all(r["ok"] for r in results)}


def _active_version(ctx: Context, full: str) -> str | None:
    deployments = ctx.wrangler.deployments(full)
    if not deployments:
        return None
    newest = max(deployments, key=lambda d: d.get("created_on", ""))
    return newest["versions"][0]["version_id"]


def deploy(ctx: Context, only: str | None, dry_run: bool, say: Say) -> dict[str, Any]:
    order = [ctx.manifest.worker(only)] if only else list(ctx.manifest.deploy_order)
    if dry_run:
        return {"env": ctx.env.name, "dry_run": True,
                "steps": [{"worker": w, "name": ctx.full(w), "dir": str(ctx.manifest.worker_dir(w)),
                           "health": ctx.env.health.get(w)} for w in order]}
    done: list[tuple[str, str | None]] = []
    for w in order:
        before = _active_version(ctx, ctx.full(w))
        say(f"deploying {ctx.full(w)}")
        ctx.wrangler.deploy(ctx.manifest.worker_dir(w), ctx.env.name)
        done.append((w, before))
        record_events(ctx, [{"worker": ctx.full(w), "kind": "deploy"}])
        health = validate(ctx, [w])
        if not health["ok"]:
            say(f"health check failed after deploying {w}: rolling back this run, in reverse")
            rolled = _roll_back_to(ctx, list(reversed(done)), say)
            return {"env": ctx.env.name, "dry_run": False, "ok": False, "failed_at": w,
                    "health": health["workers"], "rolled_back": rolled}
    return {"env": ctx.env.name, "dry_run": False, "ok": True, "deployed": [w for w, _ in done],
            "health": validate(ctx)["workers"]}


def _roll_back_to(ctx: Context, targets: list[tuple[str, str | None]], say: Say) -> list[str]:
    rolled = []
    for w, version in targets:
        if version is None:
            say(f"{ctx.full(w)} had no earlier version: left as it is")
            continue
        ctx.wrangler.rollback(ctx.full(w), version, "keyrotate: failed health check after deploy")
        record_events(ctx, [{"worker": ctx.full(w), "kind": "rollback"}])
        rolled.append(w)
    return rolled


def rollback_plan(ctx: Context, only: str | None) -> list[dict[str, Any]]:
    """Per Worker, in reverse deploy order: the version to go back to and whether that
    would cross a MASTER_KEY / JWT change keyrotate pushed."""
    order = [ctx.manifest.worker(only)] if only else list(reversed(ctx.manifest.deploy_order))
    plan = []
    for w in order:
        full = ctx.full(w)
        deployments = sorted(ctx.wrangler.deployments(full), key=lambda d: d.get("created_on", ""),
                             reverse=True)
        step: dict[str, Any] = {"worker": w, "name": full, "target": None, "crosses": None}
        if len(deployments) >= 2:
            current = deployments[0]["versions"][0]["version_id"]
            earlier = next((d for d in deployments[1:]
                            if d["versions"][0]["version_id"] != current), None)
            if earlier:
                target = earlier["versions"][0]["version_id"]
                created = next((v.get("metadata", {}).get("created_on") for v in
                                ctx.wrangler.versions(full) if v.get("id") == target), None)
                step.update(current=current, target=target, target_created_on=created)
                change = last_rotation_push(ctx, full)
                created_at, changed_at = parse_utc(created), parse_utc(change[1]) if change else None
                if change and (created_at is None or changed_at is None or created_at < changed_at):
                    step["crosses"] = {"secret": change[0], "pushed_at": change[1]}
        plan.append(step)
    return plan


def rollback(ctx: Context, only: str | None, yes: bool, force: bool, say: Say) -> dict[str, Any]:
    plan = rollback_plan(ctx, only)
    crossing = [s for s in plan if s["crosses"]]
    if crossing and not force:
        names = ", ".join(f"{s['name']} ({s['crosses']['secret']} changed {s['crosses']['pushed_at']})"
                          for s in crossing)
        raise DeployError(f"refusing to roll back across a secret rotation: {names}. The old "
                          "version would restore the old secret values (after a MASTER_KEY "
                          "rotation every rewrapped row would be unreadable). Use --force to roll "
                          "back the code and re-push the current secrets.")
    if not yes:
        return {"env": ctx.env.name, "done": False, "plan": plan,
                "note": "nothing rolled back: re-run with --yes"}
    for step in plan:
        if step["target"] is None:
            say(f"{step['name']}: no earlier version to roll back to")
            continue
        say(f"rolling back {step['name']} to {step['target']}")
        ctx.wrangler.rollback(step["name"], step["target"], "keyrotate rollback")
        record_events(ctx, [{"worker": step["name"], "kind": "rollback"}])
        if step["crosses"]:
            say(f"re-pushing current secrets to {step['name']} (the old version restored old values)")
            _repush(ctx, step["worker"], say)
    health = validate(ctx)
    return {"env": ctx.env.name, "done": True, "plan": plan, "health": health["workers"],
            "ok": health["ok"]}


def _repush(ctx: Context, worker: str, say: Say) -> None:
    store = ctx.secret_store()
    values = {n: store.read(n) for n in expected_secrets(ctx.manifest, worker)}
    missing = [n for n, v in values.items() if v is None]
    if missing:
        raise DeployError(f"cannot re-push {', '.join(missing)} to {ctx.full(worker)}: no value in "
                          f"{ctx.env.secrets}")
    at = now_iso()
    ctx.wrangler.secret_bulk(ctx.full(worker), values)  # type: ignore[arg-type]
    record_events(ctx, [{"worker": ctx.full(worker), "kind": "secret-push", "secret": n, "at": at,
                         "secret_kind": ctx.manifest.secrets[n].kind,
                         "fingerprint": fingerprint(v)} for n, v in values.items() if v])


def write_init(path: Path, force: bool = False) -> Path:
    from keyrotate.init_template import TEMPLATE

    if path.exists() and not force:
        raise ConfigError(f"{path} exists; refusing to overwrite it (use --force)")
    path.write_text(TEMPLATE)
    return path


# --- D1 migrations ---------------------------------------------------------------------

def migrations_folder(ctx: Context) -> Path:
    return ctx.manifest.root / ctx.manifest.migrations_dir


def migrations_list(ctx: Context) -> dict[str, Any]:
    from keyrotate.migrate import applied, discover

    files = discover(migrations_folder(ctx))
    store = ctx.open_db()
    try:
        done = applied(store)
    finally:
        store.close()
    return {"env": ctx.env.name, "migrations": [{"name": m.name, "applied": m.name in done}
                                                for m in files],
            "pending": [m.name for m in files if m.name not in done],
            "unknown_applied": [n for n in done if n not in {m.name for m in files}]}


STAGING = "staging"


def migrations_apply(ctx: Context, dry_run: bool, force: bool, say: Say) -> dict[str, Any]:
    """Apply pending migrations in order, each with its d1_migrations row in one batch.
    Outside staging, a migration staging has not applied is refused unless --force."""
    from keyrotate.migrate import apply_one, applied, discover, pending

    files = discover(migrations_folder(ctx))
    store = ctx.open_db()
    try:
        todo = pending(store, files)
        if ctx.env.name != STAGING and STAGING in ctx.manifest.environments and todo:
            staging = Context(ctx.manifest, ctx.manifest.env(STAGING), ctx.wrangler)
            staging_store = staging.open_db()
            try:
                on_staging = set(applied(staging_store))
            finally:
                staging_store.close()
            untested = [m.name for m in todo if m.name not in on_staging]
            if untested and not force:
                raise ConfigError(f"{', '.join(untested)} not applied to staging yet: apply and "
                                  f"check it there first (or --force)")
        if dry_run:
            return {"env": ctx.env.name, "dry_run": True, "would_apply": [m.name for m in todo]}
        for m in todo:
            say(f"applying {m.name} to {ctx.env.name}")
            apply_one(store, m)
    finally:
        store.close()
    return {"env": ctx.env.name, "dry_run": False, "applied": [m.name for m in todo]}
