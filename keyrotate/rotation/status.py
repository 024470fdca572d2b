"""`keyrotate status`: per secret, its age from the store, any rotation in progress, and
rows per key (a census of every encrypted column). For cron and CI schedules."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from keyrotate.controlplane.context import Context
from keyrotate.controlplane.objects_cmd import objects_census
from keyrotate.crypto.keys import MasterKey
from keyrotate.dataplane.objects.driver import ObjectsOptions
from keyrotate.secrets.base import SLOTS
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


def rows_per_slot(ctx: Context, name: str) -> dict[str, dict[str, int]]:
    """Rows of every target by the store slot whose key opens them: current, pending (a
    rotation in progress) and previous; 'other' opens under none of them."""
    store = ctx.secrets
    others = [s for s in ("pending", "previous") if store.read(name, s) is not None]
    refs = [store.ref(name, s) for s in others]
    rows = {}
    for t, target, codec in each_target(ctx, name, store.ref(name), refs[0] if refs else None,
                                        also_old=refs[1:]):
        c = verify(ctx.db, target, codec)
        slot_of = dict(zip((codec.new_kid, *codec.old_kids), ("current", *others)))
        counts = {"current": 0, "pending": 0, "previous": 0}
        for kid, n in c.by_kid.items():
            counts[slot_of[kid]] += n
        rows[t.name] = {**counts, "null": c.null, "other": c.failed}
    rows.update(objects_per_slot(ctx, name))
    return rows


def objects_per_slot(ctx: Context, name: str) -> dict[str, dict[str, int]]:
    """Objects of every object target by the store slot whose key the object reports."""
    store = ctx.secrets
    slot_of = {MasterKey.from_secret(v).kid: slot for slot in SLOTS[::-1]
               if (v := store.read(name, slot)) is not None}
    out = {}
    for obj in ctx.manifest.objects_of(name):
        c = objects_census(ctx, obj, ObjectsOptions())
        counts = {"current": 0, "pending": 0, "previous": 0, "missing": c.missing,
                  "other": len(c.failed) + len(c.unanswered)}
        for kid, n in c.by_kid.items():
            if kid in slot_of:
                counts[slot_of[kid]] += n
            else:
                counts["other"] += n
        out[obj.name] = counts
    return out


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
            entry.rows = rows_per_slot(ctx, name)
        out.append(entry)
    return StatusResult(ctx.env.name, out)
