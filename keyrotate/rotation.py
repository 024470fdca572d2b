"""`keyrotate rotate SECRET --env ENV`: one rotation, start to finish, as a persisted,
resumable state machine (AWS Secrets Manager's create / set / test / finish is the model).

Each kind of secret has its own safe order of steps. A step is idempotent; after each
one the rotation row (environment database) and the audit log (JSON lines, fingerprints
only) are updated, so a re-run continues where the last one stopped. The new value is
written to the store as *pending* before anything else, and the old value is only given
up (promoted to *previous*) after verify shows no row depends on it.
"""

from __future__ import annotations

import json
import os
import secrets as pysecrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from keyrotate.control import Context, record_events, validate
from keyrotate.engine.migrations import ensure_journal_schema
from keyrotate.errors import ConfigError, Incomplete, KeyrotateError
from keyrotate.keygen import generate
from keyrotate.manifest import SecretSpec
from keyrotate.secrets.base import SecretStore, fingerprint
from keyrotate.store.base import Statement
from keyrotate.timeutil import now_iso, parse_utc

Say = Callable[[str], None]
OPEN_STATES = ("in-progress", "awaiting-finish")

STEP_TEXT = {
    "stage": "generate the new value and store it as pending (before anything else changes)",
    "push-overlap": "push NAME=new and PREVIOUS=old to every Worker holding it, one bulk update each",
    "push": "push NAME=new to every Worker holding it, one at a time",
    "validate": "check every Worker's health",
    "reencrypt": "reencrypt every [[encrypted]] target from the old key to the new key",
    "catch-up": "sweep again for rows the Workers wrote with the old key meanwhile",
    "verify": "verify no row depends on the old key",
    "re-verify": "verify again that no row depends on the old key (sweeping any that came back)",
    "promote": "promote the new value to current in the store, keeping the old as previous",
    "remove-previous": "remove PREVIOUS from the Workers",
    "report": "write the incident report (JSON and Markdown)",
    "checklist": "print the provider-console checklist",
}


@dataclass
class Rotation:
    rotation_id: str
    environment: str
    secret: str
    kind: str
    plan: str
    compromised: bool
    state: str
    steps_done: list[str] = field(default_factory=list)
    old_fp: str | None = None
    new_fp: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    started_at: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"rotation_id": self.rotation_id, "env": self.environment, "secret": self.secret,
                "kind": self.kind, "plan": self.plan, "compromised": self.compromised,
                "state": self.state, "steps_done": self.steps_done, "old_fingerprint": self.old_fp,
                "new_fingerprint": self.new_fp, "detail": self.detail, "started_at": self.started_at}


def steps_for(spec: SecretSpec, plan: str, compromised: bool) -> tuple[list[str], list[str]]:
    """(steps up to the pause or the end, steps of --finish)."""
    if spec.kind == "master-key":
        if plan == "overlap":
            # the pause may last days: verify again (and sweep) before the Workers lose PREVIOUS
            return (["stage", "push-overlap", "validate", "reencrypt", "verify"],
                    ["re-verify", "remove-previous", "promote"])
        tail = ["remove-previous", "report"] if compromised else []
        return ["stage", "reencrypt", "push", "validate", "catch-up", "verify", "promote", *tail], []
    if spec.kind == "jwt-hs256":
        if plan == "overlap":
            return ["stage", "push-overlap", "validate"], ["remove-previous", "promote"]
        tail = ["remove-previous", "report"] if compromised else []
        return ["stage", "push", "validate", "promote", *tail], []
    if spec.kind == "external":
        return ["stage", "push", "validate", "promote", "checklist"], []
    return ["stage", "push", "validate", "promote"], []


def plan_of(spec: SecretSpec, compromised: bool) -> str:
    """Overlap when the Workers read a previous value, except after a compromise."""
    return "overlap" if spec.previous and not compromised and spec.kind in ("master-key", "jwt-hs256") \
        else "cutover"


# --- persistence ---------------------------------------------------------------------------

_COLS = ("rotation_id", "environment", "secret", "kind", "plan", "compromised", "state",
         "steps_done", "old_fp", "new_fp", "detail", "started_at")


