"""How results and errors leave the process: one JSON object as the last line of stdout
with --json, short text otherwise; progress and logs on stderr; the result's exit code.

An error under --json is a JSON object too, `{"error": {"type", "message",
"exit_code"}}`, so automation never has to parse stderr.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, NoReturn

import click

from keyrotate.results import Result

log = logging.getLogger("keyrotate")


class _Format(logging.Formatter):
    """Progress as plain lines; warnings and debug detail marked as such."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"keyrotate: {record.levelname.lower()}: {message}"
        if record.levelno < logging.INFO:
            return f"keyrotate: debug: {record.name}: {message}"
        return message


def configure_logging(verbose: int, quiet: bool) -> None:
    """stdlib logging for keyrotate's loggers only, to stderr: -q warnings and errors,
    default progress too, -v everything (debug). Third-party loggers stay silent."""
    handler = logging.StreamHandler(sys.stderr)  # at call time: the stream of this run
    handler.setFormatter(_Format())
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)


def say(message: str) -> None:
    """Human progress goes to stderr (through logging: -q silences it), keeping stdout
    for results."""
    log.info(message)


SETTLE = "keyrotate.settle"   # click meta: what must be written before a result is told


def settle() -> None:
    """Every record the command deferred written before its result is told: one that
    cannot be fails the command (a push confirmed nowhere never ends in exit 0)."""
    for settle_context in click.get_current_context().meta.get(SETTLE, []):
        settle_context()


def emit(result: Result, as_json: bool) -> NoReturn:
    settle()
    if as_json:
        click.echo(json.dumps(result.as_dict(), default=str))
    else:
        text = result.text()
        if text:
            click.echo(text)
    click.get_current_context().exit(result.exit_code)


def emit_text(text: str, exit_code: int) -> NoReturn:
    """A result already rendered in a format of its own (OpenMetrics)."""
    settle()
    click.echo(text, nl=False)
    click.get_current_context().exit(exit_code)


def error_envelope(kind: str, message: str, exit_code: int) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message, "exit_code": exit_code}}


def fail(kind: str, message: str, exit_code: int, as_json: bool) -> NoReturn:
    """One line on stderr (never a traceback); under --json also the error object."""
    click.echo(f"keyrotate: error: {message}", err=True)
    if as_json:
        click.echo(json.dumps(error_envelope(kind, message, exit_code)))
    raise click.exceptions.Exit(exit_code)
