"""What keyrotate did to the Workers, remembered in the environment's database
(keyrotate_events): which secret values it pushed or removed where and when
(fingerprints only), deploys and rollbacks. The rollback guard reads it back.

A push is recorded as an intent before it is made and confirmed after: if keyrotate is
killed mid-push, the child may still finish it, so an unconfirmed intent counts as a
change.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from keyrotate.controlplane.context import Context
from keyrotate.db.base import Statement
from keyrotate.timeutil import now_iso, parse_utc

Say = Callable[[str], None]
ROTATION_KINDS = ("master-key", "jwt-hs256")
SECRET_KINDS = ("secret-push", "secret-delete")


@dataclass(frozen=True)
class Event:
    worker: str                 # the deployed Worker's full name
    kind: str                   # secret-push | secret-delete | deploy | rollback
    secret: str | None = None
    secret_kind: str | None = None
    fingerprint: str | None = None
    at: str | None = None
    state: str = "done"         # intent | done | failed
    version_id: str | None = None


def record_events(ctx: Context, events: list[Event]) -> None:
    ctx.db.apply([], None, [Statement(
        "INSERT INTO keyrotate_events (environment, worker, kind, secret, secret_kind, "
        "fingerprint, at, state, version_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (ctx.env.name, e.worker, e.kind, e.secret, e.secret_kind, e.fingerprint,
         e.at or now_iso(), e.state, e.version_id)) for e in events])


def confirm(ctx: Context, worker: str, at: str, state: str, version_id: str | None = None) -> None:
    """Intents recorded at `at` for `worker` become done or failed."""
    ctx.db.apply([], None, [Statement(
        "UPDATE keyrotate_events SET state = ?, version_id = coalesce(?, version_id) WHERE "
        "environment = ? AND worker = ? AND at = ? AND state = 'intent'",
        (state, version_id, ctx.env.name, worker, at))])


@dataclass(frozen=True)
class SecretHistory:
    """The secret values keyrotate put on one Worker, as fingerprints, over time."""

    events: list[tuple[str, str, str | None, str, str]]   # (secret, kind, fp, at, state)

    def state_before(self, moment: datetime | None) -> dict[str, str | None]:
        """name -> fingerprint (None: removed) as confirmed pushes left it just before
        `moment` (None: now). A version made at `moment` holds these."""
        state: dict[str, str | None] = {}
        for secret, kind, fp, at, status in self.events:
            when = parse_utc(at)
            if status != "done" or (moment is not None and when is not None and when >= moment):
                continue
            state[secret] = None if kind == "secret-delete" else fp
        return state

    def unconfirmed_after(self, moment: datetime | None) -> list[str]:
        """Secrets of pushes begun after `moment` that were never confirmed."""
        return sorted({secret for secret, _, _, at, status in self.events if status == "intent"
                       and (moment is None or (parse_utc(at) or moment) >= moment)})


def secret_history(ctx: Context, worker_full: str, kinds: tuple[str, ...] = ROTATION_KINDS) -> SecretHistory:
    rows = ctx.db.query(
        "SELECT secret, kind, fingerprint, at, state FROM keyrotate_events WHERE environment = ? "
        "AND worker = ? AND kind IN (?, ?) AND secret_kind IN (" + ", ".join("?" * len(kinds)) + ") "
        "ORDER BY at, id", (ctx.env.name, worker_full, *SECRET_KINDS, *kinds))
    return SecretHistory([(str(r[0]), str(r[1]), r[2], str(r[3]), str(r[4])) for r in rows])
