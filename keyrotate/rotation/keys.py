"""`keyrotate keys --env ENV`: every key id the environment knows, with its lifecycle state
(NIST SP 800-57), since when, who moved it there and in which rotation, where it lives
(store slots and versions; the Workers keyrotate's pushes left it on), and, for an active
key, its cryptoperiod (`--due`, else the secret's `max_age`) and whether it is past it
(PCI DSS 3.7.4): exit 1 when one is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from keyrotate.config.context import Context
from keyrotate.config.manifest import KINDS
from keyrotate.errors import EXIT_FAILURES
from keyrotate.evidence.record import audit_key
from keyrotate.evidence.worker_log import SecretHistory, secret_history
from keyrotate.rotation.key_inventory import KnownKey, inventory
from keyrotate.secrets.base import same_secret
from keyrotate.timeutil import parse_utc


def holds(k: KnownKey, fp: str | None, ctx: Context) -> bool:
    """A recorded fingerprint is this key's (keyed, or keyrotate 0.1's unkeyed one)."""
    if not fp:
        return False
    return fp == k.key.fingerprint or (k.value is not None and same_secret(k.value, fp, audit_key(ctx)))


def secret_names(ctx: Context, secret: str) -> tuple[str, ...]:
    """The names a Worker holds a secret's values under: NAME and its `previous`."""
    spec = ctx.manifest.secrets.get(secret)
    return (secret, spec.previous) if spec and spec.previous else (secret,)


class WorkerHistories:
    """keyrotate's record of the secrets on each Worker, read once per Worker."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._seen: dict[str, SecretHistory] = {}

    def __call__(self, full: str) -> SecretHistory:
        if full not in self._seen:
            self._seen[full] = secret_history(self.ctx, full, KINDS)
        return self._seen[full]

    def on_workers(self, k: KnownKey) -> list[str]:
        """'worker (NAME)' for each Worker that, as keyrotate's confirmed pushes left it,
        holds the key now."""
        if k.key.secret not in self.ctx.manifest.secrets:
            return []
        out = []
        for w in self.ctx.manifest.workers_holding(k.key.secret):
            full = self.ctx.worker_name(w)
            now = self(full).state_at(None)
            out += [f"{full} ({n})" for n in secret_names(self.ctx, k.key.secret)
                    if holds(k, now.get(n), self.ctx)]
        return out


@dataclass(frozen=True)
class KeyEntry:
    known: KnownKey
    since: str | None
    by: str | None
    rotation_id: str | None
    workers: list[str]
    period: int | None = None       # cryptoperiod, seconds
    due_at: str | None = None
    overdue: bool = False

    def as_dict(self) -> dict[str, Any]:
        k = self.known
        return {"secret": k.key.secret, "kind": k.kind, "key": k.key.id, "kid": k.key.kid,
                "fingerprint": k.key.fingerprint, "state": k.state, "since": self.since,
                "by": self.by, "rotation_id": self.rotation_id, "source": k.source,
                "locations": [c.ref for c in k.copies], "workers": self.workers,
                "cryptoperiod_days": round(self.period / 86400, 2) if self.period else None,
                "due_at": self.due_at, "overdue": self.overdue,
                "history": [t.as_dict() for t in (k.life.transitions if k.life else [])]}


def entry(ctx: Context, k: KnownKey, histories: WorkerHistories, due_seconds: int | None,
          now: datetime) -> KeyEntry:
    last = k.life.last if k.life else None
    since = last.at if last else None
    if since is None and k.in_use == "current":
        set_at = ctx.secrets.set_at(k.key.secret)
        since = set_at.isoformat() if set_at else None
    spec = ctx.manifest.secrets.get(k.key.secret)
    period = due_seconds or (spec.max_age if spec else None)
    due_at, overdue = None, False
    if period and k.state == "active":
        became = k.life.first("active") if k.life else None
        start = parse_utc(became.at if became else since)
        if start is not None:
            due = start + timedelta(seconds=period)
            due_at, overdue = due.isoformat(), now > due
    return KeyEntry(k, since, last.by if last else None, last.rotation_id if last else None,
                    histories.on_workers(k), period, due_at, overdue)


@dataclass(frozen=True)
class KeysResult:
    env: str
    keys: list[KeyEntry] = field(default_factory=list)

    @property
    def overdue(self) -> list[str]:
        return [e.known.key.id for e in self.keys if e.overdue]

    @property
    def exit_code(self) -> int:
        return EXIT_FAILURES if self.overdue else 0

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.env, "keys": [e.as_dict() for e in self.keys], "overdue": self.overdue}

    def text(self) -> str:
        lines = [f"keys of {self.env}:"]
        for e in self.keys:
            d = e.as_dict()
            lines.append(f"  {d['secret']:<24} {d['key']:<16} {d['state']:<15} since "
                         f"{d['since'] or '?'} by {d['by'] or '?'}"
                         + (f" ({d['rotation_id']})" if d["rotation_id"] else "")
                         + ("  OVERDUE" if e.overdue else ""))
            where = d["locations"] + d["workers"]
            if where:
                lines.append(f"      in {', '.join(where)}")
            if e.due_at:
                lines.append(f"      cryptoperiod {d['cryptoperiod_days']} days: due {e.due_at}")
        return "\n".join(lines)


def keys(ctx: Context, due_seconds: int | None = None) -> KeysResult:
    now = datetime.now(timezone.utc)
    histories = WorkerHistories(ctx)
    entries = [entry(ctx, k, histories, due_seconds, now) for k in inventory(ctx)]
    return KeysResult(ctx.env.name, entries)
