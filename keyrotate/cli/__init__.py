"""The command line: parse, call the library, render the result. Nothing else.

Every command returns a typed result (keyrotate.results.Result); output.emit renders it
and exits with its code. Errors (KeyrotateError, and usage errors under --json) are
turned into one line on stderr, plus the JSON error object under --json, here in the
group, once for every command.
"""

from __future__ import annotations

import signal
from typing import Any

import click

from keyrotate import __version__
from keyrotate.cli import control, data, evidence, objects, rollover, rotation, secrets
from keyrotate.cli.output import configure_logging, fail
from keyrotate.errors import EXIT_USAGE, KeyrotateError

_JSON = "keyrotate.json"
_LOGGING = "keyrotate.logging"   # (verbose count, quiet) from before and after the command
VERBOSE_HELP = "Also debug detail on stderr."
QUIET_HELP = "Only warnings and errors on stderr."


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
        try:
            return super().invoke(ctx)
        except KeyrotateError as e:
            fail(type(e).__name__, str(e), e.exit_code, ctx.meta.get(_JSON, False))
        except click.UsageError as e:
            if not ctx.meta.get(_JSON) or ctx.parent is not None:
                raise
            fail("UsageError", e.format_message(), EXIT_USAGE, True)


def _sigterm_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


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
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)


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
    for module in (data, secrets, control, objects, rotation, rollover, evidence):
        for command in module.COMMANDS:
            _with_logging_options(command)
            main.add_command(command)


_register()
