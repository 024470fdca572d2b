"""The steps of a rotation that change what the Workers hold, each decided from Cloudflare.

A key with a previous (MASTER_KEY and MASTER_KEY_PREVIOUS, JWT_SECRET and its previous)
reaches the Workers in two phases, so that at every moment every serving version reads
what every other one seals:

    introduce   NAME=old, PREVIOUS=new   at 100% on every holder: all read both keys,
                                         all still seal under the old one
    switch      NAME=new, PREVIOUS=old   the step a canary ramps; rows are rewrapped only
                                         once it is in effect on every holder
    (finish)    PREVIOUS removed         once a census shows no row needs the old key

Whether a phase is in effect on a Worker is never remembered, always observed: the keys
its serving versions answer (where it has a key route), else the version the push made,
compared by id with what Cloudflare deploys now. A push whose answer was lost is pushed
again (pushes are idempotent); a precondition that no longer holds (someone rolled a
Worker back) reopens the step that set it, so the next run settles it first.
"""

from __future__ import annotations

from typing import Callable

from keyrotate.cloudflare.wrangler import wrangler_for
from keyrotate.controlplane.canary import canary_push
from keyrotate.controlplane.serving import ask, can_ask, expect, kid_of
from keyrotate.errors import Incomplete
from keyrotate.evidence.record import audit_key
from keyrotate.evidence.worker_log import secret_history
from keyrotate.rotation.steps import Job
from keyrotate.secrets.base import same_secret
from keyrotate.timeutil import now_iso

# what the Workers hold once a phase is in effect, from the (old, new) values: NAME and
# PREVIOUS (None: not set)
Holds = Callable[[str | None, str], tuple[str | None, str | None]]
NAME, PREVIOUS = "name", "previous"


class PushPhase:
    """One phase: the Workers it `applies_to` come to hold `holds(old, new)`; it pushes the
    names in `pushes` (NAME, PREVIOUS; a None value removes) to each Worker where the phase
    is not in effect yet, one Worker at a time."""

    def __init__(self, name: str, description: str, holds: Holds,
                 pushes: tuple[str, ...] = (NAME, PREVIOUS), canary: bool = False,
                 applies_to: str = "holders", record_as: str | None = None,
                 requires: Callable[[Job], None] | None = None):
        self.name, self.description = name, description
        self.holds, self.pushes, self.canary, self.applies_to = holds, pushes, canary, applies_to
        self.record_as = record_as or name     # where the versions it made are kept
        self.requires = requires

    def renamed(self, name: str, description: str) -> "PushPhase":
        """The same phase as another step (settling it again later in the rotation)."""
        return PushPhase(name, description, self.holds, self.pushes, self.canary,
                         self.applies_to, self.record_as, self.requires)

    def requiring(self, requires: Callable[[Job], None]) -> "PushPhase":
        """The same step, run only once `requires` holds."""
        return PushPhase(self.name, self.description, self.holds, self.pushes, self.canary,
                         self.applies_to, self.record_as, requires)

    # -- what the phase means -------------------------------------------------------------
    def secrets(self, job: Job) -> dict[str, str | None]:
        old, new = job.values()
        current, previous = self.holds(old, new)
        out: dict[str, str | None] = {}
        if NAME in self.pushes:
            out[job.spec.name] = current
        if PREVIOUS in self.pushes and job.spec.previous:
            out[job.spec.previous] = previous
        return out

    def kids(self, job: Job) -> tuple[str, str | None] | None:
        """The kids the Worker's versions answer once the phase is in effect (master keys
        only: the route answers for MASTER_KEY); None where that is not known."""
        if job.spec.kind != "master-key" or PREVIOUS not in self.pushes:
            return None
        current, previous = self.holds(*job.values())
        assert current is not None
        return kid_of(current), kid_of(previous) if previous is not None else None

    def workers(self, job: Job) -> list[str]:
        if self.applies_to == "switched":
            return possibly_switched(job)
        if self.applies_to == "holding-previous":
            prev = job.spec.previous
            return [w for w in job.holders() if prev and
                    prev in wrangler_for(job.ctx).secret_names(job.ctx.worker_name(w))]
        return job.holders()

    # -- observing ----------------------------------------------------------------------
    def recorded(self, job: Job, worker: str) -> str | None:
        return job.rot.detail.get("versions", {}).get(self.record_as, {}).get(worker, {}).get("id")

    def in_effect(self, job: Job, worker: str) -> bool:
        """Every version serving `worker` holds what this phase pushes: asked of each
        version where the Worker has a key route, else the version this phase's push made
        is the one Cloudflare deploys at 100% now."""
        state = job.pushes().observe(worker)
        kids = self.kids(job)
        if kids is not None and can_ask(job.ctx, worker):
            answers = ask(job.ctx, worker, state.serving)
            job.rot.detail.setdefault("kids", {})[worker] = {   # as the versions answered
                vid: [a.kid, a.previous_kid] for vid, a in answers.items()}
            return bool(answers) and all((a.kid, a.previous_kid) == kids for a in answers.values())
        recorded = self.recorded(job, worker)
        return recorded is not None and state.deployed == recorded

    def missing(self, job: Job) -> list[str]:
        return [w for w in self.workers(job) if not self.in_effect(job, w)]

    # -- doing ----------------------------------------------------------------------------
    def run(self, job: Job) -> None:
        if self.requires is not None:
            self.requires(job)
        todo = self.missing(job)
        pusher = job.pushes()
        pusher.check(todo, copies=self.canary and job.canary is not None)   # before the first push
        values, kids = self.secrets(job), self.kids(job)
        if self.canary and job.canary is not None:
            for worker in todo:   # every Worker reads the new value before any canary starts
                self._introduce_first(job, worker)
        for worker in todo:
            if self.canary and job.canary is not None:
                pushed = canary_push(job.ctx, pusher, worker, values, job.canary, job.say, kids)
            else:
                pushed = pusher.push(worker, values)
                if kids is not None:
                    expect(job.ctx, worker, pushed.version_id, *kids)
            job.rot.detail.setdefault("versions", {}).setdefault(self.record_as, {})[worker] = {
                "id": pushed.version_id, "number": pushed.number}
        if self.record_as in ("switch", "push") and (todo or "pushed_at" not in job.rot.detail):
            job.rot.detail["pushed_at"] = now_iso()   # after the last Worker's push (again)


    def _introduce_first(self, job: Job, worker: str) -> None:
        """A canary splits traffic between the serving version and the new one: the serving
        version must read the new value already (the introduce phase in effect), or the
        versions sharing traffic cannot read each other's writes. Where it does not (rolled
        back or redeployed since, outside keyrotate), introduce is pushed again first, at
        100%, before any share moves."""
        if PREVIOUS not in self.pushes or not job.spec.previous or self is INTRODUCE \
                or INTRODUCE.in_effect(job, worker):
            return
        job.say(f"{job.ctx.worker_name(worker)} does not serve what introduce pushed: pushing "
                "it again before the canary")
        pushed = job.pushes().push(worker, INTRODUCE.secrets(job))
        kids = INTRODUCE.kids(job)
        if kids is not None:
            expect(job.ctx, worker, pushed.version_id, *kids)
        job.rot.detail.setdefault("versions", {}).setdefault(INTRODUCE.record_as, {})[worker] = {
            "id": pushed.version_id, "number": pushed.number}


