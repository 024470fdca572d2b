"""`keyrotate rollover --env ENV`: the one command a cron or CI schedule runs. Each run
advances whatever the manifest's policy says is due, and no more:

- an `auto` secret older than `max_age` with no rotation open: its rotation starts and
  stops at awaiting-finish, as `rotate` does;
- a rotation rollover started that paused (or was killed): resumed;
- a rotation rollover started that awaits its finish: finished once `finish_after` has
  passed since it got there (`--finish` verifies again first);
- every one of those waits for the secret's `window`;
- a secret with `auto = false` past `max_age`: reported due, nothing else;
- a rotation a person started: left to that person. A compromise is never rollover's.

Every step goes through `rotate` with `started_by="rollover"`, so it is recorded, notified
and resumable exactly as a person's would be; a secret is decided once per run, so a
rotation started by a run is never finished by the same run. One run per environment at
a time: the lease `rollover:<env>`. Times come from keyrotate's clock (timeutil.now), a
secret's age from its store, the finish from the rotation's own record in the audit trail.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from keyrotate.config.context import Context
from keyrotate.config.manifest import SecretSpec
from keyrotate.controlplane.held_lease import HeldLease
from keyrotate.errors import EXIT_FAILURES, EXIT_INCOMPLETE, EXIT_USAGE, ConfigError, KeyrotateError
from keyrotate.evidence.event import Event
from keyrotate.evidence.record import Evidence, audit_trail
from keyrotate.progress import Say
from keyrotate.rotation.rotate import RotateOptions, RotatePlan, rotate
from keyrotate.rotation.state import Recorder, Rotation
from keyrotate.timeutil import now, parse_utc

STARTED_BY = "rollover"
ACTIONS = ("start", "resume", "finish")   # what calls `rotate`; the rest only looks
# the code a run exits with is its gravest: a failure, then a refusal, then a pause
GRAVITY = (EXIT_FAILURES, EXIT_USAGE, EXIT_INCOMPLETE)


def _stamp(t: datetime | None) -> str | None:
    return t.astimezone(timezone.utc).isoformat(timespec="seconds") if t else None


def _when(t: datetime) -> str:
    """For people: 'Mon 2027-04-05 09:00 UTC'."""
    return t.astimezone(timezone.utc).strftime("%a %Y-%m-%d %H:%M UTC")


def _days(seconds: float) -> str:
    return f"{seconds / 86400:.1f} days"


@dataclass
class SecretRollover:
    """What one run did (or, with --dry-run, would do) for one secret."""

    secret: str
    action: str          # start | resume | finish | wait | none | report | leave
    outcome: str         # started, awaiting-finish, finished, paused, failed, refused, waiting, ...
    note: str
    rotation_id: str | None = None
    next_at: datetime | None = None    # when its next step falls due (None: nothing scheduled)
    exit_code: int = 0
    steps: list[str] = field(default_factory=list)   # --dry-run: the steps it would take

    def as_dict(self) -> dict[str, Any]:
        return {"secret": self.secret, "action": self.action, "outcome": self.outcome,
                "note": self.note, "rotation_id": self.rotation_id,
                "next_at": _stamp(self.next_at), "exit_code": self.exit_code,
                **({"steps": self.steps} if self.steps else {})}

    def text(self) -> str:
        return "\n".join([f"  {self.secret:<24} {self.outcome:<16} {self.note}",
                          *(f"      {step}" for step in self.steps)])


@dataclass(frozen=True)
class RolloverResult:
    env: str
    at: datetime
    dry_run: bool
    secrets: list[SecretRollover]

    @property
    def exit_code(self) -> int:
        codes = {s.exit_code for s in self.secrets}
        return next((c for c in GRAVITY if c in codes), 0)

    @property
    def next_step_at(self) -> datetime | None:
        times = [s.next_at for s in self.secrets if s.next_at is not None]
        return min(times) if times else None

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.env, "at": _stamp(self.at), "dry_run": self.dry_run,
                "secrets": [s.as_dict() for s in self.secrets],
                "next_step_at": _stamp(self.next_step_at), "exit_code": self.exit_code}

    def text(self) -> str:
        head = f"rollover on {self.env} at {_when(self.at)}" + (
            " (dry run: nothing changed)" if self.dry_run else "") + ":"
        lines = [head]
        lines += [s.text() for s in self.secrets]
        nxt = self.next_step_at
        lines.append(f"next step due: {_when(nxt)}" if nxt else "no step scheduled")
        return "\n".join(lines)


def rollover(ctx: Context, dry_run: bool = False, say: Say = print) -> RolloverResult:
    """One scheduled run on the context's environment: every secret with a policy
    (max_age), in the manifest's order, decided and advanced one step at most."""
    policed = [spec for spec in ctx.manifest.secrets.values() if spec.max_age]
    if not policed:
        raise ConfigError(f"{ctx.manifest.path}: no secret has a max_age: rollover has "
                          "nothing to schedule (add max_age, and auto = true to rotate)")
    started, recorder = now(), Recorder(ctx)
    try:
        if dry_run:
            return RolloverResult(ctx.env.name, started, True,
                                  [_one(ctx, recorder, spec, True, say) for spec in policed])
        with HeldLease(ctx, f"rollover:{ctx.env.name}"):
            result = RolloverResult(ctx.env.name, started, False,
                                    [_one(ctx, recorder, spec, False, say) for spec in policed])
            _record(recorder.evidence, ctx, result)
        return result
    finally:
        recorder.evidence.close()


