"""`rollback`: Workers back to their previous deployment, in reverse deploy order.

A rollback deploys an older version *with its secrets*. After a MASTER_KEY rotation that
would make every rewrapped row unreadable, so a rollback to a version from before a
MASTER_KEY or JWT change keyrotate pushed is refused unless forced (and `wrangler
rollback --yes` forces Cloudflare's own 10220 refusal without asking: seen with 4.86).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from keyrotate.controlplane.context import Context
from keyrotate.controlplane.events import Event, Say, last_rotation_push, push_secrets, record_events
from keyrotate.controlplane.health import Health, validate
from keyrotate.controlplane.secrets_cmd import expected_secrets, store_values
from keyrotate.errors import EXIT_FAILURES, EXIT_USAGE, DeployError
from keyrotate.timeutil import parse_utc


@dataclass
class RollbackStep:
    worker: str
    name: str
    target: str | None = None
    current: str | None = None
    target_created_on: str | None = None
    crosses: dict[str, str] | None = None   # {"secret", "pushed_at"} of the change it crosses

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


def rollback_plan(ctx: Context, only: str | None) -> list[RollbackStep]:
    """Per Worker, in reverse deploy order: the version to go back to and whether that
    would cross a MASTER_KEY / JWT change keyrotate pushed."""
    order = [ctx.manifest.worker(only)] if only else list(reversed(ctx.manifest.deploy_order))
    plan = []
    for w in order:
        step = RollbackStep(w, ctx.worker_name(w))
        deployments = ctx.wrangler.deployments(step.name)
        if deployments:
            current = deployments[0].version_id
            earlier = next((d for d in deployments[1:] if d.version_id != current), None)
            if earlier:
                step.current, step.target = current, earlier.version_id
                step.target_created_on = ctx.wrangler.version_created_on(step.name, step.target)
                change = last_rotation_push(ctx, step.name)
                created_at = parse_utc(step.target_created_on)
                changed_at = parse_utc(change[1]) if change else None
                if change and (created_at is None or changed_at is None or created_at < changed_at):
                    step.crosses = {"secret": change[0], "pushed_at": change[1]}
        plan.append(step)
    return plan


def rollback(ctx: Context, only: str | None, yes: bool, force: bool, say: Say) -> RollbackResult:
    plan = rollback_plan(ctx, only)
    crossing = [s for s in plan if s.crosses]
    if crossing and not force:
        names = ", ".join(f"{s.name} ({s.crosses['secret']} changed {s.crosses['pushed_at']})"
                          for s in crossing if s.crosses)
        raise DeployError(f"refusing to roll back across a secret rotation: {names}. The old "
                          "version would restore the old secret values (after a MASTER_KEY "
                          "rotation every rewrapped row would be unreadable). Use --force to roll "
                          "back the code and re-push the current secrets.")
    if not yes:
        return RollbackResult(ctx.env.name, False, plan)
    for step in plan:
        if step.target is None:
            say(f"{step.name}: no earlier version to roll back to")
            continue
        say(f"rolling back {step.name} to {step.target}")
        ctx.wrangler.rollback(step.name, step.target, "keyrotate rollback")
        record_events(ctx, [Event(step.name, "rollback")])
        if step.crosses:
            say(f"re-pushing current secrets to {step.name} (the old version restored old values)")
            push_secrets(ctx, step.worker, store_values(ctx, expected_secrets(ctx, step.worker),
                                                        "re-pushed"), say)
    return RollbackResult(ctx.env.name, True, plan, validate(ctx).workers)
