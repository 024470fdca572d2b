"""What a command tells the security team, in one place: every event goes to the audit
trail (in the environment's database, hash chained, with the local copy), and the ones
sinks want go to the sinks. A delivery that failed is recorded in the trail too; nothing
here changes a command's outcome except a trail that cannot be written, which is the
database failing (and fails the command like any other write would)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

from keyrotate.config.context import Context
from keyrotate.db.base import Statement
from keyrotate.errors import EXIT_FAILURES, ConfigError, KeyrotateError
from keyrotate.evidence.event import Event
from keyrotate.evidence.notify import Delivery, Notifier
from keyrotate.evidence.trail import AuditTrail
from keyrotate.secrets.refs import resolve

log = logging.getLogger("keyrotate.audit")


def audit_trail(ctx: Context) -> AuditTrail:
    """The environment's trail, one per command: every appender shares its head."""
    return ctx.shared("audit-trail", lambda: AuditTrail(
        ctx.db, ctx.env.name, ctx.state_dir / f"audit-{ctx.env.name}.jsonl"))


def notifier(ctx: Context) -> Notifier:
    return Notifier(ctx.manifest.notify, lambda ref: resolve(ctx.reference(ref), "notify reference"))


class Evidence:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._trail: AuditTrail | None = None
        self.notifier = notifier(ctx)
        self._unsent: list[Event] = []    # queued with `later`: sent once in the trail

    @property
    def trail(self) -> AuditTrail:
        if self._trail is None:
            self._trail = audit_trail(self.ctx)
        return self._trail

    def record(self, event: Event, with_statements: Sequence[Statement] = (),
               best_effort: bool = False, later: bool = False) -> list[Delivery]:
        """The trail first (with `with_statements`, in one transaction), then the sinks.
        `best_effort`: the command is failing already (perhaps the database is what
        failed): a trail that cannot be written is logged, and the sinks still hear.
        `later`: the record waits for the trail's next append (AuditTrail.later says
        which may), and the sinks hear of it after that."""
        if later:
            self.trail.later(event, with_statements)
            self._unsent.append(event)
            return []
        try:
            self.trail.append(event, with_statements)
        except KeyrotateError as e:
            if not best_effort:
                raise
            log.warning("the audit trail could not record %s: %s", event.event, e)
        self._send_unsent()
        return self._send(event)

    def _record_failed_delivery(self, event: Event, d: Delivery) -> None:
        try:
            self.trail.append(Event("notify.failed", event.env, f"{event.event} was not delivered "
                                    f"to {d.sink}: {d.reason}", event.secret, event.rotation_id,
                                    event.step, detail=d.as_dict()))
        except KeyrotateError as e:
            log.warning("the audit trail could not record a failed delivery: %s", e)

    def _send_unsent(self) -> None:
        unsent, self._unsent = self._unsent, []
        for event in unsent:
            self._send(event)

    def _send(self, event: Event) -> list[Delivery]:
        deliveries = self.notifier.send(event)
        for d in deliveries:
            if not d.ok:
                self._record_failed_delivery(event, d)
        return deliveries

    def close(self) -> None:
        """Whatever still waits goes to the trail (best effort: a command that is ending
        on an error keeps its error), then to the sinks."""
        try:
            if self._trail is not None:
                self._trail.flush()
            self._send_unsent()
        except KeyrotateError as e:
            log.warning("the audit trail could not record what was left: %s", e)
        finally:
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