def load_open(ctx: Context, secret: str) -> Rotation | None:
    store = ctx.open_db()
    try:
        ensure_journal_schema(store)
        rows = store.query(f"SELECT {', '.join(_COLS)} FROM keyrotate_rotations WHERE environment = ? "
                           "AND secret = ? AND state IN (?, ?) ORDER BY started_at DESC LIMIT 1",
                           (ctx.env.name, secret, *OPEN_STATES))
    finally:
        store.close()
    if not rows:
        return None
    r = dict(zip(_COLS, rows[0], strict=True))
    return Rotation(r["rotation_id"], r["environment"], r["secret"], r["kind"], r["plan"],
                    bool(r["compromised"]), r["state"], json.loads(r["steps_done"]), r["old_fp"],
                    r["new_fp"], json.loads(r["detail"]), r["started_at"])


def open_rotations(ctx: Context) -> list[dict[str, Any]]:
    store = ctx.open_db()
    try:
        ensure_journal_schema(store)
        rows = store.query("SELECT secret, state, rotation_id, started_at FROM keyrotate_rotations "
                           "WHERE environment = ? AND state IN (?, ?)", (ctx.env.name, *OPEN_STATES))
    finally:
        store.close()
    return [{"secret": r[0], "state": r[1], "rotation_id": r[2], "started_at": r[3]} for r in rows]


def save(ctx: Context, rot: Rotation, finished: bool = False) -> None:
    store = ctx.open_db()
    try:
        ensure_journal_schema(store)
        now = now_iso()
        store.apply([], None, [Statement(
            "INSERT INTO keyrotate_rotations (rotation_id, environment, secret, kind, plan, compromised, "
            "state, steps_done, old_fp, new_fp, detail, started_at, updated_at, finished_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (rotation_id) DO UPDATE SET "
            "state = excluded.state, steps_done = excluded.steps_done, old_fp = excluded.old_fp, "
            "new_fp = excluded.new_fp, detail = excluded.detail, updated_at = excluded.updated_at, "
            "finished_at = excluded.finished_at",
            (rot.rotation_id, rot.environment, rot.secret, rot.kind, rot.plan, int(rot.compromised),
             rot.state, json.dumps(rot.steps_done), rot.old_fp, rot.new_fp, json.dumps(rot.detail),
             rot.started_at, now, now if finished else None))])
    finally:
        store.close()


def audit(ctx: Context, rot: Rotation, event: str, **extra: Any) -> None:
    """Append-only JSON lines beside the manifest: what happened, when, fingerprints only."""
    folder = ctx.manifest.root / ".keyrotate"
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / f"audit-{ctx.env.name}.jsonl"
    line = json.dumps({"at": now_iso(), "env": ctx.env.name, "rotation_id": rot.rotation_id,
                       "secret": rot.secret, "event": event, "old_fingerprint": rot.old_fp,
                       "new_fingerprint": rot.new_fp, **extra})
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


# --- the steps ---------------------------------------------------------------------------