def possibly_switched(job: Job) -> list[str]:
    """Holders that may serve the new value as NAME: a push of it that did not fail (a
    confirmed one, or one whose answer was lost), or a serving version answering its kid."""
    _, new = job.values()
    key = audit_key(job.ctx)
    out = []
    for worker in job.holders():
        history = secret_history(job.ctx, job.ctx.worker_name(worker), (job.spec.kind,))
        if any(p.secret == job.spec.name and same_secret(new, p.fingerprint, key)
               and p.state != "failed"
               for p in history.pushes):
            out.append(worker)
        elif job.spec.kind == "master-key" and can_ask(job.ctx, worker):
            state = job.pushes().observe(worker)
            if any(a.kid == kid_of(new) for a in ask(job.ctx, worker, state.serving).values()):
                out.append(worker)
    return out


def require(job: Job, phases: list[PushPhase], then: str, reopen: list[str]) -> None:
    """Before `then`: on every Worker the first phase applies to, that phase or a later one
    of `phases` must be in effect. When none is (a Worker was rolled back or redeployed
    since), the steps `reopen` are done again by the next run, which so settles it first."""
    first = phases[0]
    missing = [w for w in first.workers(job) if not any(p.in_effect(job, w) for p in phases)]
    if not missing:
        return
    names = ", ".join(job.ctx.worker_name(w) for w in missing)
    if job.recorder is not None:
        job.recorder.reopen(job.rot, reopen, f"{names}: the {first.record_as} is not in effect")
    raise Incomplete(f"before {then}: {names} no longer serve{'s' if len(missing) == 1 else ''} "
                     f"what the {first.record_as} step pushed (rolled back or redeployed since?). "
                     "Nothing was changed; run the same command again: it pushes that again "
                     "first.")


INTRODUCE = PushPhase(
    "introduce", "push NAME=old and PREVIOUS=new to every Worker holding it (all read both keys; "
    "all still seal under the old one)", lambda old, new: (old, new))
SWITCH = PushPhase(
    "switch", "push NAME=new and PREVIOUS=old to every Worker holding it (a canary ramps this "
    "one); each serving version reads what the others seal", lambda old, new: (new, old),
    canary=True)
CUTOVER_PUSH = PushPhase(
    "push", "push NAME=new to every Worker holding it, one at a time", lambda old, new: (new, None),
    pushes=(NAME,), canary=True)
REMOVE_PREVIOUS = PushPhase(
    "remove-previous", "remove PREVIOUS from the Workers", lambda old, new: (new, None),
    pushes=(PREVIOUS,), applies_to="holding-previous")
ABORT_RESTORE = PushPhase(
    "abort-restore", "put NAME=old and PREVIOUS=new back on every Worker that may seal under the "
    "new value (all read both keys; all seal under the old one again)",
    lambda old, new: (old, new), applies_to="switched")
ABORT_REMOVE = PushPhase(
    "abort-remove-previous", "remove PREVIOUS (the aborted value) from the Workers",
    lambda old, new: (old, None), pushes=(PREVIOUS,), applies_to="holding-previous")
