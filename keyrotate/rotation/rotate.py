"""`keyrotate rotate SECRET --env ENV`: one rotation, start to finish, as a persisted,
resumable state machine (AWS Secrets Manager's create / set / test / finish is the model).

Each kind of secret has its own safe order of steps (plan.py). After each step the
Recorder saves the rotation row and appends to the audit log, so a re-run continues where
the last one stopped. The new value is written to the store as *pending* before anything
else, and the old value is only given up (promoted to *previous*) after verify shows no
row depends on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

from keyrotate.config.context import Context
from keyrotate.config.manifest import SecretSpec
from keyrotate.controlplane.canary import DEFAULT_STEPS, Canary
from keyrotate.controlplane.held_lease import rotation_lease
from keyrotate.controlplane.pushes import Pusher
from keyrotate.controlplane.serving import check_serving
from keyrotate.dataplane.objects.driver import ObjectsOptions
from keyrotate.db.base import ReadAhead
from keyrotate.errors import ConfigError, DeployError, StoreUnavailable
from keyrotate.evidence.record import audit_key, existing_audit_key
from keyrotate.evidence.worker_log import secret_history
from keyrotate.progress import Say
from keyrotate.rotation.plan import (
    abort_steps,
    cutover_warning,
    plan_of,
    steps_for,
    token_ttl_problem,
)
from keyrotate.rotation.preflight import preflight
from keyrotate.rotation.state import Recorder, Rotation, done_steps
from keyrotate.rotation.steps import Job, Step
from keyrotate.secrets.base import fingerprint, same_secret
from keyrotate.timeutil import new_id, now_iso

PUSH_STEPS = ("push", "introduce", "switch", "remove-previous", "confirm-switch")


@dataclass(frozen=True)
class PlannedStep:
    step: str
    what: str
    done: bool


@dataclass(frozen=True)
class RotatePlan:
    """--dry-run: the steps a run would take, nothing changed."""

    env: str
    secret: str
    plan: str
    compromised: bool
    warning: str | None
    steps: list[PlannedStep] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)   # what the dry run could and could not check
    exit_code: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.env, "secret": self.secret, "dry_run": True, "plan": self.plan,
                "compromised": self.compromised, "warning": self.warning,
                "steps": [s.__dict__ for s in self.steps], "checks": self.checks}

    def text(self) -> str:
        lines = [f"plan for {self.secret} on {self.env} ({self.plan}"
                 + (", compromised" if self.compromised else "") + "), nothing changed:"]
        if self.warning:
            lines.append(f"  NOTE: {self.warning}")
        lines += [f"  {'done' if s.done else '    '} {s.step:<16} {s.what}" for s in self.steps]
        lines += [f"  {c}" for c in self.checks]
        return "\n".join(lines)


@dataclass(frozen=True)
class RotateResult:
    rotation: Rotation
    note: str
    exit_code: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {**self.rotation.as_dict(), "dry_run": False, "note": self.note}

    def text(self) -> str:
        rot = self.rotation
        lines = [f"{rot.secret} on {rot.environment}: {rot.state} (rotation {rot.rotation_id})",
                 f"  old {rot.old_fp}  new {rot.new_fp}", f"  {self.note}"]
        lines += [f"  [ ] {item}" for item in rot.detail.get("checklist", [])]
        return "\n".join(lines)


@dataclass(frozen=True)
class RotateOptions:
    """How `rotate` runs: what the command line asked for."""

    compromised: bool = False
    dry_run: bool = False
    yes: bool = False              # go ahead with a cutover that has stated consequences
    finish: bool = False
    force: bool = False            # --finish before max_token_ttl
    abort: bool = False
    from_deployed: bool = False
    canary: bool = False
    objects: ObjectsOptions = ObjectsOptions()
    # who starts it: "person" (the command line) or "rollover" (a schedule); an unattended
    # caller never responds to a compromise nor continues a rotation a person started
    started_by: str = "person"


def rotate(ctx: Context, secret: str, options: RotateOptions = RotateOptions(), say: Say = print,
           read_external: Callable[[], str] | None = None) -> RotatePlan | RotateResult:
    """One rotation of SECRET on the context's environment, started, resumed, finished or
    aborted as `options` say. `read_external` gives an external secret's new value."""
    recorder = Recorder(ctx)
    ctx.manifest.secret(secret)   # a typo is refused before anything else
    _check_flags(options)
    try:
        if options.dry_run:
            return _rotate(ctx, recorder, secret, options, say, read_external)
        # one command at a time per secret and environment (a person and a schedule, two
        # terminals): the second refuses, naming the holder. The claim also reads the
        # trail's head and the open rotation, and the rotation's end gives the lease back
        trail = recorder.evidence.trail
        with rotation_lease(ctx, secret, [trail.head_read(), recorder.open_read(secret)]) as held:
            trail.answered(held.ahead)
            recorder.lease = held
            return _rotate(ctx, recorder, secret, options, say, read_external, held.ahead)
    finally:
        recorder.evidence.close()


