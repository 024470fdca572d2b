"""`rollback`: Workers back to their previous deployment, in reverse deploy order.

A rollback deploys an older version *with its secrets*. After a MASTER_KEY rotation that
makes every rewrapped row unreadable, and after a `--finish` it puts the retired key back
on the Workers. So the guard compares, from keyrotate's own events, the secrets (by
fingerprint) the target version holds with those serving now: any MASTER_KEY or JWT
kind secret that differs (a value, or a PREVIOUS added or removed), or a push never
confirmed since, makes the rollback one that crosses a rotation. That is refused unless
`--force` (and `wrangler rollback --yes` forces Cloudflare's own 10220 refusal without
asking: seen with 4.86).

`--force` never lets the old values serve: it makes one new version from the target's
code and bindings with the secrets serving now (values from the store, matched by
fingerprint), and deploys it at 100% in one step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from keyrotate.cloudflare.versions import VersionsApi
from keyrotate.cloudflare.wrangler import wrangler_for
from keyrotate.config.context import Context
from keyrotate.config.manifest import KINDS
from keyrotate.controlplane.health import Health, validate
from keyrotate.controlplane.pushes import changes
from keyrotate.errors import EXIT_FAILURES, EXIT_USAGE, DeployError, KeyrotateError
from keyrotate.evidence.record import audit_key
from keyrotate.evidence.worker_log import confirm, intend, record_version, secret_history
from keyrotate.progress import Say
from keyrotate.secrets.base import SLOTS, same_secret
from keyrotate.timeutil import parse_utc


@dataclass
class RollbackStep:
    worker: str
    name: str
    target: str | None = None
    current: str | None = None
    target_created_on: str | None = None
    crosses: dict[str, Any] | None = None   # {"secrets": [...], "unconfirmed": [...]}

    def crossing_text(self) -> str:
        """What going back to the target would undo, in words ('' when nothing)."""
        c = self.crosses or {}
        parts = []
        if c.get("secrets"):
            parts.append(f"{', '.join(c['secrets'])} changed since that version")
        if c.get("unconfirmed"):
            parts.append(f"a push of {', '.join(c['unconfirmed'])} was never confirmed")
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"worker": self.worker, "name": self.name, "target": self.target,
                               "crosses": self.crosses}
        if self.target:
            out.update(current=self.current, target_created_on=self.target_created_on)
        return out


@dataclass(frozen=True)
class RollbackResult:
    env: str
    done: bool
    plan: list[RollbackStep]
    health: list[Health] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(h.ok for h in self.health)

    @property
    def exit_code(self) -> int:
        if not self.done:
            return EXIT_USAGE   # only a plan: nothing was rolled back
        return 0 if self.ok else EXIT_FAILURES

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"env": self.env, "done": self.done,
                               "plan": [s.as_dict() for s in self.plan]}
        if not self.done:
            return {**out, "note": "nothing rolled back: re-run with --yes"}
        return {**out, "health": [h.as_dict() for h in self.health], "ok": self.ok}

    def text(self) -> str:
        lines = ["rolled back:" if self.done else "plan (nothing rolled back; add --yes):"]
        for s in self.plan:
            cross = f"  CROSSES A ROTATION: {s.crossing_text()} (needs --force)" if s.crosses else ""
            lines.append(f"  {s.name:<32} -> {s.target or 'no earlier version'}{cross}")
        if self.done:
            lines.append("health: " + ("ok" if self.ok else "FAILED"))
        return "\n".join(lines)


def crossing(ctx: Context, full: str, target_created_on: str | None) -> dict[str, Any] | None:
    """What a rollback to a version made at `target_created_on` would change of the
    MASTER_KEY / JWT kind secrets keyrotate put on this Worker (None: nothing)."""
    history = secret_history(ctx, full)
    created = parse_utc(target_created_on)
    if created is None:
        return {"secrets": sorted({e[0] for e in history.events}), "unconfirmed": []} \
            if history.events else None
    then, now = history.state_before(created), history.state_before(None)
    changed = sorted(n for n in set(then) | set(now) if then.get(n) != now.get(n))
    unconfirmed = history.unconfirmed_after(created)
    return {"secrets": changed, "unconfirmed": unconfirmed} if changed or unconfirmed else None


def rollback_plan(ctx: Context, only: str | None) -> list[RollbackStep]:
    """Per Worker, in reverse deploy order: the version to go back to and whether that
    would cross a MASTER_KEY / JWT change keyrotate pushed."""
    order = [ctx.manifest.worker(only)] if only else list(reversed(ctx.manifest.deploy_order))
    plan = []
    for w in order:
        step = RollbackStep(w, ctx.worker_name(w))
        deployments = wrangler_for(ctx).deployments(step.name)
        if deployments:
            current = deployments[0].version_id
            earlier = next((d for d in deployments[1:] if d.version_id != current), None)
            if earlier:
                step.current, step.target = current, earlier.version_id
                step.target_created_on = wrangler_for(ctx).version_created_on(step.name, step.target)
                step.crosses = crossing(ctx, step.name, step.target_created_on)
        plan.append(step)
    return plan


def rollback(ctx: Context, only: str | None, yes: bool, force: bool, say: Say) -> RollbackResult:
    plan = rollback_plan(ctx, only)
    if not yes:
        return RollbackResult(ctx.env.name, False, plan)
    crossing_steps = [s for s in plan if s.crosses]
    if crossing_steps and not force:
        crossed = "; ".join(f"{s.name} ({s.crossing_text()})" for s in crossing_steps)
        raise DeployError(f"refusing to roll back across a secret rotation: {crossed}. The older "
                          "version would serve the old secret values (after a MASTER_KEY rotation "
                          "every rewrapped row would be unreadable; after --finish the retired key "
                          "would be live again). --force rolls back the code with the secrets "
                          "serving now, as one new version.")
    for step in plan:
        if step.target is None:
            say(f"{step.name}: no earlier version to roll back to")
            continue
        roll_back_worker(ctx, step.worker, step.target, bool(step.crosses), "keyrotate rollback", say)
    return RollbackResult(ctx.env.name, True, plan, validate(ctx).workers)


def roll_back_worker(ctx: Context, worker: str, target: str, keep_secrets: bool, message: str,
                     say: Say) -> None:
    """Back to `target`'s code: with `wrangler rollback` when its secrets are the ones
    serving now, else as one new version with the secrets serving now."""
    full = ctx.worker_name(worker)
    if not keep_secrets:
        say(f"rolling back {full} to {target}")
        wrangler_for(ctx).rollback(full, target, message)
        record_version(ctx, full, "rollback", target)
        return
    say(f"rolling back {full} to {target}'s code, keeping the secrets serving now")
    values = live_values(ctx, full)
    current = wrangler_for(ctx).state(full).traffic[0][0]
    at = intend(ctx, full, changes(ctx, values))
    api = VersionsApi()
    try:
        version = api.copy(full, target, current, values, f"{message}: code of {target}, secrets of now")
        wrangler_for(ctx).versions_deploy(full, [(version, 100.0)], message)
    except KeyrotateError:
        confirm(ctx, full, at, "failed")
        raise
    finally:
        api.close()
    confirm(ctx, full, at, "done", version)
    record_version(ctx, full, "rollback", version)


def live_values(ctx: Context, full: str) -> dict[str, str | None]:
    """The values of the secrets keyrotate put on this Worker, as they serve now: each
    found in the store by its fingerprint (the Workers never give a secret back)."""
    now = secret_history(ctx, full, KINDS).state_before(None)
    values: dict[str, str | None] = {}
    for name, fp in now.items():
        if fp is None:
            values[name] = None
            continue
        value = _value_with(ctx, name, fp)
        if value is None:
            raise DeployError(f"cannot keep {name} on {full}: the value serving now ({fp}) is no "
                              f"longer in {ctx.env.secrets}; nothing was rolled back")
        values[name] = value
    return values


def _value_with(ctx: Context, name: str, fp: str) -> str | None:
    owners = [name] if name in ctx.manifest.secrets else [
        s.name for s in ctx.manifest.secrets.values() if s.previous == name]
    for owner in owners:
        for slot in SLOTS:
            value = ctx.secrets.read(owner, slot)
            if value is not None and same_secret(value, fp, audit_key(ctx)):
                return value
    return None
