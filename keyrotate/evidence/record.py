"""What a command tells the security team, in one place: every event goes to the audit
trail (in the environment's database, authenticated by the audit key, with the local
copy), and the ones sinks want go to the sinks, with the event's place in the trail. A
delivery that failed is recorded in the trail too; nothing here changes a command's
outcome except a trail that cannot be written, which is the database failing (and fails
the command like any other write would)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

from keyrotate.config.context import Context
from keyrotate.db.base import Statement
from keyrotate.errors import EXIT_FAILURES, ConfigError, KeyrotateError
from keyrotate.evidence.event import ChainHead, Event
from keyrotate.evidence.keying import load_audit_key
from keyrotate.evidence.lifecycle import KeyIdentity, key_state_event
from keyrotate.evidence.notify import Delivery, Notifier
from keyrotate.evidence.trail import AuditTrail, StoreHead
from keyrotate.secrets.audit_key import AUDIT_KEY, AuditKey
from keyrotate.secrets.base import fingerprint
from keyrotate.secrets.keygen import KeygenResult, generate, write_new_secret
from keyrotate.secrets.refs import resolve

log = logging.getLogger("keyrotate.audit")


def audit_key(ctx: Context) -> AuditKey:
    """The environment's audit key, read once per command; made on first need, and its
    making recorded in the trail (an `active` key.state event, which also seals any
    events keyrotate 0.1 wrote before it)."""
    box: dict[str, AuditKey] = ctx.shared("audit-key", dict)
    if "key" not in box:
        key = load_audit_key(ctx, True, audit_trail(ctx).head_key)
        assert key is not None
        box["key"] = key
        if key.created:   # recorded with the command's first event, in its transaction
            audit_trail(ctx).queue(key_state_event(
                ctx.env.name, KeyIdentity(AUDIT_KEY, key.fingerprint(key.raw.decode()), key.id),
                "active", why=f"made in {ctx.secrets.ref(AUDIT_KEY)} to authenticate the audit "
                "trail and key fingerprints", created=True))
    return box["key"]


def existing_audit_key(ctx: Context) -> AuditKey | None:
    """The audit key if the store holds one; never makes one (for reading the trail)."""
    box: dict[str, AuditKey] = ctx.shared("audit-key", dict)
    if "key" not in box:
        key = load_audit_key(ctx, create=False)
        if key is None:
            return None
        box["key"] = key
    return box["key"]


def audit_trail(ctx: Context) -> AuditTrail:
    """The environment's trail, one per command: every appender shares its head."""
    return ctx.shared("audit-trail", lambda: AuditTrail(
        ctx.db, ctx.env.name, ctx.state_dir / f"audit-{ctx.env.name}.jsonl",
        lambda create: audit_key(ctx) if create else existing_audit_key(ctx),
        StoreHead(ctx.secrets, ctx.env.name)))


def keygen_recorded(ctx: Context, fmt: str, nbytes: int, to: str) -> KeygenResult:
    """`keygen --to REF --env ENV`: a new secret written at REF, and its creation in the
    environment's trail (the reference and the fingerprint, never the value)."""
    value = generate(fmt, nbytes)
    written = write_new_secret(to, value)
    audit_trail(ctx).append(Event(
        "secret.created", ctx.env.name, f"a new {nbytes}-byte {fmt} secret was written to {written}",
        new_fingerprint=fingerprint(value, audit_key(ctx)),
        detail={"ref": written, "format": fmt, "bytes": nbytes}))
    return KeygenResult(fmt, nbytes, written_to=written)


def notifier(ctx: Context) -> Notifier:
    return Notifier(ctx.manifest.notify, lambda ref: resolve(ctx.reference(ref), "notify reference"))


class Evidence:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._trail: AuditTrail | None = None
        self.notifier = notifier(ctx)

    @property
    def trail(self) -> AuditTrail:
        if self._trail is None:
            self._trail = audit_trail(self.ctx)
        return self._trail

    def record(self, event: Event, with_statements: Sequence[Statement] = (),
               best_effort: bool = False, before: Sequence[Event] = (),
               defer: bool = False) -> list[Delivery]:
        """The trail first (`before`, then `event`, with `with_statements`, in one
        transaction), then the sinks (which hear of `event`).
        `best_effort`: the command is failing already (perhaps the database is what
        failed): a trail that cannot be written is logged, and the sinks still hear.
        `defer`: the trail may record it with its next append (AuditTrail.defer), unless
        a sink wants it (a notification carries the event's place in the chain)."""
        if defer and not self.notifier.wants(event):
            self.trail.defer(event, with_statements, before)
            return []
        head: ChainHead | None = None
        try:
            self.trail.append(event, with_statements, before)
            if self.notifier.wants(event):
                head = self.trail.last_head()
        except KeyrotateError as e:
            if not best_effort:
                raise
            log.warning("the audit trail could not record %s: %s", event.event, e)
        deliveries = self.notifier.send(event, head)
        for d in deliveries:
            if not d.ok:
                self._record_failed_delivery(event, d)
        return deliveries

    def _record_failed_delivery(self, event: Event, d: Delivery) -> None:
        try:
            self.trail.append(Event("notify.failed", event.env, f"{event.event} was not delivered "
                                    f"to {d.sink}: {d.reason}", event.secret, event.rotation_id,
                                    event.step, detail=d.as_dict()))
        except KeyrotateError as e:
            log.warning("the audit trail could not record a failed delivery: %s", e)

    def close(self) -> None:
        self.notifier.close()


@dataclass(frozen=True)
class NotifyTestResult:
    env: str
    deliveries: list[Delivery]

    @property
    def exit_code(self) -> int:
        return 0 if all(d.ok for d in self.deliveries) else EXIT_FAILURES

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.env, "ok": self.exit_code == 0,
                "deliveries": [d.as_dict() for d in self.deliveries]}

    def text(self) -> str:
        return "\n".join(f"{d.sink}: " + (f"delivered (try {d.tries})" if d.ok else f"FAILED: {d.reason}")
                         for d in self.deliveries)


def send_test(ctx: Context) -> NotifyTestResult:
    """`notify test`: one notify.test event to every sink; here delivery is the outcome."""
    if not ctx.manifest.notify.sinks:
        raise ConfigError(f"{ctx.manifest.path}: no [notify] sinks to test")
    evidence = Evidence(ctx)
    try:
        deliveries = evidence.record(Event(
            "notify.test", ctx.env.name, f"test notification from keyrotate for {ctx.env.name}: "
            "this sink is reachable (and, for json, the signature verifies)."))
    finally:
        evidence.close()
    return NotifyTestResult(ctx.env.name, deliveries)
