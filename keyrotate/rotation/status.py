"""`keyrotate status`: per secret, its age from the store, its last rotation, any rotation
in progress, and rows per key (a census of every encrypted column and object target).
For cron and CI schedules: `--notify` sends secret.overdue for each secret past `--due`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from keyrotate.config.context import Context
from keyrotate.errors import EXIT_FAILURES
from keyrotate.evidence.event import Event
from keyrotate.rotation.state import Recorder
from keyrotate.secrets.base import fingerprint
from keyrotate.targets.secret_targets import rows_per_slot


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
            for target, c in (s.rows or {}).items():
                extra = ", ".join(f"{c[k]} {k}" for k in ("null", "missing") if k in c)
                lines.append(f"      {target}: {c['current']} current, {c['pending']} pending, "
                             f"{c['previous']} previous, {c['other']} other, {extra}")
        for n in self.notified:
            lines.append(f"notified {n['sink']} of {n['event']} ({n['secret']}): "
                         + ("delivered" if n["ok"] else f"FAILED: {n['reason']}"))
        return "\n".join(lines)


def status(ctx: Context, due_seconds: int | None, notify: bool = False) -> StatusResult:
    store = ctx.secrets
    recorder = Recorder(ctx)
    in_progress = {r["secret"]: r for r in recorder.open_rotations()}
    last = recorder.last_finished()
    now = datetime.now(timezone.utc).replace(microsecond=0)
    out = []
    for name, spec in ctx.manifest.secrets.items():
        set_at = store.set_at(name)
        age = (now - set_at).total_seconds() if set_at else None
        entry = SecretStatus(name, spec.kind, set_at.isoformat() if set_at else None,
                             round(age / 86400, 1) if age is not None else None,
                             bool(due_seconds and age is not None and age > due_seconds),
                             in_progress.get(name), age_seconds=age, last_rotated_at=last.get(name),
                             pending=store.read(name, "pending") is not None)
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
            fp = fingerprint(v) if (v := ctx.secrets.read(s.secret)) else None
            deliveries = recorder.evidence.record(Event(
                "secret.overdue", ctx.env.name, f"{s.secret} on {ctx.env.name} is {s.age_days} days "
                f"old, past the rotation due age; rotate it: keyrotate rotate {s.secret} --env "
                f"{ctx.env.name}", s.secret, old_fingerprint=fp,
                detail={"age_days": s.age_days, "set_at": s.set_at}))
            sent += [{"secret": s.secret, **d.as_dict()} for d in deliveries]
    finally:
        recorder.evidence.close()
    return sent
