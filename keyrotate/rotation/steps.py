"""The steps of a rotation: small objects with a name, a description and run().

Every step is idempotent: a re-run after a crash or a paused step repeats nothing that
took effect. A step that cannot pass yet raises Incomplete (exit 3, run again).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

from keyrotate.controlplane.context import Context
from keyrotate.controlplane.canary import Canary, canary_push
from keyrotate.controlplane.events import Say
from keyrotate.controlplane.pushes import Pusher
from keyrotate.controlplane.health import validate
from keyrotate.controlplane.manifest import SecretSpec
from keyrotate.controlplane.objects_cmd import objects_census, objects_rewrap
from keyrotate.dataplane.objects.driver import ObjectsOptions
from keyrotate.dataplane.reencrypt import ReencryptOptions, reencrypt
from keyrotate.dataplane.verify import Census, verify
from keyrotate.errors import ConfigError, Failures, Incomplete, KeyrotateError
from keyrotate.evidence.event import Event
from keyrotate.rotation.restore_point import record_restore_point
from keyrotate.rotation.state import Recorder, Rotation
from keyrotate.rotation.targets import each_target
from keyrotate.secrets.base import fingerprint
from keyrotate.secrets.keygen import generate
from keyrotate.timeutil import now_iso

RUN_FIELDS = ("run_id", "rows_scanned", "rows_rewritten", "rows_already_current", "rows_failed",
              "rows_null")
LISTED = 20


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
            else:
                fmt, _, n = (spec.generate or "base64:32").partition(":")
                value = generate(fmt, int(n))
            check_format(spec, value, "the new value")
            store.write_pending(spec.name, value)
        old, new = job.values()
        check_format(spec, new, f"the pending value at {store.ref(spec.name, 'pending')}")
        job.rot.old_fp = fingerprint(old) if old else None
        job.rot.new_fp = fingerprint(new)


def check_format(spec: SecretSpec, value: str, what: str) -> None:
    """A value the application would refuse never reaches a store slot or a Worker."""
    problem = spec.format.problem(value) if spec.format else None
    if problem:
        raise ConfigError(f"{what} for {spec.name} {problem}; the manifest says format = "
                          f"{str(spec.format)!r}. Nothing was changed.")


class PushNew:
    """NAME=new to every Worker holding it, one Worker at a time; with `overlap`, also
    PREVIOUS=old in the same version, so the Workers read both keys."""

    def __init__(self, overlap: bool):
        self.overlap = overlap
        self.name = "push-overlap" if overlap else "push"
        self.description = ("push NAME=new and PREVIOUS=old to every Worker holding it, one bulk "
                            "update each" if overlap else
                            "push NAME=new to every Worker holding it, one at a time")

    def run(self, job: Job) -> None:
        old, new = job.values()
        values: dict[str, str | None] = {job.spec.name: new}
        if self.overlap and old and job.spec.previous:
            values[job.spec.previous] = old
        pusher = job.pushes()
        pusher.check(job.holders())   # every Worker can take it, before the first push
        pushed_at = None
        for worker in job.holders():
            if job.canary is not None:
                at = canary_push(job.ctx, pusher, worker, values, job.canary, job.say)
            else:
                at = pusher.push(worker, values)
            pushed_at = pushed_at or at
        job.rot.detail["pushed_at"] = pushed_at or now_iso()


class Validate:
    name = "validate"
    description = "check every Worker's health"

    def run(self, job: Job) -> None:
        health = validate(job.ctx)
        job.rot.detail["health"] = [h.as_dict() for h in health.workers]
        if not health.ok:
            raise Incomplete(f"health check failed ({', '.join(health.failing)}); fix it and run "
                             "the same command again to resume")


def _refs(job: Job) -> tuple[str, str, list[str]]:
    """(new, old, more old) key references of this rotation, from the store's slots."""
    store, name = job.ctx.secrets, job.spec.name
    also = [store.ref(name, slot) for slot in job.rot.detail.get("also_old", [])]
    return store.ref(name, "pending"), store.ref(name), also


def _census_counts(c: Census) -> dict[str, Any]:
    return {"rows": c.rows, "ok": c.ok, "old": c.old, "null": c.null, "failed": c.failed,
            "unreached": c.unreached, "failures": c.failures[:LISTED]}


OBJECT_FIELDS = ("run_id", "status", "objects_scanned", "objects_rewrapped",
                 "objects_already_current", "objects_missing", "objects_stale", "objects_failed",
                 "requests")