class Steps:
    """Every step of every plan; each is safe to run again."""

    def __init__(self, ctx: Context, spec: SecretSpec, rot: Rotation, say: Say,
                 read_external: Callable[[], str] | None):
        self.ctx, self.spec, self.rot, self.say = ctx, spec, rot, say
        self.store: SecretStore = ctx.secret_store()
        self.read_external = read_external

    def _values(self) -> tuple[str | None, str]:
        pending = self.store.read(self.spec.name, "pending")
        if pending is None:
            raise KeyrotateError(f"no pending value for {self.spec.name}: the rotation state and "
                                 f"the store disagree ({self.store.ref(self.spec.name, 'pending')})")
        return self.store.read(self.spec.name), pending

    def _holders(self) -> list[str]:
        return self.ctx.manifest.workers_holding(self.spec.name)

    def stage(self) -> None:
        if self.store.read(self.spec.name, "pending") is None:
            if self.spec.kind == "external":
                if self.read_external is None:
                    raise ConfigError(f"{self.spec.name} is external: give the new value on stdin")
                value = self.read_external()
            else:
                fmt, _, n = (self.spec.generate or "base64:32").partition(":")
                value = generate(fmt, int(n))
            self.store.write_pending(self.spec.name, value)
        old, new = self.store.read(self.spec.name), self._values()[1]
        self.rot.old_fp = fingerprint(old) if old else None
        self.rot.new_fp = fingerprint(new)

    def _push(self, values_for: Callable[[str, str | None], dict[str, str]]) -> None:
        old, new = self._values()
        pushed_at = now_iso()  # before the push: the versions it makes are newer
        for worker in self._holders():  # one Worker at a time
            full, values = self.ctx.full(worker), values_for(new, old)
            self.say(f"pushing {', '.join(sorted(values))} to {full}")
            if len(values) == 1:
                (name, value), = values.items()
                self.ctx.wrangler.secret_put(full, name, value)
            else:
                self.ctx.wrangler.secret_bulk(full, values)
            record_events(self.ctx, [{"worker": full, "kind": "secret-push", "secret": n, "at": pushed_at,
                                      "secret_kind": self.spec.kind, "fingerprint": fingerprint(v)}
                                     for n, v in values.items()])
        self.rot.detail["pushed_at"] = pushed_at

    def push_overlap(self) -> None:
        prev = self.spec.previous
        assert prev is not None

        def values(new: str, old: str | None) -> dict[str, str]:
            return {self.spec.name: new, **({prev: old} if old else {})}

        self._push(values)

    def push(self) -> None:
        self._push(lambda new, old: {self.spec.name: new})

    def validate(self) -> None:
        health = validate(self.ctx)
        self.rot.detail["health"] = health["workers"]
        if not health["ok"]:
            bad = ", ".join(w["worker"] for w in health["workers"] if not w["ok"])
            raise Incomplete(f"health check failed ({bad}); fix it and run the same command "
                             "again to resume")

    def reencrypt(self, key: str = "reencrypt") -> None:
        from keyrotate.engine.reencrypt import ReencryptOptions, reencrypt
        from keyrotate.keys_from_refs import codec_from_refs
        from keyrotate.store.base import resolve_target

        results = {}
        db = self.ctx.open_db()
        try:
            for t in self.ctx.manifest.targets_of(self.spec.name):
                mode = "fresh-dek" if self.rot.compromised else "rewrap"
                codec = codec_from_refs(t.format, self.store.ref(self.spec.name, "pending"),
                                        self.store.ref(self.spec.name), mode)
                self.say(f"reencrypting {t.spec} ({mode})")
                r = reencrypt(db, resolve_target(db, t.spec, t.key_column), codec,
                              ReencryptOptions(fmt=t.format, mode=mode)).as_dict()
                results[t.spec] = {k: r[k] for k in ("run_id", "rows_scanned", "rows_rewritten",
                                                     "rows_already_current", "rows_failed", "rows_null")}
        finally:
            db.close()
        self.rot.detail[key] = results

    def catch_up(self) -> None:
        self.reencrypt("catch-up")

    def _census(self) -> dict[str, dict[str, int]]:
        from keyrotate.engine.verify import verify
        from keyrotate.keys_from_refs import codec_from_refs
        from keyrotate.store.base import resolve_target

        census = {}
        db = self.ctx.open_db()
        try:
            for t in self.ctx.manifest.targets_of(self.spec.name):
                codec = codec_from_refs(t.format, self.store.ref(self.spec.name, "pending"),
                                        self.store.ref(self.spec.name))
                c = verify(db, resolve_target(db, t.spec, t.key_column), codec).as_dict()
                census[t.spec] = {k: c[k] for k in ("rows", "ok", "old", "null", "failed")}
        finally:
            db.close()
        return census

    def verify(self) -> None:
        """No row may depend on the old key. Rows the Workers wrote under it meanwhile are
        swept once more here, so a re-run of this step can always make progress."""
        census = self._census()
        if any(c["old"] for c in census.values()):
            self.say("rows still under the old key: sweeping them")
            self.reencrypt("sweep")
            census = self._census()
        self.rot.detail["verify"] = census
        still_old = {t: c["old"] for t, c in census.items() if c["old"]}
        if still_old:
            raise Incomplete(f"rows still depend on the old key: {still_old}; the old key is "
                                 "kept. Run the same command again to sweep and verify again.")

    def re_verify(self) -> None:
        self.verify()

    def promote(self) -> None:
        if self.store.read(self.spec.name, "pending") is not None:
            self.store.promote(self.spec.name)

    def remove_previous(self) -> None:
        prev = self.spec.previous
        if not prev:
            return
        for worker in self._holders():
            full = self.ctx.full(worker)
            if prev in self.ctx.wrangler.secret_names(full):
                self.say(f"removing {prev} from {full}")
                self.ctx.wrangler.secret_delete(full, prev)

    def report(self) -> None:
        from keyrotate.incident import write_report

        paths = write_report(self.ctx, self.rot)
        self.rot.detail["report"] = [str(p) for p in paths]
        self.say(f"incident report: {paths[1]}")

    def checklist(self) -> None:
        holders = ", ".join(self.ctx.full(w) for w in self._holders())
        self.rot.detail["checklist"] = [
            f"The new {self.spec.name} is stored and pushed to {holders}.",
            "In the provider's console, revoke the old client secret now that the Workers "
            "use the new one.",
            "Sign in once through the app to check the OAuth flow end to end.",
        ]

    def run(self, step: str) -> None:
        getattr(self, step.replace("-", "_"))()


