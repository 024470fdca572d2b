"""What keyrotate did to the Workers, in the one audit trail: which secret values it pushed
to or removed from which Worker (fingerprints only), and the versions deploys, rollbacks
and canaries made. The rollback guard reads it back.

A push is recorded as an intent before it is made and confirmed after (`worker.secrets`,
state intent, then done or failed, naming the intent): if keyrotate is killed mid-push,
the child may still finish it, so an intent never confirmed counts as a change.

Databases written by keyrotate 0.1 kept this in a table of its own, keyrotate_events: its
rows move into the trail the first time the trail is read or written here, and the table
is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from keyrotate.config.context import Context
from keyrotate.db.base import Statement
from keyrotate.db.own_schema import own_table
from keyrotate.evidence.event import Event
from keyrotate.evidence.record import audit_trail
from keyrotate.timeutil import now_iso, parse_utc

ROTATION_KINDS = ("master-key", "jwt-hs256")
SECRETS_EVENT = "worker.secrets"


@dataclass(frozen=True)
class SecretChange:
    """One secret set (fingerprint) or removed (None) on a Worker."""

    secret: str
    secret_kind: str
    fingerprint: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"secret": self.secret, "kind": self.secret_kind, "fingerprint": self.fingerprint}


def intend(ctx: Context, worker: str, changes: list[SecretChange]) -> str:
    """Record a push about to be made; returns its id (the time it was recorded)."""
    _import_legacy(ctx)
    at = now_iso()
    names = ", ".join(sorted(c.secret for c in changes))
    audit_trail(ctx).append(Event(
        SECRETS_EVENT, ctx.env.name, f"about to change {names} on {worker}", at=at,
        detail={"worker": worker, "state": "intent", "intent": at,
                "changes": [c.as_dict() for c in changes]}))
    return at


def confirm(ctx: Context, worker: str, intent: str, state: str, version_id: str | None = None) -> None:
    """The push recorded as `intent` took effect (done) or was refused (failed). Recorded
    with the trail's next append: lost in a crash, the push counts as unconfirmed, which
    the rollback guard treats as a change."""
    audit_trail(ctx).later(Event(
        SECRETS_EVENT, ctx.env.name, f"secret change on {worker} {state}"
        + (f" (version {version_id})" if version_id else ""),
        detail={"worker": worker, "state": state, "intent": intent, "version_id": version_id}))


def record_version(ctx: Context, worker: str, kind: str, version_id: str | None = None) -> None:
    """A deploy, rollback or canary version keyrotate made."""
    audit_trail(ctx).append(Event(
        f"worker.{kind}", ctx.env.name, f"{kind} of {worker}"
        + (f" (version {version_id})" if version_id else ""),
        detail={"worker": worker, "version_id": version_id}))


@dataclass(frozen=True)
class SecretHistory:
    """The secret values keyrotate put on one Worker, as fingerprints, over time."""

    events: list[tuple[str, str | None, str, str]]   # (secret, fingerprint, at, state)

    def state_before(self, moment: datetime | None) -> dict[str, str | None]:
        """name -> fingerprint (None: removed) as confirmed pushes left it just before
        `moment` (None: now). A version made at `moment` holds these."""
        state: dict[str, str | None] = {}
        for secret, fp, at, status in self.events:
            when = parse_utc(at)
            if status != "done" or (moment is not None and when is not None and when >= moment):
                continue
            state[secret] = fp
        return state

    def unconfirmed_after(self, moment: datetime | None) -> list[str]:
        """Secrets of pushes begun after `moment` that were never confirmed."""
        return sorted({secret for secret, _, at, status in self.events if status == "intent"
                       and (moment is None or (parse_utc(at) or moment) >= moment)})


def secret_history(ctx: Context, worker: str, kinds: tuple[str, ...] = ROTATION_KINDS) -> SecretHistory:
    """Every push to `worker` of a secret of one of `kinds`, in the order they were made,
    each with the state its confirmation gave it (intent when none came)."""
    _import_legacy(ctx)
    records = [r["detail"] for r in audit_trail(ctx).records(SECRETS_EVENT)
               if isinstance(r.get("detail"), dict) and r["detail"].get("worker") == worker]
    outcome = {d.get("intent"): d.get("state") for d in records if d.get("state") != "intent"}
    events = []
    for d in records:
        if d.get("state") != "intent":
            continue
        state = outcome.get(d.get("intent"), "intent")
        for change in d.get("changes", []):
            if change.get("kind") in kinds:
                events.append((str(change["secret"]), change.get("fingerprint"),
                               str(d.get("intent")), str(state)))
    return SecretHistory(events)


def _import_legacy(ctx: Context) -> None:
    """keyrotate_events (0.1) into the trail, once: each push as an intent and its outcome,
    at the time it was recorded; then the table goes."""
    once: dict[str, bool] = ctx.shared("legacy-events", dict)
    if once:
        return
    once["checked"] = True
    known = own_table(ctx.db, "keyrotate_events")   # checked with the schema: no request
    if known == "absent" or (known is None and not ctx.db.query(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", ("keyrotate_events",))):
        return
    rows = ctx.db.query("SELECT worker, kind, secret, secret_kind, fingerprint, at, state, "
                        "version_id FROM keyrotate_events WHERE environment = ? ORDER BY at, id",
                        (ctx.env.name,))
    trail = audit_trail(ctx)
    for worker, kind, secret, secret_kind, fp, at, state, version in rows:
        if kind in ("secret-push", "secret-delete"):
            change = SecretChange(str(secret), str(secret_kind),
                                  None if kind == "secret-delete" else fp)
            trail.append(Event(SECRETS_EVENT, ctx.env.name, f"(imported) change of {secret} on "
                               f"{worker}", at=str(at), detail={
                                   "worker": worker, "state": "intent", "intent": str(at),
                                   "changes": [change.as_dict()], "imported": True}))
            if state != "intent":
                trail.append(Event(SECRETS_EVENT, ctx.env.name, f"(imported) {state}", at=str(at),
                                   detail={"worker": worker, "state": state, "intent": str(at),
                                           "version_id": version, "imported": True}))
        elif kind in ("deploy", "rollback", "canary"):
            trail.append(Event(f"worker.{kind}", ctx.env.name, f"(imported) {kind} of {worker}",
                               at=str(at), detail={"worker": worker, "version_id": version,
                                                   "imported": True}))
    trail.later(None, [Statement("DROP TABLE keyrotate_events")])   # with the next append
    if not rows:
        return
    trail.flush()