def reencrypt_targets(job: Job, key: str, only_objects: dict[str, list[str]] | None = None) -> None:
    """Every [[encrypted]] target from the current key to the pending one, counts under
    rot.detail[key]: columns row by row, objects through the Worker (the rotation id is
    the ledger's). `only_objects`: a sweep sends just these ids again, ledger or not."""
    new, old, also = _refs(job)
    mode = "fresh-dek" if job.rot.compromised else "rewrap"
    if job.recorder is not None and job.ctx.manifest.columns_of(job.spec.name):
        record_restore_point(job.ctx, job.recorder, job.rot)   # before the first row write
    results: dict[str, Any] = {}
    for t, target, codec in each_target(job.ctx, job.spec.name, new, old, mode, also, writing=True):
        job.say(f"reencrypting {t.name} ({mode})")
        # no census here: the verify step's census, which always follows, is the proof
        r = reencrypt(job.ctx.db, target, codec,
                      ReencryptOptions(fmt=t.format, mode=mode, census=False))
        results[t.name] = {k: v for k, v in r.as_dict().items() if k in RUN_FIELDS}
    unfinished = []
    for obj in job.ctx.manifest.objects_of(job.spec.name):
        only = None if only_objects is None else only_objects.get(obj.name, [])
        if only == []:
            continue
        job.say(f"rewrapping {obj.name} objects through the Worker")
        o = objects_rewrap(job.ctx, obj, job.objects, rotation_id=job.rot.rotation_id,
                           only=only)
        results[obj.name] = {k: v for k, v in o.as_dict().items() if k in OBJECT_FIELDS}
        if o.status == "incomplete":
            unfinished.append(f"{obj.name}: {len(o.stale)} still on the old key, "
                              f"{len(o.unfinished)} kept busy")
    job.rot.detail[key] = results
    if unfinished:
        raise Incomplete(f"objects not done yet ({'; '.join(unfinished)}): a Durable Object keeps "
                         "the secrets of the version it started with for a while. Run the same "
                         "command again in a few minutes.")


class Reencrypt:
    def __init__(self, name: str = "reencrypt",
                 description: str = "reencrypt every [[encrypted]] target from the old key to "
                                    "the new key (objects through the Worker)"):
        self.name, self.description = name, description

    def run(self, job: Job) -> None:
        reencrypt_targets(job, self.name)


def census(job: Job) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """A census of every target, now (rows may have changed since any reencrypt ended):
    counts per target, and per object target the ids under the old key or stale."""
    new, old, also = _refs(job)
    counts = {t.name: _census_counts(verify(job.ctx.db, target, codec))
              for t, target, codec in each_target(job.ctx, job.spec.name, new, old, "rewrap", also)}
    behind: dict[str, list[str]] = {}
    for obj in job.ctx.manifest.objects_of(job.spec.name):
        c = objects_census(job.ctx, obj, job.objects)
        counts[obj.name] = {**{k: v for k, v in c.as_dict().items()
                               if k in ("objects", "current", "old", "stale", "missing", "failed",
                                        "unanswered")},
                            "failures": c.as_dict()["failures"][:LISTED]}
        behind[obj.name] = c.behind
    return counts, behind


def _still_old(c: dict[str, Any]) -> int:
    """Rows or objects that still need the old key, or that the census could not see."""
    return c["old"] + c.get("unreached", 0) + c.get("stale", 0) + c.get("unanswered", 0)


class Verify:
    """Verified means a census with no row or object under an old key and none that
    fails. Rows the Workers wrote under the old key meanwhile, and objects a census finds
    under it (whatever the ledger says), are swept once more here, so a re-run of this step
    can always make progress; failed rows and objects must be fixed first (exit 1)."""

    def __init__(self, name: str = "verify",
                 description: str = "verify no row or object depends on the old key and none fails"):
        self.name, self.description = name, description

    def run(self, job: Job) -> None:
        counts, behind = census(job)
        if any(_still_old(c) for c in counts.values()):
            job.say("rows or objects still under the old key: sweeping them")
            reencrypt_targets(job, "sweep", only_objects=behind)
            counts, behind = census(job)
        job.rot.detail["verify"] = counts
        still = {t: _still_old(c) for t, c in counts.items() if _still_old(c)}
        if still:
            raise Incomplete(f"still depending on the old key: {still}; the old key is "
                             "kept. Run the same command again to sweep and verify again.")
        failed = {t: c for t, c in counts.items() if c["failed"]}
        if failed:
            listed = "; ".join(f"{t}: {c['failed']}, e.g. " + ", ".join(
                f"{f['id']} ({f['reason']})" for f in c["failures"][:5]) for t, c in failed.items())
            raise Failures(f"not verified: rows or objects open under no key ({listed}). The "
                           "old key is kept. Fix or remove them (keyrotate verify / objects "
                           "census --json list them all), then run the same command again.")


class Promote:
    name = "promote"
    description = "promote the new value to current in the store, keeping the old as previous"

    def run(self, job: Job) -> None:
        if job.ctx.secrets.read(job.spec.name, "pending") is not None:
            job.ctx.secrets.promote(job.spec.name)


class RemovePrevious:
    name = "remove-previous"
    description = "remove PREVIOUS from the Workers"

    def run(self, job: Job) -> None:
        prev = job.spec.previous
        if not prev:
            return
        holding = [w for w in job.holders()
                   if prev in job.ctx.wrangler.secret_names(job.ctx.worker_name(w))]
        pusher = job.pushes()
        pusher.check(holding)
        for worker in holding:
            pusher.push(worker, {prev: None})


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


CATCH_UP = Reencrypt("catch-up", "sweep again for rows the Workers wrote with the old key meanwhile")
RE_VERIFY = Verify("re-verify", "verify again that no row depends on the old key (sweeping any "
                                "that came back)")