def _check_flags(options: RotateOptions) -> None:
    """Flags that ask for two things at once are refused, not silently half obeyed."""
    if options.finish and options.abort:
        raise ConfigError("--finish and --abort go opposite ways: give one of them")
    if options.compromised and (options.finish or options.abort):
        raise ConfigError(f"--compromised is a compromise response of its own (it takes over "
                          f"an open rotation); --{'finish' if options.finish else 'abort'} "
                          "only ends or undoes the open one: give one of them")
    if options.canary and options.abort:
        raise ConfigError("--canary ramps the push of a new value; --abort puts the old one "
                          "back on every Worker: run it without --canary")


def _rotate(ctx: Context, recorder: Recorder, secret: str, options: RotateOptions, say: Say,
            read_external: Callable[[], str] | None,
            ahead: ReadAhead = ReadAhead()) -> RotatePlan | RotateResult:
    finish, abort = options.finish, options.abort
    spec = ctx.manifest.secret(secret)
    if options.dry_run:
        existing_audit_key(ctx)   # a dry run makes nothing, the audit key included
    else:
        audit_key(ctx)   # the trail can record this rotation: checked before anything changes
    rot = recorder.load_open(secret, ahead)
    if rot is None and (finish or abort):
        raise ConfigError(f"no {secret} rotation in progress on {ctx.env.name}")
    _check_unattended(options, rot)
    if rot is not None and rot.state == "aborting" and not abort:
        raise ConfigError(f"the {secret} rotation {rot.rotation_id} is being aborted: run "
                          f"keyrotate rotate {secret} --env {ctx.env.name} --abort again to "
                          "finish the abort first")
    taken_over = None
    if rot is not None and options.compromised and not rot.compromised:
        taken_over, rot = rot, None  # a compromise never continues a routine rotation
    plan = rot.plan if rot else plan_of(spec, options.compromised)
    compromised = rot.compromised if rot else options.compromised
    first, finishing = steps_for(spec, plan, compromised, bool(ctx.manifest.objects_of(secret)))
    warning = cutover_warning(spec, plan, compromised)
    if taken_over is not None:
        warning = (f"{_takeover_text(taken_over)} {warning or ''}").strip()
    steps = abort_steps(spec) if abort else finishing if finish else first
    done = done_steps(rot.steps_done) if rot else set()
    pusher = Pusher(ctx, say, options.from_deployed)
    if options.dry_run:
        job = Job(ctx, spec, rot or _new_rotation(ctx, spec, plan, compromised, dry_run=True),
                  say)
        checks = _dry_run_checks(ctx, spec, pusher, [s for s in steps if s.name not in done])
        return RotatePlan(ctx.env.name, secret, plan, compromised, warning,
                          [PlannedStep(s.name, job.text(s.description), s.name in done)
                           for s in steps], checks)
    if not abort:
        preflight(ctx, spec)
        if any(s.name in PUSH_STEPS and s.name not in done for s in steps):
            pusher.check(ctx.manifest.workers_holding(secret))   # before anything changes
    if warning and not options.yes and rot is None:
        raise ConfigError(f"{warning} Nothing was changed: re-run with --yes to go ahead.")
    if abort:
        assert rot is not None
        if not _begin_abort(ctx, recorder, rot, say):
            return RotateResult(rot, f"aborted the {secret} rotation: its new value reached no "
                                     "Worker and no row, and was discarded")
    if rot is None:
        rot = _new_rotation(ctx, spec, plan, compromised)
        rot.detail["started_by"] = options.started_by
        if taken_over is not None:
            _take_over(ctx, recorder, taken_over, rot, say)
        else:
            recorder.started(rot)
    if rot.state == "awaiting-finish" and not finish and not abort:
        return RotateResult(rot, f"{secret} on {ctx.env.name} is waiting for --finish "
                                 f"(run: keyrotate rotate {secret} --env {ctx.env.name} --finish)")
    if finish:
        if rot.state != "awaiting-finish":
            raise ConfigError(f"the {secret} rotation is not ready to finish (state {rot.state})")
        _check_token_ttl(spec, rot, options.force)
    if options.canary or spec.canary:
        rot.detail["canary"] = list(spec.canary or DEFAULT_STEPS)
    job = Job(ctx, spec, rot, say, read_external, options.objects, pusher,
              Canary(tuple(rot.detail["canary"])) if rot.detail.get("canary") else None, recorder,
              force=options.force)
    try:
        _run_steps(job, recorder, steps)
    finally:
        pusher.close()
    if spec.kind == "master-key":
        check_serving(ctx, ctx.manifest.workers_holding(secret))   # what exit 0 proves
    if abort:
        recorder.ended(rot, "aborted")
        return RotateResult(rot, f"the {secret} rotation was aborted: every Worker serves the old "
                                 "value again, no row or object needs the new one, and it is gone "
                                 "from the Workers and the store.")
    ended = finish or not finishing
    recorder.ended(rot, "finished" if ended else "awaiting-finish")
    note = (f"{secret} rotated on {ctx.env.name}." if ended else
            f"{secret} rotated and verified; the Workers still accept the previous value. When ready: "
            f"keyrotate rotate {secret} --env {ctx.env.name} --finish")
    return RotateResult(rot, note)


