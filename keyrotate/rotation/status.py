"""`keyrotate status`: per secret, its age from the store, its last rotation, any rotation
in progress, and rows per key (a census of every encrypted column and object target).
For cron and CI schedules: `--notify` sends secret.overdue for each secret past `--due`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from keyrotate.config.context import Context
from keyrotate.dataplane.outcome import ROWS
from keyrotate.errors import EXIT_FAILURES
from keyrotate.evidence.event import Event
from keyrotate.evidence.record import audit_key
from keyrotate.rotation.key_inventory import inventory
from keyrotate.rotation.state import Recorder
from keyrotate.rotation.targets import KeyRefs, SecretTargets
from keyrotate.secrets.base import fingerprint


@dataclass
class SecretStatus:
    secret: str
    kind: str
    set_at: str | None
    age_days: float | None
    due: bool
    rotation: dict[str, Any] | None
    rows: dict[str, dict[str, int]] | None = None
    age_seconds: float | None = None
    last_rotated_at: str | None = None
    pending: bool = False          # a new value waits in the store: rows move to it
    keys: list[dict[str, Any]] = field(default_factory=list)   # each key id and its state

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        if self.rows is None:
            out.pop("rows")
        return out


@dataclass(frozen=True)
class StatusResult:
    env: str
    secrets: list[SecretStatus] = field(default_factory=list)
    at: str = ""
    due_seconds: int | None = None
    notified: list[dict[str, Any]] = field(default_factory=list)

    @property
    def due(self) -> list[str]:
        return [s.secret for s in self.secrets if s.due]

    @property
    def exit_code(self) -> int:
        return EXIT_FAILURES if self.due else 0

    def as_dict(self) -> dict[str, Any]:
        out = {"env": self.env, "at": self.at, "secrets": [s.as_dict() for s in self.secrets],
               "due": self.due}
        return {**out, "notified": self.notified} if self.notified else out

    def text(self) -> str:
        lines = [f"secrets on {self.env}:"]
        for s in self.secrets:
            age = f"{s.age_days} days" if s.age_days is not None else "age unknown"
            flag = "  DUE" if s.due else ""
            rot = f"  rotation {s.rotation['state']}" if s.rotation else ""
            last = f"  last rotated {s.last_rotated_at}" if s.last_rotated_at else ""
            lines.append(f"  {s.secret:<24} {s.kind:<11} {age}{flag}{rot}{last}")
            if s.keys:
                lines.append("      keys: " + ", ".join(f"{k['key']} {k['state']}" for k in s.keys))
            for target, c in (s.rows or {}).items():
                extra = ", ".join(f"{c[k]} {k}" for k in ("null", "missing") if k in c)
                lines.append(f"      {target}: {c['current']} current, {c['pending']} pending, "
                             f"{c['previous']} previous, {c['other']} other, {extra}")
        for n in self.notified:
            lines.append(f"notified {n['sink']} of {n['event']} ({n['secret']}): "
                         + ("delivered" if n["ok"] else f"FAILED: {n['reason']}"))
        return "\n".join(lines)


def rows_per_slot(ctx: Context, name: str) -> dict[str, dict[str, int]]:
    """Rows (and objects) of every target by the store slot whose key opens them: current,
    pending (a rotation in progress) and previous; 'other' opens under none of them (or,
    for objects, did not answer)."""
    store = ctx.secrets
    slots = ["current", *(s for s in ("pending", "previous") if store.read(name, s) is not None)]
    refs = [store.ref(name, s) for s in slots]
    keys = KeyRefs(refs[0], refs[1] if len(refs) > 1 else None, tuple(refs[2:]))
    rows: dict[str, dict[str, int]] = {}
    for target in SecretTargets(ctx, name, keys):
        c = target.census()
        slot_of = dict(zip(target.key_ids(), slots))
        counts = {"current": 0, "pending": 0, "previous": 0}
        other = c.failed + c.unreached
        for kid, n in c.by_kid.items():
            if kid in slot_of:
                counts[slot_of[kid]] += n
            else:
                other += n
        empty = {"null": c.null} if c.unit == ROWS else {"missing": c.missing}
        rows[target.name] = {**counts, **empty, "other": other}
    return rows


def key_states(ctx: Context) -> dict[str, list[dict[str, Any]]]:
    """Per secret, each key id it has and its lifecycle state (keys --env ENV says more)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for k in inventory(ctx):
        since = k.life.last.at if k.life and k.life.last else None
        out.setdefault(k.key.secret, []).append({"key": k.key.id, "state": k.state, "since": since})
    return out


def status(ctx: Context, due_seconds: int | None, notify: bool = False) -> StatusResult:
    """`due_seconds` (--due) is the cryptoperiod of every secret; without it, each secret's
    own `max_age`."""
    store = ctx.secrets
    recorder = Recorder(ctx)
    states = key_states(ctx)
    in_progress = {r["secret"]: r for r in recorder.open_rotations()}
    last = recorder.last_finished()
    now = datetime.now(timezone.utc).replace(microsecond=0)
    out = []
    for name, spec in ctx.manifest.secrets.items():
        set_at = store.set_at(name)
        age = (now - set_at).total_seconds() if set_at else None
        limit = due_seconds or spec.max_age
        entry = SecretStatus(name, spec.kind, set_at.isoformat() if set_at else None,
                             round(age / 86400, 1) if age is not None else None,
                             bool(limit and age is not None and age > limit),
                             in_progress.get(name), age_seconds=age, last_rotated_at=last.get(name),
                             pending=store.read(name, "pending") is not None,
                             keys=states.get(name, []))
        if ctx.manifest.targets_of(name) and store.read(name):
            entry.rows = rows_per_slot(ctx, name)
        out.append(entry)
    notified = _notify_overdue(ctx, recorder, [s for s in out if s.due]) if notify else []
    return StatusResult(ctx.env.name, out, now.isoformat(), due_seconds, notified)


def _notify_overdue(ctx: Context, recorder: Recorder, due: list[SecretStatus]) -> list[dict[str, Any]]:
    """secret.overdue for each, to the audit trail and the sinks."""
    sent = []
    try:
        for s in due:
            fp = fingerprint(v, audit_key(ctx)) if (v := ctx.secrets.read(s.secret)) else None
            deliveries = recorder.evidence.record(Event(
                "secret.overdue", ctx.env.name, f"{s.secret} on {ctx.env.name} is {s.age_days} days "
                f"old, past the rotation due age; rotate it: keyrotate rotate {s.secret} --env "
                f"{ctx.env.name}", s.secret, old_fingerprint=fp,
                detail={"age_days": s.age_days, "set_at": s.set_at}))
            sent += [{"secret": s.secret, **d.as_dict()} for d in deliveries]
    finally:
        recorder.evidence.close()
    return sent