# --- the driver -----------------------------------------------------------------------------

def rotate(ctx: Context, secret: str, *, compromised: bool = False, dry_run: bool = False,
           yes: bool = False, finish: bool = False, force: bool = False, abort: bool = False,
           read_external: Callable[[], str] | None = None, say: Say = print) -> dict[str, Any]:
    spec = ctx.manifest.secret(secret)
    rot = load_open(ctx, secret)
    if rot is None and (finish or abort):
        raise ConfigError(f"no {secret} rotation in progress on {ctx.env.name}")
    plan = rot.plan if rot else plan_of(spec, compromised)
    compromised = rot.compromised if rot else compromised
    first, finishing = steps_for(spec, plan, compromised)
    warning = _cutover_warning(spec, plan, compromised)

    if dry_run:
        todo = finishing if finish else first
        done = rot.steps_done if rot else []
        return {"env": ctx.env.name, "secret": secret, "dry_run": True, "plan": plan,
                "compromised": compromised, "warning": warning,
                "steps": [{"step": s, "what": STEP_TEXT[s].replace("NAME", secret).replace(
                    "PREVIOUS", spec.previous or "PREVIOUS"), "done": s in done} for s in todo]}
    if abort:
        return _abort(ctx, rot, say)  # type: ignore[arg-type]
    if warning and not yes and rot is None:
        raise ConfigError(f"{warning} Nothing was changed: re-run with --yes to go ahead.")
    if rot is None:
        rot = Rotation("rot-" + datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S") + "-" +
                       pysecrets.token_hex(3), ctx.env.name, secret, spec.kind, plan, compromised,
                       "in-progress", started_at=now_iso())
        save(ctx, rot)
        audit(ctx, rot, "started", plan=plan, compromised=compromised)
    if rot.state == "awaiting-finish" and not finish:
        return _result(rot, f"{secret} on {ctx.env.name} is waiting for --finish "
                            f"(run: keyrotate rotate {secret} --env {ctx.env.name} --finish)")
    if finish:
        if rot.state != "awaiting-finish":
            raise ConfigError(f"the {secret} rotation is not ready to finish (state {rot.state})")
        _check_token_ttl(spec, rot, force)
        steps = finishing
    else:
        steps = first
    runner = Steps(ctx, spec, rot, say, read_external)
    for step in steps:
        if step in rot.steps_done:
            continue
        say(f"[{secret}] {step}: {STEP_TEXT[step].replace('NAME', secret)}")
        runner.run(step)
        rot.steps_done.append(step)
        save(ctx, rot)
        audit(ctx, rot, step, detail={k: v for k, v in rot.detail.items() if k != "health"})
    done = finish or not finishing
    rot.state = "finished" if done else "awaiting-finish"
    save(ctx, rot, finished=done)
    audit(ctx, rot, rot.state)
    note = (f"{secret} rotated on {ctx.env.name}." if done else
            f"{secret} rotated and verified; the Workers still accept the previous value. When ready: "
            f"keyrotate rotate {secret} --env {ctx.env.name} --finish")
    return _result(rot, note)


