"""One rotation of one secret in one environment, and the one place it is persisted:
the rotation row (keyrotate_rotations, in the environment's database), committed with
its audit trail event (keyrotate.evidence: fingerprints only), which is also sent to the
notification sinks."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from keyrotate.config.context import Context
from keyrotate.controlplane.held_lease import HeldLease
from keyrotate.db.base import ReadAhead, Statement
from keyrotate.db.own_schema import OPEN_STATES
from keyrotate.errors import EXIT_INCOMPLETE, StoreError
from keyrotate.evidence.event import Event
from keyrotate.evidence.record import Evidence
from keyrotate.rotation.key_log import KeyLog
from keyrotate.timeutil import now_iso

_OPEN = ", ".join("?" * len(OPEN_STATES))
# steps an earlier keyrotate recorded under other names: done means these are done
RENAMED = {"push-overlap": ("introduce", "switch")}


# steps whose record may ride with the trail's next append: lost in a kill, the step is
# done again, changes nothing outside keyrotate's own records, and records the same. Not a
# step that pushes (done again, it would push again: one more version on every Worker),
# nor one that changes the secret store (promote drops the store's previous value, an
# abort discards the pending one: done again, it could not record what it dropped).
REDONE_WHOLE = frozenset({"stage", "validate", "reencrypt", "verify", "re-verify", "catch-up"})


def done_steps(steps_done: list[str]) -> set[str]:
    """The steps done, under today's names."""
    return {n for s in steps_done for n in RENAMED.get(s, (s,))}
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
    state: str                     # in-progress | awaiting-finish | aborting | finished |
                                   # aborted | superseded
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
    """Loads and saves rotations; each save commits together with its audit event, and
    the event goes on to the notification sinks. Nothing else writes rotations."""

    def __init__(self, ctx: Context, evidence: Evidence | None = None):
        self.ctx = ctx
        self.evidence = evidence or Evidence(ctx)
        self.keys = KeyLog(ctx)   # key.state events, as the rotation moves
        self.lease: HeldLease | None = None   # given back with the rotation's end

    def open_read(self, secret: str) -> Statement:
        """How load_open reads: for a caller that reads it ahead, under the lease."""
        return Statement(
            f"SELECT {', '.join(_COLS)} FROM keyrotate_rotations WHERE environment = ? "
            f"AND secret = ? AND state IN ({_OPEN}) ORDER BY started_at DESC LIMIT 1",
            (self.ctx.env.name, secret, *OPEN_STATES))

    def load_open(self, secret: str, ahead: ReadAhead = ReadAhead()) -> Rotation | None:
        read = self.open_read(secret)
        rows = ahead.query(self.ctx.db, read.sql, read.params)
        if not rows:
            return None
        r = dict(zip(_COLS, rows[0], strict=True))
        return Rotation(r["rotation_id"], r["environment"], r["secret"], r["kind"], r["plan"],
                        bool(r["compromised"]), r["state"], json.loads(r["steps_done"]),
                        r["old_fp"], r["new_fp"], json.loads(r["detail"]), r["started_at"])

    def open_rotations(self) -> list[dict[str, Any]]:
        rows = self.ctx.db.query(
            "SELECT secret, state, rotation_id, started_at, steps_done FROM keyrotate_rotations "
            f"WHERE environment = ? AND state IN ({_OPEN})", (self.ctx.env.name, *OPEN_STATES))
        return [{"secret": r[0], "state": r[1], "rotation_id": r[2], "started_at": r[3],
                 "steps_done": json.loads(r[4])} for r in rows]

    def last_finished(self) -> dict[str, str]:
        """Per secret, when its last rotation finished in this environment."""
        rows = self.ctx.db.query(
            "SELECT secret, MAX(finished_at) FROM keyrotate_rotations WHERE environment = ? "
            "AND state = 'finished' GROUP BY secret", (self.ctx.env.name,))
        return {str(r[0]): str(r[1]) for r in rows if r[1]}

    def _save(self, rot: Rotation, finished: bool = False) -> Statement:
        now = now_iso()
        return Statement(
            "INSERT INTO keyrotate_rotations (rotation_id, environment, secret, kind, plan, "
            "compromised, state, steps_done, old_fp, new_fp, detail, started_at, updated_at, "
            "finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (rotation_id) DO UPDATE SET state = excluded.state, "
            "steps_done = excluded.steps_done, old_fp = excluded.old_fp, new_fp = excluded.new_fp, "
            "detail = excluded.detail, updated_at = excluded.updated_at, "
            "finished_at = excluded.finished_at",
            (rot.rotation_id, rot.environment, rot.secret, rot.kind, rot.plan, int(rot.compromised),
             rot.state, json.dumps(rot.steps_done), rot.old_fp, rot.new_fp, json.dumps(rot.detail),
             rot.started_at, now, now if finished else None))

    def _event(self, rot: Rotation, event: str, summary: str, step: str | None = None,
               **detail: Any) -> Event:
        return Event(event, rot.environment, summary, rot.secret, rot.rotation_id, step,
                     rot.old_fp, rot.new_fp, detail)

    def _what(self, rot: Rotation) -> str:
        return f"{rot.secret} rotation {rot.rotation_id} on {rot.environment}"

    def started(self, rot: Rotation) -> None:
        how = f"{rot.plan}{', compromise response' if rot.compromised else ''}"
        keys = self.keys.started(rot)
        self.evidence.record(self._event(rot, "rotation.started", f"{self._what(rot)} started ({how}).",
                                         plan=rot.plan, compromised=rot.compromised,
                                         took_over=rot.detail.get("took_over"),
                                         started_by=rot.detail.get("started_by", "person")),
                             [self._save(rot)], before=keys)

    def step_done(self, rot: Rotation, step: str) -> None:
        """A step of REDONE_WHOLE is recorded with the next record (the next push's
        intent, the restore point, the end), not on its own: lost in a kill, it is only
        done again. Any other step is recorded at once, with the confirmations of the
        pushes it made: a push never stays "possibly applied" past its step."""
        rot.steps_done.append(step)
        keys = self.keys.step(rot, step)
        defer = step in REDONE_WHOLE and not self.evidence.trail.holds_push_outcomes
        self.evidence.record(self._event(rot, "rotation.step", f"{self._what(rot)}: step {step} done.",
                                         step, **_step_detail(rot, step)),
                             [self._save(rot)], before=keys, defer=defer)

    def reopen(self, rot: Rotation, steps: list[str], reason: str) -> None:
        """Steps whose effect no longer holds (observed from Cloudflare) are done again by
        the next run."""
        rot.steps_done = [s for s in rot.steps_done
                          if s not in steps and not set(RENAMED.get(s, ())) & set(steps)]
        self.evidence.record(self._event(rot, "rotation.step", f"{self._what(rot)}: "
                                         f"{', '.join(steps)} to be done again: {reason}.",
                                         "reopen", reopened=steps), [self._save(rot)])

    def took_over(self, old: Rotation, new: Rotation, reason: str) -> None:
        """A compromise response takes over an open rotation: the old one is superseded and
        the new one started in one transaction, so a kill between them cannot leave rows
        under a key no open rotation still tries."""
        old.state = "superseded"
        self.evidence.record(self._event(
            new, "rotation.started", f"{self._what(new)} started ({new.plan}, compromise "
            f"response), taking over {old.rotation_id}.", plan=new.plan,
            compromised=new.compromised, took_over=old.rotation_id, reason=reason),
            [self._save(old, finished=True), self._save(new)])
        self.evidence.record(self._event(old, "rotation.superseded", f"{self._what(old)} "
                                         f"superseded by {new.rotation_id} ({reason}).",
                                         by=new.rotation_id, reason=reason))

    def aborting(self, rot: Rotation) -> None:
        rot.state = "aborting"
        self.evidence.record(self._event(rot, "rotation.step", f"{self._what(rot)}: aborting; "
                                         "the Workers and rows go back to the old value.",
                                         "abort"), [self._save(rot)])

    def saved(self, rot: Rotation, event: Event) -> None:
        """Save the rotation's state together with an event about it."""
        self.evidence.record(event, [self._save(rot)])

    def interrupted(self, rot: Rotation, step: str, error: BaseException) -> None:
        """A step stopped: paused (exit 3: it resumes) or failed; the reason goes out."""
        code = getattr(error, "exit_code", None)
        if isinstance(error, KeyboardInterrupt):
            reason, paused = "interrupted", True
        elif code is None:
            reason, paused = f"unexpected {type(error).__name__}", False
        else:
            reason, paused = str(error), code == EXIT_INCOMPLETE
        if paused:
            event = self._event(rot, "rotation.paused", f"{self._what(rot)} paused at {step}: "
                                f"{reason}", step, exit_code=3)
        else:
            event = self._event(rot, "rotation.failed", f"{self._what(rot)} failed at {step}: "
                                f"{reason}", step, exit_code=code or 1)
        self.evidence.record(event, best_effort=True)

    def ended(self, rot: Rotation, state: str, **detail: Any) -> None:
        rot.state = state
        keys = self.keys.ended(rot, state)
        finished = state in ("finished", "aborted", "superseded")
        if state == "finished":
            event = self._event(rot, "rotation.finished", f"{self._what(rot)} finished: "
                                f"{rot.new_fp} in use, {rot.old_fp} retired.", **detail)
        elif state == "awaiting-finish":
            event = self._event(rot, "rotation.step", f"{self._what(rot)}: rotated and verified; "
                                "the Workers still accept the previous value until --finish.",
                                "awaiting-finish", **detail)
        else:
            event = self._event(rot, f"rotation.{state}", f"{self._what(rot)} {state}.", **detail)
        give_back = self.lease.give_back_with() if self.lease is not None else []
        try:
            self.evidence.record(event, [self._save(rot, finished=finished), *give_back],
                                 before=keys)
        except StoreError as e:
            raise (self.lease.explain(e) if self.lease is not None else e) from None
        if self.lease is not None:
            self.lease.given_back()


def _step_detail(rot: Rotation, step: str) -> dict[str, Any]:
    """What a step left in the rotation's detail that is worth keeping in the trail."""
    keys = {"reencrypt": ("reencrypt",), "verify": ("verify", "sweep"), "catch-up": ("catch-up",),
            "report": ("report",), "push": ("pushed_at",), "push-overlap": ("pushed_at",),
            "switch": ("pushed_at",)}
    return {k: rot.detail[k] for k in keys.get(step, ()) if k in rot.detail}
