"""Which steps a rotation takes, by the kind of secret and whether the Workers can read a
previous value (overlap, zero downtime) or not (cutover); and the steps of an abort.

With a previous, a value reaches the Workers in two phases (rotation/pushing.py): it is
introduced as PREVIOUS everywhere first, then switched to, so every serving version reads
what every other one seals at every moment. Rows are rewrapped only once the switch is in
effect on every holder, and PREVIOUS leaves the Workers only after a census shows no row
needs it, with the switch confirmed again from Cloudflare just before.
"""

from __future__ import annotations

from keyrotate.config.manifest import SecretSpec
from keyrotate.errors import Incomplete
from keyrotate.rotation.pushing import (
    ABORT_REMOVE,
    ABORT_RESTORE,
    CUTOVER_PUSH,
    INTRODUCE,
    REMOVE_PREVIOUS,
    SWITCH,
    require,
)
from keyrotate.rotation.state import Rotation
from keyrotate.rotation.steps import (
    Checklist,
    Discard,
    Job,
    Promote,
    Reencrypt,
    Report,
    Stage,
    Step,
    Validate,
    Verify,
)
from keyrotate.timeutil import now, parse_utc

OVERLAP_KINDS = ("master-key", "jwt-hs256")


def plan_of(spec: SecretSpec, compromised: bool) -> str:
    """Overlap when the Workers read a previous value, except after a compromise."""
    return "overlap" if spec.previous and not compromised and spec.kind in OVERLAP_KINDS \
        else "cutover"


def _switched(job: Job) -> None:
    require(job, [SWITCH, REMOVE_PREVIOUS], "rewrapping rows", reopen=["switch", "validate"])


def _confirmed(job: Job) -> None:
    require(job, [SWITCH, REMOVE_PREVIOUS], "the finish", reopen=["confirm-switch", "re-verify"])


def token_ttl_problem(spec: SecretSpec, rot: Rotation) -> str | None:
    """Why removing a JWT secret's previous value now would log users out: tokens signed
    with it may live max_token_ttl from the last push of the switch (None: it may go)."""
    if spec.kind != "jwt-hs256" or not spec.max_token_ttl:
        return None
    pushed = parse_utc(rot.detail.get("pushed_at"))
    if pushed is None:
        return None
    waited = (now() - pushed).total_seconds()
    if waited >= spec.max_token_ttl:
        return None
    return (f"tokens signed with the old {spec.name} may live {spec.max_token_ttl} s and the new "
            f"one was pushed {int(waited)} s ago: finishing now logs those users out. Wait, or "
            "use --force.")


def _confirmed_past_ttl(job: Job) -> None:
    """The finish's confirm step may have pushed the switch again (a Worker rolled back
    meanwhile signs with the old secret again): the token TTL counts from that push."""
    _confirmed(job)
    problem = None if job.force else token_ttl_problem(job.spec, job.rot)
    if problem:
        raise Incomplete(f"the switch was pushed again just now: {problem} The same command "
                         "finishes once that time has passed.")


def _restored(job: Job) -> None:
    require(job, [ABORT_RESTORE, ABORT_REMOVE], "moving rows back", reopen=["abort-restore"])


CONFIRM_SWITCH = SWITCH.renamed(
    "confirm-switch", "check from Cloudflare that every Worker still serves NAME=new and "
    "PREVIOUS=old (pushing it again where not)")
RE_VERIFY = Verify("re-verify", "verify again that no row depends on the old key (sweeping any "
                                "that came back)", requires=_confirmed)
CATCH_UP = Reencrypt("catch-up", "sweep again for rows the Workers wrote with the old key meanwhile")


def steps_for(spec: SecretSpec, plan: str, compromised: bool,
              has_objects: bool = False) -> tuple[list[Step], list[Step]]:
    """(steps up to the pause or the end, steps of --finish)."""
    if spec.kind == "master-key":
        if plan == "overlap":
            return ([Stage(), INTRODUCE, SWITCH, Validate(), Reencrypt(requires=_switched),
                     Verify(requires=_switched)],
                    [CONFIRM_SWITCH, RE_VERIFY, REMOVE_PREVIOUS.requiring(_confirmed), Promote()])
        compromise_tail: list[Step] = [REMOVE_PREVIOUS, Report()] if compromised else []
        if has_objects:
            # objects are rewrapped by the Worker, which needs both keys: both phases
            # first, then everything runs to the end without a pause
            return [Stage(), INTRODUCE, SWITCH, Validate(), Reencrypt(requires=_switched),
                    Verify(requires=_switched), REMOVE_PREVIOUS, Promote(),
                    *compromise_tail[1:]], []
        return [Stage(), Reencrypt(), CUTOVER_PUSH, Validate(), CATCH_UP, Verify(),
                *compromise_tail[:1], Promote(), *compromise_tail[1:]], []
    if spec.kind == "jwt-hs256":
        if plan == "overlap":
            return ([Stage(), INTRODUCE, SWITCH, Validate()],
                    [CONFIRM_SWITCH, REMOVE_PREVIOUS.requiring(_confirmed_past_ttl), Promote()])
        return [Stage(), CUTOVER_PUSH, Validate(),
                *([REMOVE_PREVIOUS] if compromised else []), Promote(),
                *([Report()] if compromised else [])], []
    if spec.kind == "external":
        return [Stage(), CUTOVER_PUSH, Validate(), Promote(), Checklist()], []
    return [Stage(), CUTOVER_PUSH, Validate(), Promote()], []


def abort_steps(spec: SecretSpec) -> list[Step]:
    """An overlap rotation run backwards: the Workers that may seal under the new value
    go back to the old one (reading both); rows and objects move back to the old key,
    proven by a census; then the new value leaves the Workers and the store."""
    steps: list[Step] = [ABORT_RESTORE, Validate("abort-validate")]
    if spec.kind == "master-key":
        steps += [Reencrypt("abort-unwrap", "move every row and object under the new value back "
                            "to the old one", requires=_restored),
                  Verify("abort-verify", "verify no row or object depends on the new value",
                         requires=_restored)]
    return [*steps, ABORT_REMOVE, Discard()]




def cutover_warning(spec: SecretSpec, plan: str, compromised: bool) -> str | None:
    """What a cutover costs, said before it starts (it needs --yes)."""
    if plan != "cutover" or spec.kind not in OVERLAP_KINDS:
        return None
    if spec.kind == "jwt-hs256":
        return (f"{spec.name} has no overlap (previous) configured{' (compromise)' if compromised else ''}: "
                "the hard cutover invalidates every session and logs every user out.")
    return (f"{spec.name} rotation without overlap{' (compromise: fresh DEKs)' if compromised else ''}: "
            "a maintenance cutover. Rows are reencrypted before the Workers get the new key; until "
            "the push, rows the Workers read that were already rewritten cannot be opened, and rows "
            "they write meanwhile are swept up afterwards.")
