"""One rotation of one secret in one environment, and the one place it is persisted:
the rotation row (keyrotate_rotations, in the environment's database) and the audit log
(JSON lines beside the manifest, fingerprints only)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from keyrotate.controlplane.context import Context
from keyrotate.db.base import Statement
from keyrotate.timeutil import now_iso

OPEN_STATES = ("in-progress", "awaiting-finish")
_COLS = ("rotation_id", "environment", "secret", "kind", "plan", "compromised", "state",
         "steps_done", "old_fp", "new_fp", "detail", "started_at")


@dataclass
class Rotation:
    rotation_id: str
    environment: str
    secret: str
    kind: str
    plan: str                      # overlap | cutover
    compromised: bool
    state: str                     # in-progress | awaiting-finish | finished | aborted
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


class Recorder:
    """Loads and saves rotations and appends to the audit log; nothing else writes them."""

    def __init__(self, ctx: Context):
        self.ctx = ctx

    def load_open(self, secret: str) -> Rotation | None:
        rows = self.ctx.db.query(
            f"SELECT {', '.join(_COLS)} FROM keyrotate_rotations WHERE environment = ? "
            "AND secret = ? AND state IN (?, ?) ORDER BY started_at DESC LIMIT 1",
            (self.ctx.env.name, secret, *OPEN_STATES))
        if not rows:
            return None
        r = dict(zip(_COLS, rows[0], strict=True))
        return Rotation(r["rotation_id"], r["environment"], r["secret"], r["kind"], r["plan"],
                        bool(r["compromised"]), r["state"], json.loads(r["steps_done"]),
                        r["old_fp"], r["new_fp"], json.loads(r["detail"]), r["started_at"])

    def open_rotations(self) -> list[dict[str, Any]]:
        rows = self.ctx.db.query(
            "SELECT secret, state, rotation_id, started_at FROM keyrotate_rotations "
            "WHERE environment = ? AND state IN (?, ?)", (self.ctx.env.name, *OPEN_STATES))
        return [{"secret": r[0], "state": r[1], "rotation_id": r[2], "started_at": r[3]} for r in rows]

    def save(self, rot: Rotation, finished: bool = False) -> None:
        now = now_iso()
        self.ctx.db.apply([], None, [Statement(
            "INSERT INTO keyrotate_rotations (rotation_id, environment, secret, kind, plan, "
            "compromised, state, steps_done, old_fp, new_fp, detail, started_at, updated_at, "
            "finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (rotation_id) DO UPDATE SET state = excluded.state, "
            "steps_done = excluded.steps_done, old_fp = excluded.old_fp, new_fp = excluded.new_fp, "
            "detail = excluded.detail, updated_at = excluded.updated_at, "
            "finished_at = excluded.finished_at",
            (rot.rotation_id, rot.environment, rot.secret, rot.kind, rot.plan, int(rot.compromised),
             rot.state, json.dumps(rot.steps_done), rot.old_fp, rot.new_fp, json.dumps(rot.detail),
             rot.started_at, now, now if finished else None))])

    def audit(self, rot: Rotation, event: str, **extra: Any) -> None:
        """Append-only JSON lines: what happened, when, fingerprints only."""
        folder = self.ctx.state_dir
        folder.mkdir(mode=0o700, exist_ok=True)
        path = folder / f"audit-{self.ctx.env.name}.jsonl"
        line = json.dumps({"at": now_iso(), "env": self.ctx.env.name,
                           "rotation_id": rot.rotation_id, "secret": rot.secret, "event": event,
                           "old_fingerprint": rot.old_fp, "new_fingerprint": rot.new_fp, **extra})
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def step_done(self, rot: Rotation, step: str) -> None:
        rot.steps_done.append(step)
        self.save(rot)
        self.audit(rot, step, detail={k: v for k, v in rot.detail.items() if k != "health"})

    def started(self, rot: Rotation) -> None:
        self.save(rot)
        self.audit(rot, "started", plan=rot.plan, compromised=rot.compromised)

    def ended(self, rot: Rotation, state: str) -> None:
        rot.state = state
        finished = state in ("finished", "aborted", "superseded")
        self.save(rot, finished=finished)
        self.audit(rot, state)
