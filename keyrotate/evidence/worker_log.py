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

import logging
from dataclasses import dataclass
from typing import Any

from keyrotate.config.context import Context
from keyrotate.db.base import Statement
from keyrotate.db.own_schema import own_table
from keyrotate.evidence.event import Event
from keyrotate.evidence.record import audit_trail, existing_audit_key
from keyrotate.timeutil import now_iso

ROTATION_KINDS = ("master-key", "jwt-hs256")
log = logging.getLogger("keyrotate.audit")
SECRETS_EVENT = "worker.secrets"
LEGACY_IMPORTED = "trail.legacy-import"
LEGACY_TABLE = "keyrotate_events"


@dataclass(frozen=True)
class SecretChange:
    """One secret set (fingerprint) or removed (None) on a Worker."""

    secret: str
    secret_kind: str
    fingerprint: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"secret": self.secret, "kind": self.secret_kind, "fingerprint": self.fingerprint}


def intend(ctx: Context, worker: str, changes: list[SecretChange], base_number: int = 0) -> str:
    """Record a push about to be made onto a Worker whose latest version is number
    `base_number`; returns its id (the time it was recorded). Until it is confirmed, any
    version numbered above `base_number` may hold the change."""
    _import_legacy(ctx)
    at = now_iso()
    names = ", ".join(sorted(c.secret for c in changes))
    audit_trail(ctx).append(Event(
        SECRETS_EVENT, ctx.env.name, f"about to change {names} on {worker}", at=at,
        detail={"worker": worker, "state": "intent", "intent": at, "base_number": base_number,
                "changes": [c.as_dict() for c in changes]}))
    return at


def confirm(ctx: Context, worker: str, intent: str, state: str, version_id: str | None = None,
            number: int | None = None) -> None:
    """The push recorded as `intent` took effect (done: in version `version_id`, number
    `number`, as Cloudflare listed it) or was refused (failed). A push that took effect
    is recorded with the next append (the next push's intent, or its step's record): lost
    in a kill, the push stays an intent, counted as possibly applied, as it was."""
    event = Event(SECRETS_EVENT, ctx.env.name, f"secret change on {worker} {state}"
                  + (f" (version {version_id})" if version_id else ""),
                  detail={"worker": worker, "state": state, "intent": intent,
                          "version_id": version_id, "number": number})
    if state == "done":
        audit_trail(ctx).defer(event, settles_push=True)
    else:
        audit_trail(ctx).append(event)


def record_version(ctx: Context, worker: str, kind: str, version_id: str | None = None) -> None:
    """A deploy, rollback or canary version keyrotate made."""
    audit_trail(ctx).append(Event(
        f"worker.{kind}", ctx.env.name, f"{kind} of {worker}"
        + (f" (version {version_id})" if version_id else ""),
        detail={"worker": worker, "version_id": version_id}))


def canary_versions(ctx: Context, worker: str) -> set[str]:
    """The canary versions keyrotate made for `worker`."""
    return {str(r["detail"].get("version_id")) for r in audit_trail(ctx).records("worker.canary")
            if isinstance(r.get("detail"), dict) and r["detail"].get("worker") == worker}


@dataclass(frozen=True)
class Push:
    """One secret of one push to a Worker, and what became of it."""

    secret: str
    fingerprint: str | None      # None: removed
    state: str                   # intent (never confirmed) | done | failed
    base_number: int | None      # the Worker's latest version number when it began
    number: int | None           # the version it made (done), as Cloudflare numbered it


@dataclass(frozen=True)
class SecretHistory:
    """The secret values keyrotate put on one Worker, as fingerprints, by version number:
    the values a version holds are those of the confirmed pushes that made it or a version
    before it. Versions are compared by Cloudflare's numbers, never by a clock."""

    pushes: list[Push]

    def state_at(self, number: int | None) -> dict[str, str | None]:
        """name -> fingerprint (None: removed) in version `number` (None: the latest)."""
        state: dict[str, str | None] = {}
        for p in self.pushes:
            if p.state == "done" and (number is None or (p.number or 0) <= number):
                state[p.secret] = p.fingerprint
        return state

    def unsettled_since(self, number: int) -> list[str]:
        """Secrets of pushes that may have reached a version after `number` but were never
        confirmed (or whose version Cloudflare did not number): they count as applied."""
        return sorted({p.secret for p in self.pushes
                       if (p.state == "intent" and (p.base_number or 0) >= number)
                       or (p.state == "done" and p.number is None)})