def _one(ctx: Context, recorder: Recorder, spec: SecretSpec, dry_run: bool,
         say: Say) -> SecretRollover:
    decided = _decide(ctx, spec, recorder.load_open(spec.name))
    if decided.action not in ACTIONS:
        return decided
    say(f"[{spec.name}] rollover: {decided.action} ({decided.note})")
    return _act(ctx, recorder, spec, decided, dry_run, say)


# -- deciding --------------------------------------------------------------------------------

def _opens(spec: SecretSpec, t: datetime) -> datetime:
    """The first moment at or after `t` when the secret's window lets a step start."""
    return spec.window.next_open(t) if spec.window else t


def _window_note(spec: SecretSpec, t: datetime) -> str:
    return f"outside the window ({spec.window}); it opens at {_when(_opens(spec, t))}"


def _decide(ctx: Context, spec: SecretSpec, rot: Rotation | None) -> SecretRollover:
    t, name = now(), spec.name
    if rot is not None:
        owner = rot.detail.get("started_by", "person")
        if owner != STARTED_BY or not spec.auto:
            who = "a person" if owner != STARTED_BY else "rollover, but auto = false now"
            return SecretRollover(name, "leave", "left", f"rotation {rot.rotation_id} "
                                  f"({rot.state}) was started by {who}: rollover leaves it to a "
                                  f"person (keyrotate rotate {name} --env {ctx.env.name} ...)",
                                  rot.rotation_id)
        if rot.state == "awaiting-finish":
            return _decide_finish(ctx, spec, rot, t)
        if _opens(spec, t) > t:
            return SecretRollover(name, "wait", "paused", f"rotation {rot.rotation_id} is in "
                                  f"progress (done: {', '.join(rot.steps_done) or 'nothing'}) and "
                                  f"resumes in the window: {_window_note(spec, t)}",
                                  rot.rotation_id, _opens(spec, t), EXIT_INCOMPLETE)
        return SecretRollover(name, "resume", "resuming", f"rotation {rot.rotation_id} stopped "
                              f"after {', '.join(rot.steps_done) or 'nothing'}", rot.rotation_id)
    assert spec.max_age is not None
    set_at = _set_at(ctx, name)
    if set_at is None:
        return SecretRollover(name, "none", "age-unknown", f"{ctx.secrets.ref(name)} does not "
                              "say when it was set: rotate it once by hand (keyrotate records "
                              "when)", exit_code=EXIT_USAGE if spec.auto else 0)
    age, due = (t - set_at).total_seconds(), set_at + timedelta(seconds=spec.max_age)
    if age <= spec.max_age:
        return SecretRollover(name, "none", "ok", f"{_days(age)} old, due at {_when(due)}",
                              next_at=_opens(spec, due) if spec.auto else None)
    old = f"{_days(age)} old, past max_age ({_days(spec.max_age)})"
    if not spec.auto:
        return SecretRollover(name, "report", "due", f"{old}; auto = false: rotate it by hand "
                              f"(keyrotate rotate {name} --env {ctx.env.name})")
    if _opens(spec, t) > t:
        return SecretRollover(name, "wait", "waiting", f"{old}; {_window_note(spec, t)}",
                              next_at=_opens(spec, t))
    return SecretRollover(name, "start", "starting", old)


