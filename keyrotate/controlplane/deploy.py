"""`deploy`: Workers in deploy order, each validated; a failed health check rolls back
what this run deployed, in reverse order (the runbook: failed health after a deploy means
roll back at once)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from keyrotate.cloudflare.versions import VersionsApi
from keyrotate.cloudflare.wrangler import WRANGLER_CONFIGS, wrangler_config, wrangler_for
from keyrotate.config.context import Context
from keyrotate.controlplane.health import Health, validate
from keyrotate.controlplane.held_lease import rotation_leases
from keyrotate.controlplane.rollback import crossing, roll_back_worker
from keyrotate.controlplane.serving import ask, can_ask, master_key_of
from keyrotate.errors import EXIT_FAILURES, ConfigError
from keyrotate.evidence.worker_log import record_version
from keyrotate.progress import Say


@dataclass(frozen=True)
class DeployStep:
    worker: str
    name: str
    dir: str
    health: str | None


@dataclass(frozen=True)
class DeployResult:
    env: str
    dry_run: bool
    steps: list[DeployStep] = field(default_factory=list)   # the plan (dry run)
    deployed: list[str] = field(default_factory=list)
    health: list[Health] = field(default_factory=list)
    failed_at: str | None = None
    rolled_back: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed_at is None

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else EXIT_FAILURES

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"env": self.env, "dry_run": self.dry_run}
        if self.dry_run:
            return {**out, "steps": [s.__dict__ for s in self.steps]}
        out.update(ok=self.ok, health=[h.as_dict() for h in self.health])
        if self.ok:
            return {**out, "deployed": self.deployed}
        return {**out, "failed_at": self.failed_at, "rolled_back": self.rolled_back}

    def text(self) -> str:
        if self.dry_run:
            return "\n".join(["plan (dry run, nothing deployed):"] + [
                f"  {i + 1}. {s.name} from {s.dir}" + (f", then health {s.health}" if s.health else "")
                for i, s in enumerate(self.steps)])
        if self.ok:
            return f"deployed {', '.join(self.deployed)}; all healthy"
        return (f"health check failed after deploying {self.failed_at}; rolled back "
                f"{', '.join(self.rolled_back) or 'nothing'}")


def deploy(ctx: Context, only: str | None, dry_run: bool, say: Say) -> DeployResult:
    order = [ctx.manifest.worker(only)] if only else list(ctx.manifest.deploy_order)
    check_worker_folders(ctx, order)
    if dry_run:
        return DeployResult(ctx.env.name, True, [
            DeployStep(w, ctx.worker_name(w), str(ctx.manifest.worker_dir(w)), ctx.env.health.get(w))
            for w in order])
    with rotation_leases(ctx, order):   # never beside a running rotation's pushes or canary
        return _deploy(ctx, order, say)


def _deploy(ctx: Context, order: list[str], say: Say) -> DeployResult:
    wrangler = wrangler_for(ctx)
    done: list[tuple[str, str | None]] = []
    for w in order:
        full = ctx.worker_name(w)
        before = wrangler.state(full)
        keys_before = _serving_keys(ctx, w, before.serving)
        say(f"deploying {full}")
        wrangler.deploy(ctx.manifest.worker_dir(w), ctx.env.name)
        after = wrangler.state(full)
        done.append((w, before.deployed or (before.traffic[0][0] if before.traffic else None)))
        record_version(ctx, full, "deploy", after.deployed)
        health = validate(ctx, [w])
        keys_after = _serving_keys(ctx, w, after.serving)
        changed = keys_before and keys_after != keys_before
        if changed or not health.ok:
            why = (f"{full} answers other keys after the deploy ({sorted(keys_after)} instead of "
                   f"{sorted(keys_before)}: it inherited the secrets of a version that is not the "
                   "one that served)" if changed else f"health check failed after deploying {w}")
            say(f"{why}: rolling back this run, in reverse")
            rolled = _roll_back_to(ctx, list(reversed(done)), say)
            return DeployResult(ctx.env.name, False, deployed=[d for d, _ in done],
                                health=health.workers, failed_at=w, rolled_back=rolled)
    return DeployResult(ctx.env.name, False, deployed=[w for w, _ in done],
                        health=validate(ctx).workers)


def _serving_keys(ctx: Context, worker: str, versions: list[str]) -> set[tuple[str, str | None]]:
    """The (kid, previous kid) pairs the serving versions answer (empty: cannot ask)."""
    if master_key_of(ctx, worker) is None or not can_ask(ctx, worker):
        return set()
    return {(k.kid, k.previous_kid) for k in ask(ctx, worker, versions).values()}


def check_worker_folders(ctx: Context, workers: list[str]) -> None:
    """Every Worker to deploy has its folder and a wrangler configuration, checked for all
    of them before the first deploy (and in the dry run): exit 2 naming each one missing,
    never a deploy that stops halfway at the first."""
    missing = []
    for w in workers:
        folder = ctx.manifest.worker_dir(w)
        if not folder.is_dir():
            missing.append(f"{w}: no folder {folder}")
        elif wrangler_config(folder) is None:
            missing.append(f"{w}: no {' / '.join(WRANGLER_CONFIGS)} in {folder}")
    if missing:
        raise ConfigError(f"cannot deploy: {'; '.join(missing)} (workers_dir = "
                          f"{ctx.manifest.workers_dir!r} in {ctx.manifest.path})")


def _roll_back_to(ctx: Context, targets: list[tuple[str, str | None]], say: Say) -> list[str]:
    """Back to the versions before this run; where a secret changed since one was made,
    its code comes back with the secrets serving now (never the old values)."""
    rolled = []
    api = VersionsApi()
    try:
        for w, version in targets:
            full = ctx.worker_name(w)
            if version is None:
                say(f"{full} had no earlier version: left as it is")
                continue
            number = wrangler_for(ctx).state(full).number(version)
            roll_back_worker(ctx, api, w, version, crossing(ctx, full, number) is not None,
                             "keyrotate: failed check after deploy", say)
            rolled.append(w)
    finally:
        api.close()
    return rolled