def secret_history(ctx: Context, worker: str, kinds: tuple[str, ...] = ROTATION_KINDS) -> SecretHistory:
    """Every push to `worker` of a secret of one of `kinds`, in the order they were made,
    each with its confirmation (intent when none came)."""
    _import_legacy(ctx)
    records = [r["detail"] for r in audit_trail(ctx).records(SECRETS_EVENT)
               if isinstance(r.get("detail"), dict) and r["detail"].get("worker") == worker]
    outcome = {d.get("intent"): d for d in records if d.get("state") != "intent"}
    pushes = []
    for d in records:
        if d.get("state") != "intent":
            continue
        done = outcome.get(d.get("intent"), {})
        for change in d.get("changes", []):
            if change.get("kind") in kinds:
                pushes.append(Push(str(change["secret"]), change.get("fingerprint"),
                                   str(done.get("state", "intent")), d.get("base_number"),
                                   done.get("number")))
    return SecretHistory(pushes)


def _import_legacy(ctx: Context) -> None:
    """keyrotate_events (0.1) into the trail, once: each push as an intent and its outcome,
    at the time it was recorded; then the table goes, and the trail records that the import
    was made, all in one transaction. A keyrotate_events table that appears after that is
    not 0.1's: anyone who can write to the database could have made it, and the trail would
    authenticate its rows, so it is left alone and named in a warning."""
    once: dict[str, bool] = ctx.shared("legacy-events", dict)
    if once:
        return
    once["checked"] = True
    known = own_table(ctx.db, LEGACY_TABLE)
    if known == "absent" or (known is None and not ctx.db.query(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (LEGACY_TABLE,))):
        return
    trail = audit_trail(ctx)
    if known != "created" and trail.records(LEGACY_IMPORTED):
        log.warning("a keyrotate_events table appeared in %s after keyrotate 0.1's records were "
                    "imported into the audit trail: it is not trusted, nor imported; look into who "
                    "made it", ctx.db.display_url)
        return
    rows = ctx.db.query("SELECT worker, kind, secret, secret_kind, fingerprint, at, state, "
                        f"version_id FROM {LEGACY_TABLE} WHERE environment = ? ORDER BY at, id",
                        (ctx.env.name,))
    drop = Statement(f"DROP TABLE {LEGACY_TABLE}")
    if not rows and existing_audit_key(ctx) is None:
        # an empty table in an environment with no trail key yet: nothing to record, and a
        # read-only command (a rollback plan) must not make the audit key in the store
        ctx.db.apply([], None, [drop])
    elif not rows and known == "created":
        # this command's migrations made it (old migrations still do), and no import can
        # have been recorded before: recorded with the trail's next append, at no request.
        # IF EXISTS: another command may drop it first, and a refused DROP riding with the
        # next append would fail every append of this command
        trail.defer(_imported(ctx, 0), [Statement(f"DROP TABLE IF EXISTS {LEGACY_TABLE}")])
    else:
        trail.append(_imported(ctx, len(rows)), with_statements=[drop],
                     before=[e for row in rows for e in _legacy_events(ctx, *row)])


def _imported(ctx: Context, records: int) -> Event:
    return Event(LEGACY_IMPORTED, ctx.env.name, f"keyrotate 0.1's keyrotate_events imported "
                 f"({records} records); a table of that name is never imported again",
                 detail={"records": records})


def _legacy_events(ctx: Context, worker: Any, kind: Any, secret: Any, secret_kind: Any, fp: Any,
                   at: Any, state: Any, version: Any) -> list[Event]:
    """One row of 0.1's keyrotate_events as the trail's events."""
    if kind in ("secret-push", "secret-delete"):
        change = SecretChange(str(secret), str(secret_kind), None if kind == "secret-delete" else fp)
        intent = Event(SECRETS_EVENT, ctx.env.name, f"(imported) change of {secret} on {worker}",
                       at=str(at), detail={"worker": worker, "state": "intent", "intent": str(at),
                                           "changes": [change.as_dict()], "imported": True})
        if state == "intent":
            return [intent]
        return [intent, Event(SECRETS_EVENT, ctx.env.name, f"(imported) {state}", at=str(at),
                              detail={"worker": worker, "state": state, "intent": str(at),
                                      "version_id": version, "imported": True})]
    if kind in ("deploy", "rollback", "canary"):
        return [Event(f"worker.{kind}", ctx.env.name, f"(imported) {kind} of {worker}", at=str(at),
                      detail={"worker": worker, "version_id": version, "imported": True})]
    return []
