"""`keyrotate status`: per secret, its age from the store, any rotation in progress, and
rows per key (a census of every encrypted column). For cron and CI schedules."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from keyrotate.controlplane.context import Context
from keyrotate.dataplane.verify import verify
from keyrotate.errors import EXIT_FAILURES
from keyrotate.rotation.state import Recorder
from keyrotate.rotation.targets import each_target


@dataclass
class SecretStatus:
    secret: str
    kind: str
    set_at: str | None
    age_days: float | None
    due: bool
    rotation: dict[str, Any] | None
    rows: dict[str, dict[str, int]] | None = None

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        if self.rows is None:
            out.pop("rows")
        return out


@dataclass(frozen=True)
class StatusResult:
    env: str
    secrets: list[SecretStatus] = field(default_factory=list)

    @property
    def due(self) -> list[str]:
        return [s.secret for s in self.secrets if s.due]

    @property
    def exit_code(self) -> int:
        return EXIT_FAILURES if self.due else 0

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.env, "secrets": [s.as_dict() for s in self.secrets], "due": self.due}


def status(ctx: Context, due_seconds: int | None) -> StatusResult:
    store = ctx.secrets
    in_progress = {r["secret"]: r for r in Recorder(ctx).open_rotations()}
    now = datetime.now(timezone.utc)
    out = []
    for name, spec in ctx.manifest.secrets.items():
        set_at = store.set_at(name)
        age = (now - set_at).total_seconds() if set_at else None
        entry = SecretStatus(name, spec.kind, set_at.isoformat() if set_at else None,
                             round(age / 86400, 1) if age is not None else None,
                             bool(due_seconds and age is not None and age > due_seconds),
                             in_progress.get(name))
        if ctx.manifest.targets_of(name) and store.read(name):
            previous = store.ref(name, "previous") if store.read(name, "previous") else None
            entry.rows = {}
            for t, target, codec in each_target(ctx, name, store.ref(name), previous):
                c = verify(ctx.db, target, codec)
                entry.rows[t.name] = {"current": c.ok, "previous": c.old, "null": c.null,
                                      "other": c.failed}
        out.append(entry)
    return StatusResult(ctx.env.name, out)
