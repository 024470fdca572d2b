"""What keyrotate did to the Workers, remembered in the environment's database
(keyrotate_events): which secret values it pushed where and when (fingerprints only),
deploys and rollbacks. The rollback guard reads it back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from keyrotate.controlplane.context import Context
from keyrotate.db.base import Statement
from keyrotate.secrets.base import fingerprint
from keyrotate.timeutil import now_iso

Say = Callable[[str], None]
ROTATION_KINDS = ("master-key", "jwt-hs256")


@dataclass(frozen=True)
class Event:
    worker: str                 # the deployed Worker's full name
    kind: str                   # secret-push | deploy | rollback
    secret: str | None = None
    secret_kind: str | None = None
    fingerprint: str | None = None
    at: str | None = None


def record_events(ctx: Context, events: list[Event]) -> None:
    ctx.db.apply([], None, [Statement(
        "INSERT INTO keyrotate_events (environment, worker, kind, secret, secret_kind, "
        "fingerprint, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (ctx.env.name, e.worker, e.kind, e.secret, e.secret_kind, e.fingerprint,
         e.at or now_iso())) for e in events])


def push_secrets(ctx: Context, worker: str, values: dict[str, str], say: Say) -> str:
    """Push values to one Worker (one new version: `secret put` for one, `secret bulk` for
    several) and record each push. Returns the time taken just before the push: the
    version it makes is newer than that."""
    full = ctx.worker_name(worker)
    say(f"pushing {', '.join(sorted(values))} to {full}")
    at = now_iso()
    if len(values) == 1:
        (name, value), = values.items()
        ctx.wrangler.secret_put(full, name, value)
    else:
        ctx.wrangler.secret_bulk(full, values)
    record_events(ctx, [Event(full, "secret-push", n, ctx.manifest.kind_of(n), fingerprint(v), at)
                        for n, v in values.items()])
    return at


def last_rotation_push(ctx: Context, worker_full: str) -> tuple[str, str] | None:
    """(secret, at) of the latest push that *changed* a MASTER_KEY / JWT kind value on this
    Worker: re-pushing the same value (same fingerprint) is no change to roll back across.
    The first recorded push of a secret counts as a change (what was there before is unknown)."""
    rows = ctx.db.query(
        "SELECT secret, fingerprint, at FROM keyrotate_events WHERE environment = ? AND "
        "worker = ? AND kind = 'secret-push' AND secret_kind IN (?, ?) ORDER BY at, id",
        (ctx.env.name, worker_full, *ROTATION_KINDS))
    seen: dict[str, str] = {}
    change: tuple[str, str] | None = None
    for secret, fp, at in rows:
        if seen.get(str(secret)) != fp:
            change = (str(secret), str(at))
        seen[str(secret)] = fp
    return change