def _dry_run_checks(ctx: Context, spec: SecretSpec, pusher: Pusher, todo: list[Step]) -> list[str]:
    """What a dry run could check without changing anything, and what it could not (and
    why): a check it could not make is said, never failed on. A check that ran and found a
    problem stops the plan (exit 2), as it would stop the rotation."""
    checks = []
    try:
        preflight(ctx, spec)
        checks.append("checked: every target exists and its endpoint answers")
    except StoreUnavailable as e:
        checks.append(f"not checked: the targets ({e})")
    if any(s.name in PUSH_STEPS for s in todo):
        holders = ctx.manifest.workers_holding(spec.name)
        if not os.environ.get("CLOUDFLARE_API_TOKEN"):
            checks.append("not checked: which versions the Workers serve (no CLOUDFLARE_API_TOKEN; "
                          "a dry run never asks for one)")
        else:
            try:
                pusher.check(holders)
                checks.append(f"checked: {', '.join(ctx.worker_name(w) for w in holders)} can take "
                              "a push")
            except DeployError as e:
                checks.append(f"not checked: which versions the Workers serve ({e})")
    return checks


def _new_rotation(ctx: Context, spec: SecretSpec, plan: str, compromised: bool,
                  dry_run: bool = False) -> Rotation:
    current = ctx.secrets.read(spec.name)   # known from the start: the started event says it
    key = existing_audit_key(ctx) if dry_run else audit_key(ctx)   # a dry run makes none
    return Rotation(new_id("rot-"), ctx.env.name, spec.name, spec.kind, plan, compromised,
                    "in-progress", old_fp=fingerprint(current, key) if current and key else None,
                    started_at=now_iso())


def _check_unattended(options: RotateOptions, rot: Rotation | None) -> None:
    """A schedule acts only on rotations it started, and never on a compromise: both
    are a person's decisions."""
    if options.started_by == "person":
        return
    if options.compromised:
        raise ConfigError(f"a compromise response is a person's decision: {options.started_by} "
                          "never rotates with --compromised")
    owner = rot.detail.get("started_by", "person") if rot else None
    if rot is not None and owner != options.started_by:
        raise ConfigError(f"the open {rot.secret} rotation {rot.rotation_id} was started by a "
                          f"{owner}: {options.started_by} leaves it to them")


