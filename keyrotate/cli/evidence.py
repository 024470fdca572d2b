"""`audit show|verify` and `notify test`: the environment's audit trail and its sinks."""

from __future__ import annotations

import click

from keyrotate.cli.options import environment, json_option
from keyrotate.cli.output import emit
from keyrotate.config.context import Context
from keyrotate.evidence.record import audit_trail, send_test
from keyrotate.evidence.trail import show
from keyrotate.evidence.verify import verify_trail


@click.group()
def audit() -> None:
    """The environment's audit trail: in its database, hash chained, one history for
    every operator."""


@audit.command("show")
@environment
@click.option("--rotation", "rotation_id", metavar="ID", help="Only this rotation's events.")
@click.option("--last", type=click.IntRange(1), metavar="N", help="Only the last N events.")
@json_option
def audit_show(env: Context, rotation_id: str | None, last: int | None, as_json: bool) -> None:
    """The timeline: who did what, when, with fingerprints (never values)."""

    emit(show(audit_trail(env), rotation_id, last), as_json)


@audit.command("verify")
@environment
@json_option
def audit_verify(env: Context, as_json: bool) -> None:
    """Check the chain (each event's MAC under the audit key), this machine's witness and
    the head the store recorded. Exit 1 naming the first event forged, altered, removed or
    reordered, a witness missing or cut, or a trail cut short."""

    emit(verify_trail(audit_trail(env)), as_json)


@click.group()
def notify() -> None:
    """Notification sinks ([notify] in keyrotate.toml)."""


@notify.command("test")
@environment
@json_option
def notify_test(env: Context, as_json: bool) -> None:
    """Send a notify.test event to every sink; exit 1 if one was not delivered."""

    emit(send_test(env), as_json)


COMMANDS = [audit, notify]
