"""Which steps a rotation takes, by the kind of secret and whether the Workers can read a
previous value (overlap, zero downtime) or not (cutover)."""

from __future__ import annotations

from keyrotate.config.manifest import SecretSpec
from keyrotate.rotation.steps import (
    CATCH_UP,
    RE_VERIFY,
    Checklist,
    Promote,
    PushNew,
    Reencrypt,
    RemovePrevious,
    Report,
    Stage,
    Step,
    Validate,
    Verify,
)

OVERLAP_KINDS = ("master-key", "jwt-hs256")


def plan_of(spec: SecretSpec, compromised: bool) -> str:
    """Overlap when the Workers read a previous value, except after a compromise."""
    return "overlap" if spec.previous and not compromised and spec.kind in OVERLAP_KINDS \
        else "cutover"


def steps_for(spec: SecretSpec, plan: str, compromised: bool,
              has_objects: bool = False) -> tuple[list[Step], list[Step]]:
    """(steps up to the pause or the end, steps of --finish)."""
    compromise_tail: list[Step] = [RemovePrevious(), Report()] if compromised else []
    if spec.kind == "master-key":
        if plan == "overlap":
            # the pause may last days: verify again (and sweep) before the Workers lose PREVIOUS
            return ([Stage(), PushNew(overlap=True), Validate(), Reencrypt(), Verify()],
                    [RE_VERIFY, RemovePrevious(), Promote()])
        if has_objects:
            # objects are rewrapped by the Worker, which needs both keys: push them first,
            # then everything runs to the end without a pause
            return [Stage(), PushNew(overlap=True), Validate(), Reencrypt(), Verify(),
                    Promote(), RemovePrevious(), *compromise_tail[1:]], []
        return [Stage(), Reencrypt(), PushNew(overlap=False), Validate(), CATCH_UP, Verify(),
                Promote(), *compromise_tail], []
    if spec.kind == "jwt-hs256":
        if plan == "overlap":
            return [Stage(), PushNew(overlap=True), Validate()], [RemovePrevious(), Promote()]
        return [Stage(), PushNew(overlap=False), Validate(), Promote(), *compromise_tail], []
    if spec.kind == "external":
        return [Stage(), PushNew(overlap=False), Validate(), Promote(), Checklist()], []
    return [Stage(), PushNew(overlap=False), Validate(), Promote()], []


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
