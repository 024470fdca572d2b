"""The command line: parse, call the library, render the result. Nothing else.

Every command returns a typed result (keyrotate.results.Result); output.emit renders it
and exits with its code. Errors (KeyrotateError, and usage errors under --json) are
turned into one line on stderr, plus the JSON error object under --json, here in the
group, once for every command. So is an interruption: SIGTERM or SIGINT stops any
command with exit 3, "run the same command again" (every step is resumable, and a kill
at any moment is safe); a second signal while the first unwinds leaves at once, still 3.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import traceback
from typing import Any, Iterator

import click

from keyrotate import __version__
from keyrotate.cli import control, data, evidence, keys, objects, rollover, rotation, secrets
from keyrotate.cli.output import configure_logging, fail
from keyrotate.dataplane.workers import pools_abandoned
from keyrotate.errors import EXIT_INCOMPLETE, EXIT_USAGE, KeyrotateError

_JSON = "keyrotate.json"
_LOGGING = "keyrotate.logging"   # (verbose count, quiet) from before and after the command
VERBOSE_HELP = "Also debug detail on stderr."
QUIET_HELP = "Only warnings and errors on stderr."
INTERRUPTED = "interrupted: run the same command again"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class KeyrotateGroup(click.Group):
    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        wants_json = "--json" in args
        try:
            ctx = super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as e:
            if not wants_json or parent is not None:
                raise
            fail("UsageError", e.format_message(), EXIT_USAGE, True)
        ctx.meta.setdefault(_JSON, wants_json)
        return ctx

    def invoke(self, ctx: click.Context) -> Any:
        with _signals_interrupt():
            try:
                return super().invoke(ctx)
            except KeyboardInterrupt:
                fail("Interrupted", INTERRUPTED, EXIT_INCOMPLETE, ctx.meta.get(_JSON, False))
            except KeyrotateError as e:
                fail(type(e).__name__, str(e), e.exit_code, ctx.meta.get(_JSON, False))
            except click.UsageError as e:
                if not ctx.meta.get(_JSON) or ctx.parent is not None:
                    raise
                fail("UsageError", e.format_message(), EXIT_USAGE, True)


def _interrupt(signum: int, frame: Any) -> None:
    """The first SIGTERM/SIGINT unwinds the command (its cleanups run, the rotation
    records `rotation.paused`); any further one leaves at once."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _leave_now)
    raise KeyboardInterrupt


def _leave_now(signum: int, frame: Any) -> None:
    os.write(2, f"keyrotate: error: {INTERRUPTED}\n".encode())
    os._exit(EXIT_INCOMPLETE)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGINT interrupt the command, for its duration (only the main thread
    can take signals; the previous handlers come back after, for in-process callers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.signal(sig, _interrupt) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@click.group(cls=KeyrotateGroup)
@click.version_option(__version__, prog_name="keyrotate")
@click.option("-v", "--verbose", count=True, help=VERBOSE_HELP)
@click.option("-q", "--quiet", is_flag=True, help=QUIET_HELP)
def main(verbose: int, quiet: bool) -> None:
    """Safe secret rotation and key migration for Cloudflare Workers + D1.

    Keys are always given as references (env:NAME, file:PATH, dotenv:PATH#NAME,
    keyring:SERVICE#NAME, vault:MOUNT/PATH#FIELD@VERSION), never as values.
    -v and -q go before or after the command.
    """
    click.get_current_context().meta[_LOGGING] = (verbose, quiet)
    configure_logging(verbose, quiet)


def _also_after_the_command(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """-v / -q given after the command: added to those given before it (click parses the
    command's options after the group has run, so the logging is set up again)."""
    if not value:
        return
    verbose, quiet = ctx.meta.get(_LOGGING, (0, False))
    if param.name == "verbose":
        verbose += value
    else:
        quiet = True
    ctx.meta[_LOGGING] = (verbose, quiet)
    configure_logging(verbose, quiet)


def _with_logging_options(command: click.Command) -> None:
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _with_logging_options(sub)
        return
    command.params += [
        click.Option(["-v", "--verbose"], count=True, expose_value=False, help=VERBOSE_HELP,
                     callback=_also_after_the_command),
        click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, help=QUIET_HELP,
                     callback=_also_after_the_command)]


def _register() -> None:
    for module in (data, secrets, control, objects, rotation, rollover, evidence, keys):
        for command in module.COMMANDS:
            _with_logging_options(command)
            main.add_command(command)


_register()


def run() -> None:
    """The program (`keyrotate`, `python -m keyrotate.cli`): main, then, if a dead crypto
    worker broke a pool (exit 3, WorkerLost), leave without waiting for that pool's threads,
    which the interpreter would otherwise wait for at exit, forever."""
    code = 0
    try:
        main(prog_name="keyrotate")
    except SystemExit as e:
        if not pools_abandoned():
            raise
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:                      # sys.exit("message"): Python prints it and exits 1
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        if not pools_abandoned():
            raise
        traceback.print_exc()
        code = EXIT_INCOMPLETE
    if pools_abandoned():
        _leave(code)


def _leave(code: int) -> None:
    """Flush what atexit would have flushed, then exit past the stuck threads."""
    try:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)