def _decide_finish(ctx: Context, spec: SecretSpec, rot: Rotation, t: datetime) -> SecretRollover:
    due = finish_due(ctx, spec, rot)
    name = spec.name
    if t < due:
        return SecretRollover(name, "wait", "awaiting-finish", f"rotation {rot.rotation_id}: "
                              f"the overlap stays open until {_when(due)} (finish_after)",
                              rot.rotation_id, _opens(spec, due))
    if _opens(spec, t) > t:
        return SecretRollover(name, "wait", "awaiting-finish", f"rotation {rot.rotation_id}: "
                              f"finish due; {_window_note(spec, t)}", rot.rotation_id,
                              _opens(spec, t))
    return SecretRollover(name, "finish", "finishing", f"rotation {rot.rotation_id}: finish "
                          f"due since {_when(due)}", rot.rotation_id)


def _set_at(ctx: Context, name: str) -> datetime | None:
    """When the store says the current value was set (the secret's age counts from it)."""
    set_at = ctx.secrets.set_at(name)
    return set_at if set_at is None or set_at.tzinfo else set_at.replace(tzinfo=timezone.utc)


def finish_due(ctx: Context, spec: SecretSpec, rot: Rotation) -> datetime:
    """When rollover may finish: `finish_after` from the moment the rotation reached
    awaiting-finish (its event in the audit trail); for a JWT, never before max_token_ttl
    has passed since the new value was pushed."""
    pushed = parse_utc(rot.detail.get("pushed_at"))
    since = _awaiting_since(ctx, rot) or pushed or parse_utc(rot.started_at) or now()
    due = since + timedelta(seconds=spec.finish_after or 0)
    if spec.kind == "jwt-hs256" and spec.max_token_ttl and pushed is not None:
        due = max(due, pushed + timedelta(seconds=spec.max_token_ttl))
    return due


def _awaiting_since(ctx: Context, rot: Rotation) -> datetime | None:
    marks = [parse_utc(r.get("at")) for r in audit_trail(ctx).records("rotation.step")
             if r.get("rotation_id") == rot.rotation_id and r.get("step") == "awaiting-finish"]
    return max((m for m in marks if m is not None), default=None)


# -- acting ----------------------------------------------------------------------------------

def _act(ctx: Context, recorder: Recorder, spec: SecretSpec, decided: SecretRollover,
         dry_run: bool, say: Say) -> SecretRollover:
    name, action = spec.name, decided.action
    options = RotateOptions(dry_run=dry_run, finish=action == "finish", started_by=STARTED_BY)
    try:
        result = rotate(ctx, name, options, say)
    except KeyrotateError as e:
        outcome = {EXIT_INCOMPLETE: "paused", EXIT_USAGE: "refused"}.get(e.exit_code, "failed")
        paused = e.exit_code == EXIT_INCOMPLETE
        rot = None if dry_run else recorder.load_open(name)
        return SecretRollover(name, action, outcome, f"{action}: {e}"
                              + ("; the next rollover retries" if paused else ""),
                              rot.rotation_id if rot else decided.rotation_id,
                              _opens(spec, now()) if paused else None, e.exit_code)
    if isinstance(result, RotatePlan):
        return SecretRollover(name, action, f"would {action}", decided.note, decided.rotation_id,
                              now(), steps=[f"{s.step}: {s.what}" for s in result.steps if not s.done])
    rot = result.rotation
    outcome = {"start": "started", "resume": "resumed", "finish": "finished"}[action]
    if rot.state == "awaiting-finish":
        due = finish_due(ctx, spec, rot)
        return SecretRollover(name, action, outcome, f"rotation {rot.rotation_id} awaits its "
                              f"finish, due at {_when(due)}", rot.rotation_id, _opens(spec, due))
    due = (_set_at(ctx, name) or now()) + timedelta(seconds=spec.max_age or 0)
    return SecretRollover(name, action, outcome, f"rotation {rot.rotation_id} {rot.state}; next "
                          f"due at {_when(due)}", rot.rotation_id, _opens(spec, due))


def _record(evidence: Evidence, ctx: Context, result: RolloverResult) -> None:
    """The run's decisions into the audit trail when it acted or stopped short (exit code
    not 0); the steps themselves were recorded and notified by `rotate` as they happened.
    A run that only waited leaves no event: a schedule may run every hour."""
    if result.exit_code == 0 and not any(s.action in ACTIONS for s in result.secrets):
        return
    shown = [s for s in result.secrets if s.outcome != "ok"]
    evidence.record(Event(
        "rollover.run", ctx.env.name, f"rollover on {ctx.env.name}: " + "; ".join(
            f"{s.secret} {s.outcome}" for s in shown) + f" (exit {result.exit_code})",
        detail={"exit_code": result.exit_code, "next_step_at": _stamp(result.next_step_at),
                "secrets": [s.as_dict() for s in shown]}))
