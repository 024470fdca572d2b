"""`rollback`: Workers back to their previous deployment, in reverse deploy order.

A rollback deploys an older version *with its secrets*. After a MASTER_KEY rotation that
can make every rewrapped row unreadable, and after a `--finish` it puts the retired key
back on the Workers. So before any traffic moves, each target version is judged:

- where the Worker has a key route (and holds a master key), by asking the target itself:
  it is deployed at 0% beside the serving version (the only way a version override can
  reach it), asked which keys it holds, and taken out again. It may serve only if its two
  keys open every row and object (a census of the store's keys in use);
- otherwise by keyrotate's records: the MASTER_KEY / JWT kind secrets the target version
  holds, from the pushes that made it or a version before it (by Cloudflare's version
  numbers, never a clock), against those serving now; a push never confirmed since counts
  as applied. Any difference makes the rollback one that crosses a rotation.

Either way a rollback that would break the invariant is refused (exit 2, nothing moved),
unless `--force`, which never lets the old values serve: it makes one new version from
the target's code and bindings with every secret of the version serving now (inherited
by Cloudflare from that version, whatever was pushed to it), checks it at 0% where it can
ask, and deploys it at 100%. (`wrangler rollback --yes` forces Cloudflare's own 10220
refusal without asking: seen with 4.86.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from keyrotate.cloudflare.versions import VersionsApi
from keyrotate.cloudflare.wrangler import wrangler_for
from keyrotate.config.context import Context
from keyrotate.controlplane.health import Health, validate
from keyrotate.controlplane.held_lease import rotation_leases
from keyrotate.controlplane.serving import (
    VersionKeys,
    ask,
    can_ask,
    check_serving,
    keys_in_use,
    master_key_of,
    store_kids,
)
from keyrotate.errors import EXIT_FAILURES, EXIT_USAGE, ConfigError, DeployError
from keyrotate.evidence.worker_log import record_version, secret_history
from keyrotate.progress import Say


@dataclass
class RollbackStep:
    worker: str
    name: str
    target: str | None = None
    current: str | None = None
    target_number: int | None = None
    crosses: dict[str, Any] | None = None   # {"secrets": [...], "unconfirmed": [...]}
    asked: VersionKeys | None = None         # the target's keys, as it answered at 0%
    not_checked: str | None = None           # why the plan could not look at this Worker

    def crossing_text(self) -> str:
        """What going back to the target would undo, in words ('' when nothing)."""
        c = self.crosses or {}
        parts = []
        if c.get("secrets"):
            parts.append(f"{', '.join(c['secrets'])} changed since that version")
        if c.get("unconfirmed"):
            parts.append(f"a push of {', '.join(c['unconfirmed'])} was never confirmed")
        if c.get("keys"):
            parts.append(c["keys"])
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"worker": self.worker, "name": self.name, "target": self.target,
                               "crosses": self.crosses}
        if self.target:
            out.update(current=self.current, target_number=self.target_number,
                       asked=self.asked.as_dict() if self.asked else None)
        if self.not_checked:
            out["not_checked"] = self.not_checked
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
            if s.not_checked:
                lines.append(f"  {s.name:<32} not checked: {s.not_checked}")
                continue
            cross = f"  CROSSES A ROTATION: {s.crossing_text()} (needs --force)" if s.crosses else ""
            lines.append(f"  {s.name:<32} -> {s.target or 'no earlier version'}{cross}")
        if self.done:
            lines.append("health: " + ("ok" if self.ok else "FAILED"))
        return "\n".join(lines)


def crossing(ctx: Context, full: str, target_number: int | None) -> dict[str, Any] | None:
    """What a rollback to version number `target_number` would change of the MASTER_KEY /
    JWT kind secrets keyrotate put on this Worker, by version numbers (None: nothing)."""
    history = secret_history(ctx, full)
    if not history.pushes:
        return None
    if target_number is None:   # a version Cloudflare no longer lists: assume the worst
        return {"secrets": sorted({p.secret for p in history.pushes}), "unconfirmed": []}
    then, now = history.state_at(target_number), history.state_at(None)
    changed = sorted(n for n in set(then) | set(now) if then.get(n) != now.get(n))
    unconfirmed = history.unsettled_since(target_number)
    return {"secrets": changed, "unconfirmed": unconfirmed} if changed or unconfirmed else None


def rollback_plan(ctx: Context, only: str | None) -> list[RollbackStep]:
    """Per Worker, in reverse deploy order: the version to go back to and whether keyrotate's
    records say that crosses a rotation. Reads only; with no CLOUDFLARE_API_TOKEN, says what
    it could not look at instead of failing."""
    order = [ctx.manifest.worker(only)] if only else list(reversed(ctx.manifest.deploy_order))
    plan = []
    wrangler = wrangler_for(ctx)
    for w in order:
        step = RollbackStep(w, ctx.worker_name(w))
        plan.append(step)
        if not os.environ.get("CLOUDFLARE_API_TOKEN"):
            step.not_checked = "no CLOUDFLARE_API_TOKEN: the deployments cannot be read"
            continue
        deployments = wrangler.deployments(step.name)
        if not deployments:
            continue
        current = deployments[0].version_id
        earlier = next((d for d in deployments[1:] if d.version_id != current), None)
        if earlier:
            state = wrangler.state(step.name)
            step.current, step.target = current, earlier.version_id
            step.target_number = state.number(step.target)
            step.crosses = crossing(ctx, step.name, step.target_number)
    return plan


def rollback(ctx: Context, only: str | None, yes: bool, force: bool, say: Say) -> RollbackResult:
    plan = rollback_plan(ctx, only)
    if not yes:
        return RollbackResult(ctx.env.name, False, plan)
    # never beside a running rotation (its canary, its pushes): judged again once held
    with rotation_leases(ctx, [s.worker for s in plan]):
        return _roll_back(ctx, rollback_plan(ctx, only), force, say)


def _roll_back(ctx: Context, plan: list[RollbackStep], force: bool, say: Say) -> RollbackResult:
    blind = [s.name for s in plan if s.not_checked]
    if blind:
        raise ConfigError(f"cannot roll back {', '.join(blind)}: {plan[0].not_checked}")
    api = VersionsApi()
    try:
        for step in plan:   # judged before anything moves
            if step.target is not None and master_key_of(ctx, step.worker) \
                    and can_ask(ctx, step.worker):
                _ask_target(ctx, api, step)
        refused = [s for s in plan if s.crosses]
        if refused and not force:
            crossed = "; ".join(f"{s.name} ({s.crossing_text()})" for s in refused)
            raise ConfigError(f"refusing to roll back across a secret rotation: {crossed}. The "
                              "older version would serve the old secret values (after a "
                              "MASTER_KEY rotation rows it cannot open; after --finish the "
                              "retired key live again). Nothing was rolled back. --force rolls "
                              "back the code with the secrets serving now, as one new version.")
        for step in plan:
            if step.target is None:
                say(f"{step.name}: no earlier version to roll back to")
                continue
            roll_back_worker(ctx, api, step.worker, step.target, bool(step.crosses),
                             "keyrotate rollback", say)
    finally:
        api.close()
    check_serving(ctx, [s.worker for s in plan])
    return RollbackResult(ctx.env.name, True, plan, validate(ctx).workers)


def _ask_target(ctx: Context, api: VersionsApi, step: RollbackStep) -> None:
    """Deploy the target at 0% beside the serving version, ask it which keys it holds, take
    it out again; it crosses a rotation iff its keys miss one a row or object is under."""
    assert step.target is not None and step.current is not None
    secret = master_key_of(ctx, step.worker)
    assert secret is not None
    api.deploy(step.name, [(step.current, 100.0), (step.target, 0.0)],
               "keyrotate: asking a rollback target which keys it holds", force=True)
    try:
        step.asked = ask(ctx, step.worker, [step.target])[step.target]
    finally:
        api.deploy(step.name, [(step.current, 100.0)], "keyrotate: rollback target asked")
    missing = sorted(k for k in keys_in_use(ctx, secret) if not step.asked.reads(k))
    if missing:
        step.crosses = {"secrets": [], "unconfirmed": [],
                        "keys": f"that version holds keys {step.asked.kid} and "
                                f"{step.asked.previous_kid}, but rows or objects are under "
                                f"{', '.join(missing)}"}
    elif gone := [k for k in (step.asked.kid, step.asked.previous_kid)
                  if k is not None and k not in store_kids(ctx, secret)]:
        # sealing under it loses rows; merely reading it puts a retired key live again
        step.crosses = {"secrets": [], "unconfirmed": [],
                        "keys": f"that version holds key {' and '.join(gone)}, which the secret "
                                "store no longer holds (an aborted, retired or destroyed key)"}
    else:
        step.crosses = None


def roll_back_worker(ctx: Context, api: VersionsApi, worker: str, target: str, keep_secrets: bool,
                     message: str, say: Say) -> None:
    """Back to `target`'s code: with `wrangler rollback` when it may serve as it is, else as
    one new version of its code with every secret of the version serving now."""
    full = ctx.worker_name(worker)
    if not keep_secrets:
        say(f"rolling back {full} to {target}")
        wrangler_for(ctx).rollback(full, target, message)
        record_version(ctx, full, "rollback", target)
        return
    state = wrangler_for(ctx).state(full)
    current = state.deployed
    if current is None:
        raise DeployError(f"{full} is split between versions ({state.explain()}): there is no "
                          "single set of secrets serving now to keep. Finish or undo that "
                          "deployment first; nothing was rolled back.")
    say(f"rolling back {full} to {target}'s code, keeping the secrets serving now")
    version = api.copy(full, target, current, {}, f"{message}: code of {target}, secrets of now")
    record_version(ctx, full, "rollback", version)
    if master_key_of(ctx, worker) and can_ask(ctx, worker):
        api.deploy(full, [(current, 100.0), (version, 0.0)], f"{message}: checking its keys")
        got, now = ask(ctx, worker, [version, current]).values()
        if (got.kid, got.previous_kid) != (now.kid, now.previous_kid):
            api.deploy(full, [(current, 100.0)], f"{message}: refused")
            raise DeployError(f"{full}: the version made from {target}'s code answers keys "
                              f"{got.kid}/{got.previous_kid}, not {now.kid}/{now.previous_kid} "
                              "as the version serving now; nothing was rolled back.")
    wrangler_for(ctx).versions_deploy(full, [(version, 100.0)], message)