def _run_steps(job: Job, recorder: Recorder, steps: list[Step]) -> None:
    for step in steps:
        if step.name in done_steps(job.rot.steps_done):
            continue
        job.say(f"[{job.spec.name}] {step.name}: {job.text(step.description)}")
        try:
            step.run(job)
        except BaseException as e:
            recorder.interrupted(job.rot, step.name, e)
            raise
        recorder.step_done(job.rot, step.name)


def _check_token_ttl(spec: SecretSpec, rot: Rotation, force: bool) -> None:
    problem = None if force else token_ttl_problem(spec, rot)
    if problem:
        raise ConfigError(problem)


def _takeover_text(open_rot: Rotation) -> str:
    return (f"A {open_rot.plan} rotation of {open_rot.secret} ({open_rot.rotation_id}, done: "
            f"{', '.join(open_rot.steps_done) or 'nothing'}) is open: the compromise response "
            "takes it over. Its new value is treated as compromised too: a fresh value is "
            "made, every row under the current or that value gets fresh DEKs under it, and "
            "both leave the Workers.")


def _reached_workers(ctx: Context, rot: Rotation) -> bool:
    """Whether the rotation's new value may be on a Worker: a push of it that did not fail
    (confirmed, or never answered), whatever the steps recorded say."""
    pending = ctx.secrets.read(rot.secret, "pending")
    if pending is None:
        return False
    key = audit_key(ctx)
    for worker in ctx.manifest.workers_holding(rot.secret):
        history = secret_history(ctx, ctx.worker_name(worker), (rot.kind,))
        if any(same_secret(pending, p.fingerprint, key) and p.state != "failed"
               for p in history.pushes):
            return True
    return False


def _take_over(ctx: Context, recorder: Recorder, open_rot: Rotation, new_rot: Rotation,
               say: Say) -> None:
    """End an open routine rotation for a compromise, in the same transaction as the new
    one starts. If its new value reached nothing outside the store, it is discarded;
    otherwise it is promoted (Workers and rows may use it) and becomes one more old key the
    compromise response rewraps from: the store's previous slot keeps the value before it,
    and the new rotation inherits every old key the superseded one needed."""
    store, name = ctx.secrets, open_rot.secret
    inherited = list(open_rot.detail.get("also_old", []))
    moved = (bool(open_rot.detail.get("rows_written"))
             or any(s != "stage" for s in open_rot.steps_done) or _reached_workers(ctx, open_rot))
    if moved and "previous" in inherited:
        raise ConfigError(f"the open {name} rotation {open_rot.rotation_id} already took over "
                          "another one: its keys fill every store slot, and a third takeover would "
                          "drop one a row may be under. Finish it first (run the same command "
                          "without --compromised), then respond to the compromise. Nothing was "
                          "changed.")
    if store.read(name, "pending") is not None:
        if moved:
            store.promote(name)
        else:
            store.discard_pending(name)
    new_rot.detail.update(took_over=open_rot.rotation_id,
                          also_old=sorted(set(inherited) | ({"previous"} if moved else set())))
    recorder.took_over(open_rot, new_rot, "compromise response")
    say(f"took over the open {name} rotation {open_rot.rotation_id} for the compromise response")


def _begin_abort(ctx: Context, recorder: Recorder, rot: Rotation, say: Say) -> bool:
    """An abort works from what reached the Workers, not from the steps recorded: while
    the new value reached no Worker and no row, it is simply discarded (False: done); an
    overlap rotation then runs backwards (True: run abort_steps); a cutover that pushed is
    refused: finish it."""
    if rot.state == "aborting":
        return True
    rows_moved = bool(rot.detail.get("rows_written")) or any(
        s not in ("stage", "introduce", "switch", "push-overlap", "validate", "push")
        for s in rot.steps_done)
    if not rows_moved and not _reached_workers(ctx, rot):
        ctx.secrets.discard_pending(rot.secret)
        recorder.ended(rot, "aborted")
        say(f"the new {rot.secret} reached no Worker and no row: discarded")
        return False
    if rot.plan != "overlap":
        raise ConfigError(f"the {rot.secret} rotation is a cutover that has gone past staging "
                          f"({', '.join(rot.steps_done)}): the Workers cannot read both values, "
                          "so going back would strand rows. Finish it instead: run the same "
                          "command without --abort.")
    recorder.aborting(rot)
    say(f"aborting the {rot.secret} rotation: the Workers and rows go back to the old value")
    return True
