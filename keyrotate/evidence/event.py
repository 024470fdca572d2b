"""One thing that happened, as the audit trail keeps it and the notification sinks get it.

The notification body is a fixed shape receivers are written against (README,
"Notifications"): {"v": 1, "event", "env", "secret", "rotation_id", "step", "at",
"old_fingerprint", "new_fingerprint", "summary", "chain"}, where `chain` is the event's
place in the audit trail ({"seq", "mac"}: its sequence number and the first 16 hex of its
MAC), so every sink is a witness of the trail too. The audit trail keeps the same fields
(but `chain`) plus `detail` (counts, bookmarks), `operator` and the chain's links.
Fingerprints only: no field ever holds a value.
"""

from __future__ import annotations

import getpass
import re
import socket
from dataclasses import dataclass, field
from typing import Any

from keyrotate.timeutil import now_iso

# what sinks are told about (per sink, `events` may narrow it)
NOTIFY_EVENTS = ("rotation.started", "rotation.step", "rotation.paused", "rotation.failed",
                 "rotation.finished", "secret.overdue", "secret.unchecked", "incident.report",
                 "notify.test")
# what only the audit trail records
AUDIT_EVENTS = ("rotation.aborted", "rotation.superseded", "rotation.rows", "rotation.promoting",
                "time-travel.bookmark",
                "notify.failed", "worker.secrets", "worker.deploy", "worker.rollback",
                "worker.canary", "key.state", "secret.created", "schema.migration",
                "schema.compensation", "objects.rewrap", "rollover.run", "trail.legacy-import")
BODY_VERSION = 1
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://\S+")


def link_free(text: str) -> str:
    """A summary without URLs: chat tools turn them into links (and previews), and a URL
    in an error message may name an internal host."""
    return _URL.sub("<url>", text).strip()


def operator() -> str:
    """Who ran the command, for the audit trail: user@host, nothing secret."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class Event:
    event: str
    env: str
    summary: str
    secret: str | None = None
    rotation_id: str | None = None
    step: str | None = None
    old_fingerprint: str | None = None
    new_fingerprint: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    at: str = field(default_factory=now_iso)

    def __post_init__(self) -> None:
        if self.event not in NOTIFY_EVENTS + AUDIT_EVENTS:
            raise ValueError(f"unknown event {self.event!r}")
        object.__setattr__(self, "summary", link_free(self.summary))

    @property
    def notifies(self) -> bool:
        return self.event in NOTIFY_EVENTS

    def fields(self) -> dict[str, Any]:
        return {"v": BODY_VERSION, "event": self.event, "env": self.env, "secret": self.secret,
                "rotation_id": self.rotation_id, "step": self.step, "at": self.at,
                "old_fingerprint": self.old_fingerprint, "new_fingerprint": self.new_fingerprint,
                "summary": self.summary}

    def body(self, head: "ChainHead | None" = None) -> dict[str, Any]:
        """The notification body (no detail: receivers get a fixed shape), with the
        event's place in the audit trail (null when the trail could not record it)."""
        return {**self.fields(), "chain": head.as_dict() if head else None}

    def record(self, prev: str, who: str) -> dict[str, Any]:
        """What the audit trail authenticates and keeps."""
        return {**self.fields(), "detail": self.detail, "operator": who, "prev": prev}


@dataclass(frozen=True)
class ChainHead:
    """An event's place in the audit trail, as sinks are told it."""

    seq: int
    mac: str

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "mac": self.mac[:16]}
