"""`secrets list` (names per Worker against the manifest: drift) and `secrets push`
(values from the environment's store to the Workers that hold them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from keyrotate.cloudflare.wrangler import wrangler_for
from keyrotate.config.context import Context
from keyrotate.controlplane.held_lease import rotation_leases
from keyrotate.controlplane.pushes import Pusher
from keyrotate.controlplane.serving import check_serving
from keyrotate.db.own_schema import open_rotations
from keyrotate.errors import EXIT_FAILURES, ConfigError, Incomplete
from keyrotate.evidence.record import audit_key
from keyrotate.progress import Say
from keyrotate.secrets.base import fingerprint
from keyrotate.targets.secret_targets import rows_per_slot


@dataclass(frozen=True)
class WorkerSecrets:
    worker: str
    name: str
    expected: list[str]
    present: list[str]

    @property
    def missing(self) -> list[str]:
        return sorted(set(self.expected) - set(self.present))

    @property
    def extra(self) -> list[str]:
        return sorted(set(self.present) - set(self.expected))

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "missing": self.missing, "extra": self.extra}


@dataclass(frozen=True)
class SecretsListResult:
    env: str
    workers: list[WorkerSecrets]

    @property
    def drift(self) -> bool:
        return any(w.missing or w.extra for w in self.workers)

    @property
    def missing(self) -> bool:
        return any(w.missing for w in self.workers)

    @property
    def exit_code(self) -> int:
        return EXIT_FAILURES if self.missing else 0

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.env, "workers": [w.as_dict() for w in self.workers],
                "drift": self.drift, "missing": self.missing}

    def text(self) -> str:
        lines = [f"secrets on {self.env} Workers"
                 + (" (drift)" if self.drift else " (as the manifest says)")]
        for w in self.workers:
            state = ", ".join(filter(None, [
                "missing " + " ".join(w.missing) if w.missing else "",
                "extra " + " ".join(w.extra) if w.extra else ""])) or "ok"
            lines.append(f"  {w.name:<32} {len(w.present)} secrets  {state}")
        return "\n".join(lines)


def expected_secrets(ctx: Context, worker: str) -> list[str]:
    return sorted(name for name, s in ctx.manifest.secrets.items() if worker in s.workers)


def secrets_list(ctx: Context) -> SecretsListResult:
    return SecretsListResult(ctx.env.name, [
        WorkerSecrets(w, ctx.worker_name(w), expected_secrets(ctx, w),
                      wrangler_for(ctx).secret_names(ctx.worker_name(w)))
        for w in ctx.manifest.deploy_order])


@dataclass(frozen=True)
class PushStep:
    worker: str
    name: str
    secrets: dict[str, str]   # name -> fingerprint


@dataclass(frozen=True)
class PushResult:
    env: str
    dry_run: bool
    steps: list[PushStep] = field(default_factory=list)
    exit_code: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.env, "dry_run": self.dry_run, "steps": [asdict(s) for s in self.steps]}

    def text(self) -> str:
        head = "plan (dry run, nothing pushed):" if self.dry_run else "pushed:"
        return "\n".join([head] + [f"  {s.name:<32} " + " ".join(f"{n}={fp}" for n, fp in s.secrets.items())
                                   for s in self.steps])


def store_values(ctx: Context, names: list[str], doing: str) -> dict[str, str]:
    """Every value read from the store before anything is pushed."""
    values: dict[str, str] = {}
    for name in names:
        value = ctx.secrets.read(name)
        if value is None:
            raise ConfigError(f"{name} has no value in {ctx.secrets.ref(name)}: nothing was {doing}")
        values[name] = value
    return values


def _pushed_names(ctx: Context, only: str | None) -> list[str]:
    return [ctx.manifest.secret(only).name] if only else list(ctx.manifest.secrets)


def push_plan(ctx: Context, only: str | None) -> list[tuple[str, dict[str, str]]]:
    """(worker, {secret: value}) in deploy order."""
    names = _pushed_names(ctx, only)
    values = store_values(ctx, names, "pushed")
    plan = []
    for w in ctx.manifest.deploy_order:
        mine = {n: values[n] for n in names if w in ctx.manifest.secrets[n].workers}
        if mine:
            plan.append((w, mine))
    return plan


def check_pushable(ctx: Context, names: list[str]) -> None:
    """A push of the store's values must not undo a rotation, nor leave rows under a key no
    Worker reads: refused (exit 2, nothing pushed) while a rotation of the secret is open,
    and, for a master key, while a census finds rows or objects under any other key than
    the one about to be pushed."""
    open_ones = {s: (r, state) for s, r, state in open_rotations(ctx.db, ctx.env.name)}
    busy = [f"{n} (rotation {open_ones[n][0]}, {open_ones[n][1]})" for n in names if n in open_ones]
    if busy:
        raise ConfigError(f"nothing was pushed: a rotation is open for {', '.join(busy)}; it decides "
                          "what the Workers hold until it ends (keyrotate rotate ... --finish or "
                          "--abort)")
    for name in names:
        if ctx.manifest.secret(name).kind != "master-key" or not ctx.manifest.targets_of(name):
            continue
        errors: list[str] = []
        rows = rows_per_slot(ctx, name, errors)
        if errors:
            raise Incomplete(f"nothing was pushed: the rows of {name} could not all be counted "
                             f"({'; '.join(errors)}), so what pushing {ctx.secrets.ref(name)} alone "
                             "would leave unreadable is not known: run the same command again")
        lost = {t: c["other"] for t, c in rows.items() if c.get("other")}
        if lost:
            # rows no value in the store opens: the Workers may hold the key they are under
            # (a store edited by hand, a wrong copy), and pushing would drop it from them
            raise ConfigError(
                f"nothing was pushed: "
                f"{', '.join(f'{n} rows or objects of {t}' for t, n in sorted(lost.items()))} "
                f"open under no value of {name} in {ctx.secrets.base}. If the Workers hold the "
                "key they are under, pushing would leave them unreadable: put that key back in "
                "the store (keyrotate verify lists the rows). If no key ever opens them, they "
                "are damaged: repair or delete them first.")
        others = sorted({slot for c in rows.values() for slot in ("pending", "previous")
                         if c.get(slot)})
        if others:
            raise ConfigError(f"nothing was pushed: rows or objects of {name} open under the "
                              f"{' and '.join(others)} value in {ctx.secrets.base}, which pushing "
                              f"{ctx.secrets.ref(name)} alone would leave unreadable. Move them "
                              "first (keyrotate status shows where; keyrotate rotate finishes a "
                              "rotation).")


def secrets_push(ctx: Context, only: str | None, dry_run: bool, say: Say,
                 from_deployed: bool = False) -> PushResult:
    if dry_run:
        return _push(ctx, push_plan(ctx, only), dry_run, say, from_deployed)
    # never beside a running rotation, and the store's values read once its leases are held:
    # values read before could be a rotation's, replaced (promoted) while we waited
    workers = {w for n in _pushed_names(ctx, only) for w in ctx.manifest.workers_holding(n)}
    with rotation_leases(ctx, workers):
        return _push(ctx, push_plan(ctx, only), dry_run, say, from_deployed)


def _push(ctx: Context, plan: list[tuple[str, dict[str, str]]], dry_run: bool, say: Say,
          from_deployed: bool) -> PushResult:
    check_pushable(ctx, sorted({n for _, vals in plan for n in vals}))
    steps = [PushStep(w, ctx.worker_name(w), {n: fingerprint(v, audit_key(ctx))
                                              for n, v in sorted(vals.items())})
             for w, vals in plan]
    pusher = Pusher(ctx, say, from_deployed)
    try:
        pusher.check([w for w, _ in plan])  # every Worker, before the first push
        if not dry_run:
            for worker, vals in plan:  # one Worker at a time: each push deploys a new version
                pusher.push(worker, dict(vals))
    finally:
        pusher.close()
    if not dry_run:
        check_serving(ctx, [w for w, _ in plan])
    return PushResult(ctx.env.name, dry_run, steps)