def _result(rot: Rotation, note: str) -> dict[str, Any]:
    return {**rot.as_dict(), "dry_run": False, "note": note}


def _cutover_warning(spec: SecretSpec, plan: str, compromised: bool) -> str | None:
    if plan != "cutover" or spec.kind not in ("master-key", "jwt-hs256"):
        return None
    if spec.kind == "jwt-hs256":
        return (f"{spec.name} has no overlap (previous) configured{' (compromise)' if compromised else ''}: "
                "the hard cutover invalidates every session and logs every user out.")
    return (f"{spec.name} rotation without overlap{' (compromise: fresh DEKs)' if compromised else ''}: "
            "a maintenance cutover. Rows are reencrypted before the Workers get the new key; until "
            "the push, rows the Workers read that were already rewritten cannot be opened, and rows "
            "they write meanwhile are swept up afterwards.")


def _check_token_ttl(spec: SecretSpec, rot: Rotation, force: bool) -> None:
    if spec.kind != "jwt-hs256" or not spec.max_token_ttl or force:
        return
    pushed = parse_utc(rot.detail.get("pushed_at"))
    if pushed is None:
        return
    waited = (datetime.now(timezone.utc) - pushed).total_seconds()
    if waited < spec.max_token_ttl:
        raise ConfigError(f"tokens signed with the old {spec.name} may live {spec.max_token_ttl} s "
                          f"and the new one was pushed {int(waited)} s ago: finishing now logs "
                          "those users out. Wait, or use --force.")


def _abort(ctx: Context, rot: Rotation, say: Say) -> dict[str, Any]:
    """Only safe while nothing outside the store has changed."""
    if any(s != "stage" for s in rot.steps_done):
        raise ConfigError(f"the {rot.secret} rotation has gone past staging ({', '.join(rot.steps_done)}); "
                          "aborting now could strand rows or Workers: finish it instead")
    ctx.secret_store().discard_pending(rot.secret)
    rot.state = "aborted"
    save(ctx, rot, finished=True)
    audit(ctx, rot, "aborted")
    say(f"aborted the {rot.secret} rotation; the pending value was discarded")
    return _result(rot, "aborted")


def status(ctx: Context, due_seconds: int | None) -> dict[str, Any]:
    """Per secret: age from the store, rotation in progress, and rows per key."""
    from keyrotate.engine.verify import verify
    from keyrotate.keys_from_refs import codec_from_refs
    from keyrotate.store.base import resolve_target

    store = ctx.secret_store()
    in_progress = {r["secret"]: r for r in open_rotations(ctx)}
    now = datetime.now(timezone.utc)
    out = []
    for name, spec in ctx.manifest.secrets.items():
        set_at = store.set_at(name)
        age = (now - set_at).total_seconds() if set_at else None
        entry: dict[str, Any] = {"secret": name, "kind": spec.kind,
                                 "set_at": set_at.isoformat() if set_at else None,
                                 "age_days": round(age / 86400, 1) if age is not None else None,
                                 "due": bool(due_seconds and age is not None and age > due_seconds),
                                 "rotation": in_progress.get(name)}
        targets = ctx.manifest.targets_of(name)
        if targets and store.read(name):
            db = ctx.open_db()
            try:
                rows = {}
                for t in targets:
                    codec = codec_from_refs(t.format, store.ref(name),
                                            store.ref(name, "previous") if store.read(name, "previous") else None)
                    c = verify(db, resolve_target(db, t.spec, t.key_column), codec).as_dict()
                    rows[t.spec] = {"current": c["ok"], "previous": c["old"], "null": c["null"],
                                    "other": c["failed"]}
                entry["rows"] = rows
            finally:
                db.close()
        out.append(entry)
    return {"env": ctx.env.name, "secrets": out, "due": [s["secret"] for s in out if s["due"]]}
