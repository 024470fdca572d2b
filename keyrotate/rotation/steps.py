"""The steps of a rotation: small objects with a name, a description and run().

Every step is idempotent: a re-run after a crash or a paused step repeats nothing that
took effect. A step that cannot pass yet raises Incomplete (exit 3, run again).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from keyrotate.config.context import Context
from keyrotate.config.manifest import SecretSpec
from keyrotate.controlplane.canary import Canary
from keyrotate.controlplane.health import validate
from keyrotate.controlplane.pushes import Pusher
from keyrotate.dataplane.objects.driver import ObjectsOptions
from keyrotate.dataplane.outcome import OBJECTS, Outcome
from keyrotate.errors import ConfigError, Failures, Incomplete, KeyrotateError
from keyrotate.evidence.event import Event
from keyrotate.evidence.lifecycle import identify
from keyrotate.evidence.record import audit_key
from keyrotate.progress import Say
from keyrotate.rotation.restore_point import record_before_row_writes
from keyrotate.rotation.state import Recorder, Rotation
from keyrotate.secrets.base import fingerprint, same_secret, same_value
from keyrotate.secrets.keygen import generate
from keyrotate.secrets.strength import weakness
from keyrotate.targets.secret_targets import KeyRefs, SecretTargets

log = logging.getLogger("keyrotate.rotate")


@dataclass
class Job:
    """What the steps of one rotation work with."""

    ctx: Context
    spec: SecretSpec
    rot: Rotation
    say: Say
    read_external: Callable[[], str] | None = None
    objects: ObjectsOptions = ObjectsOptions()   # for object targets
    pusher: Pusher | None = None
    canary: Canary | None = None
    recorder: Recorder | None = None
    force: bool = False                 # --force: past the JWT token TTL

    def pushes(self) -> Pusher:
        if self.pusher is None:
            self.pusher = Pusher(self.ctx, self.say)
        return self.pusher

    def values(self) -> tuple[str | None, str]:
        """(current, pending) from the store; the pending value must exist."""
        store, name = self.ctx.secrets, self.spec.name
        pending = store.read(name, "pending")
        if pending is None:
            raise KeyrotateError(f"no pending value for {name}: the rotation state and the store "
                                 f"disagree ({store.ref(name, 'pending')})")
        return store.read(name), pending

    def holders(self) -> list[str]:
        return self.ctx.manifest.workers_holding(self.spec.name)

    @property
    def aborting(self) -> bool:
        """An abort runs the rotation backwards: rows go from the new value to the old."""
        return self.rot.state == "aborting"

    def text(self, template: str) -> str:
        return template.replace("NAME", self.spec.name).replace(
            "PREVIOUS", self.spec.previous or "PREVIOUS")


class Step(Protocol):
    name: str
    description: str   # NAME and PREVIOUS stand for the secret's names

    def run(self, job: Job) -> None: ...


class Stage:
    name = "stage"
    description = "generate the new value and store it as pending (before anything else changes)"

    def run(self, job: Job) -> None:
        store, spec = job.ctx.secrets, job.spec
        if store.read(spec.name, "pending") is None:
            if spec.kind == "external":
                if job.read_external is None:
                    raise ConfigError(f"{spec.name} is external: give the new value on stdin")
                value = job.read_external()
                check_strength(spec, value)
            else:
                fmt, _, n = (spec.generate or "base64:32").partition(":")
                value = generate(fmt, int(n))
            check_format(spec, value, "the new value")
            store.write_pending(spec.name, value)
        old, new = job.values()
        check_format(spec, new, f"the pending value at {store.ref(spec.name, 'pending')}")
        job.rot.old_fp = fingerprint(old, audit_key(job.ctx)) if old else None
        job.rot.new_fp = fingerprint(new, audit_key(job.ctx))


def check_strength(spec: SecretSpec, value: str) -> None:
    """An external secret typed in (a provider's client secret) that is obviously weak is
    refused before it is stored or pushed; a doubtful one is warned about."""
    found = weakness(value)
    if found and found[0] == "refuse":
        raise ConfigError(f"the new value for {spec.name} {found[1]}. Nothing was changed: "
                          "generate a new secret in the provider's console.")
    if found:
        log.warning("the new value for %s %s", spec.name, found[1])


def check_format(spec: SecretSpec, value: str, what: str) -> None:
    """A value the application would refuse never reaches a store slot or a Worker."""
    problem = spec.format.problem(value) if spec.format else None
    if problem:
        raise ConfigError(f"{what} for {spec.name} {problem}; the manifest says format = "
                          f"{str(spec.format)!r}. Nothing was changed.")


class Validate:
    description = "check every Worker's health"

    def __init__(self, name: str = "validate"):
        self.name = name

    def run(self, job: Job) -> None:
        health = validate(job.ctx)
        job.rot.detail["health"] = [h.as_dict() for h in health.workers]
        if not health.ok:
            raise Incomplete(f"health check failed ({', '.join(health.failing)}); fix it and run "
                             "the same command again to resume")


def targets(job: Job) -> SecretTargets:
    """Every [[encrypted]] target of this rotation: from the current key (and any more old
    keys it inherited) to the pending one; objects carry the rotation id to their ledger.
    An abort goes the other way, under a ledger id of its own."""
    store, name = job.ctx.secrets, job.spec.name
    also = tuple(store.ref(name, slot) for slot in job.rot.detail.get("also_old", []))
    if job.aborting:
        keys = KeyRefs(store.ref(name), store.ref(name, "pending"), also)
        return SecretTargets(job.ctx, name, keys, job.objects, f"{job.rot.rotation_id}-abort")
    keys = KeyRefs(store.ref(name, "pending"), store.ref(name), also)
    return SecretTargets(job.ctx, name, keys, job.objects, job.rot.rotation_id)


def reencrypt_targets(job: Job, key: str, only_objects: dict[str, list[str]] | None = None) -> None:
    """Every target from the current key to the pending one, outcomes under
    rot.detail[key]: columns row by row, objects through the Worker. `only_objects`: a
    sweep sends just these object ids again, ledger or not (and every column again)."""
    mode = "fresh-dek" if job.rot.compromised else "rewrap"
    if job.recorder is not None and job.ctx.manifest.columns_of(job.spec.name):
        record_before_row_writes(job.ctx, job.recorder, job.rot, forward=not job.aborting)
    results: dict[str, Any] = {}
    unfinished = []
    for target in targets(job):
        only = None if only_objects is None else only_objects.get(target.name)
        if only == []:
            continue
        where = "back to the old key" if job.aborting else "to the new key"
        job.say(f"moving {target.name} {where} ({mode})")
        outcome = target.rewrap(mode, only)
        results[target.name] = outcome.as_dict()
        if outcome.stale or outcome.unreached:
            unfinished.append(f"{target.name}: {outcome.stale} still on the old key, "
                              f"{outcome.unreached} kept busy")
    job.rot.detail[key] = results
    if unfinished:
        raise Incomplete(f"objects not done yet ({'; '.join(unfinished)}): a Durable Object keeps "
                         "the secrets of the version it started with for a while. Run the same "
                         "command again in a few minutes.")


Requirement = Callable[[Job], None]


class Reencrypt:
    def __init__(self, name: str = "reencrypt",
                 description: str = "reencrypt every [[encrypted]] target from the old key to "
                                    "the new key (objects through the Worker)",
                 requires: Requirement | None = None):
        self.name, self.description, self.requires = name, description, requires

    def run(self, job: Job) -> None:
        if self.requires is not None:
            self.requires(job)
        reencrypt_targets(job, self.name)


def census(job: Job) -> dict[str, Outcome]:
    """A census of every target, now (rows may have changed since any reencrypt ended)."""
    return {target.name: target.census() for target in targets(job)}


class Verify:
    """Verified means a census with no row or object under an old key and none that
    fails. Rows the Workers wrote under the old key meanwhile, and objects a census finds
    under it (whatever the ledger says), are swept once more here, so a re-run of this step
    can always make progress; failed rows and objects must be fixed first (exit 1)."""

    def __init__(self, name: str = "verify",
                 description: str = "verify no row or object depends on the old key and none fails",
                 requires: Requirement | None = None):
        self.name, self.description, self.requires = name, description, requires

    def run(self, job: Job) -> None:
        if self.requires is not None:
            self.requires(job)
        outcomes = census(job)
        if any(o.still_old for o in outcomes.values()):
            job.say("rows or objects still under the old key: sweeping them")
            reencrypt_targets(job, "sweep", only_objects={t: o.behind for t, o in outcomes.items()
                                                          if o.unit == OBJECTS})
            outcomes = census(job)
        job.rot.detail["verify"] = {t: o.as_dict() for t, o in outcomes.items()}
        still = {t: o.still_old for t, o in outcomes.items() if o.still_old}
        if still:
            raise Incomplete(f"still depending on the old key: {still}; the old key is "
                             "kept. Run the same command again to sweep and verify again.")
        failed = {t: o for t, o in outcomes.items() if o.failed}
        if failed:
            listed = "; ".join(f"{t}: {o.failed}, e.g. " + ", ".join(
                f"{f['id']} ({f['reason']})" for f in o.failures[:5]) for t, o in failed.items())
            raise Failures(f"not verified: rows or objects open under no key ({listed}). The "
                           "old key is kept. Fix or remove them (keyrotate verify / objects "
                           "census --json list them all), then run the same command again.")


class Promote:
    name = "promote"
    description = "promote the new value to current in the store, keeping the old as previous"

    def run(self, job: Job) -> None:
        store, name = job.ctx.secrets, job.spec.name
        pending = store.read(name, "pending")
        if pending is not None:
            replaced, current = store.read(name, "previous"), store.read(name)
            # a promote of a store that takes several writes (keyring), stopped midway and
            # resumed: previous already holds the old current value, or current the new one;
            # the value it replaced is not in the previous slot any more
            resumed = current is not None and (same_value(current, pending) or (
                replaced is not None and same_value(replaced, current)))
            if replaced is not None and not resumed:   # one previous slot: the trail says so
                key = identify(name, job.spec.kind, replaced, audit_key(job.ctx))
                job.rot.detail["replaced_previous"] = {"fingerprint": key.fingerprint,
                                                       "kid": key.kid}
            if job.recorder is not None and not resumed:
                _before_the_store_changes(job)
            store.promote(name)
        _check_promoted(job)


def _before_the_store_changes(job: Job) -> None:
    """Write-ahead, before the promote changes the store: the records still waiting to
    ride with the next append (the steps before it, which need the pending value: a kill
    inside the promote must not send the next run back to them) and the previous value
    the store is about to drop (its destruction then has its evidence)."""
    assert job.recorder is not None
    rot = job.rot
    replaced = rot.detail.get("replaced_previous")
    job.recorder.saved(rot, Event(
        "rotation.promoting", rot.environment, f"{rot.secret} rotation {rot.rotation_id}: "
        "promoting the new value in the store" + (
            f", which drops the previous value {replaced['fingerprint']}" if replaced else ""),
        rot.secret, rot.rotation_id, "promote", rot.old_fp, rot.new_fp,
        {"replaced_previous": replaced} if replaced else {}))


def _check_promoted(job: Job) -> None:
    """Read back, not believed: the store's current value is the rotation's new one (a
    write lost to another program changing the store would otherwise end in exit 0, with
    every row under a value left pending)."""
    store, name = job.ctx.secrets, job.spec.name
    current = store.read(name)
    if current is not None and same_secret(current, job.rot.new_fp, audit_key(job.ctx)):
        return
    if store.read(name, "pending") is not None:
        raise Incomplete(f"{store.ref(name)} does not hold the new value after the promote "
                         "(something else changed the store meanwhile): run the same command "
                         "again")
    raise ConfigError(f"{store.ref(name)} holds neither the rotation's new value nor a pending "
                      f"one ({job.rot.new_fp} is the new value's fingerprint): the store was "
                      "changed outside keyrotate; put the new value back as pending, then run "
                      "the same command again")


class Discard:
    name = "abort-discard"
    description = "discard the aborted value from the store (no row, object or Worker needs it now)"

    def run(self, job: Job) -> None:
        job.ctx.secrets.discard_pending(job.spec.name)


class Report:
    name = "report"
    description = "write the incident report (JSON and Markdown)"

    def run(self, job: Job) -> None:
        from keyrotate.rotation.incident import write_report

        paths = write_report(job.ctx, job.rot)
        job.rot.detail["report"] = [str(p) for p in paths]
        job.say(f"incident report: {paths[1]}")
        if job.recorder is not None:
            rot = job.rot
            job.recorder.evidence.record(Event(
                "incident.report", rot.environment, f"incident report for the compromised "
                f"{rot.secret} on {rot.environment} written ({paths[1].name}); old value "
                f"{rot.old_fp} retired.", rot.secret, rot.rotation_id, self.name, rot.old_fp,
                rot.new_fp, {"report": [p.name for p in paths],
                             "restore_point": rot.detail.get("time_travel")}))


class Checklist:
    name = "checklist"
    description = "print the provider-console checklist"

    def run(self, job: Job) -> None:
        holders = ", ".join(job.ctx.worker_name(w) for w in job.holders())
        job.rot.detail["checklist"] = [
            f"The new {job.spec.name} is stored and pushed to {holders}.",
            "In the provider's console, revoke the old client secret now that the Workers "
            "use the new one.",
            "Sign in once through the app to check the OAuth flow end to end.",
        ]
