"""`rotate` and `status`: rotations of the manifest's secrets, start to finish."""

from __future__ import annotations

import sys

import click

from keyrotate.cli.options import environment, from_deployed_option, json_option
from keyrotate.cli.output import emit, emit_text, say
from keyrotate.config.context import Context
from keyrotate.config.manifest import parse_duration
from keyrotate.dataplane.objects.driver import ObjectsOptions
from keyrotate.errors import ConfigError
from keyrotate.rotation.openmetrics import openmetrics, write_metrics_file
from keyrotate.rotation.rotate import RotateOptions
from keyrotate.rotation.rotate import rotate as run_rotate
from keyrotate.rotation.status import status as run_status


@click.command()
@click.argument("secret")
@environment
@click.option("--compromised", is_flag=True,
              help="Compromise response: fresh DEKs, no overlap, old key retired, incident report.")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--yes", is_flag=True, help="Go ahead with a cutover that has consequences (stated).")
@click.option("--finish", "finish_rotation", is_flag=True,
              help="End the overlap: remove PREVIOUS, promote the new value.")
@click.option("--force", is_flag=True, help="--finish before max_token_ttl has passed.")
@click.option("--abort", is_flag=True,
              help="Undo an open rotation: the Workers and rows go back to the old value (proven "
                   "by a census) before the new one is discarded; resumable like the rotation.")
@click.option("--stale-wait", type=click.FloatRange(0, 3600), default=120.0, show_default=True,
              help="Seconds to keep asking Durable Objects still on the old key.")
@click.option("--canary", is_flag=True,
              help="New secrets reach each Worker as a canary: 0% smoke test, then 10/50/100% "
                   "(not with --abort).")
@from_deployed_option
@json_option
def rotate(secret: str, env: Context, compromised: bool, dry_run: bool, yes: bool,
           finish_rotation: bool, force: bool, abort: bool, stale_wait: float, canary: bool,
           from_deployed: bool, as_json: bool) -> None:
    """Rotate SECRET on ENV from start to finish; a re-run resumes where it stopped.

    External secrets (OAuth client secrets) take the new value on stdin, never argv.
    """

    def read_external() -> str:
        stdin = sys.stdin
        if stdin.isatty():
            return click.prompt(f"new value for {secret}", hide_input=True, confirmation_prompt=True)
        value = stdin.read().rstrip("\n")
        if not value:
            raise ConfigError(f"no value for {secret} on stdin")
        return value

    options = RotateOptions(compromised, dry_run, yes, finish_rotation, force, abort, from_deployed,
                            canary, ObjectsOptions(stale_wait=stale_wait))
    emit(run_rotate(env, secret, options, say, read_external), as_json)


@click.command()
@environment
@click.option("--due", metavar="AGE", help="Exit 1 if a secret is older than this (e.g. 90d).")
@click.option("--notify", "send", is_flag=True,
              help="Send secret.overdue for each secret past --due, and secret.unchecked for "
                   "each one status could not check, to the [notify] sinks.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "openmetrics"]), default="text",
              show_default=True, help="openmetrics: for Prometheus.")
@click.option("--metrics-file", type=click.Path(dir_okay=False), metavar="PATH",
              help="Also write OpenMetrics here, atomically (node_exporter's textfile collector).")
@json_option
def status(env: Context, due: str | None, send: bool, fmt: str, metrics_file: str | None,
           as_json: bool) -> None:
    """Per secret: age, last rotation, rotation in progress, rows per key. For cron and CI
    schedules: exit 1 when a secret is past --due, and when a secret's value, age or rows
    could not be read (named under "could not check"): a check not made is not a pass."""

    if send and not due and not any(s.max_age for s in env.manifest.secrets.values()):
        raise ConfigError("--notify sends secret.overdue and secret.unchecked events: give "
                          "--due AGE too (or a max_age to the secrets in the manifest)")
    result = run_status(env, parse_duration(due, "--due") if due else None, send)
    if metrics_file:
        write_metrics_file(result, metrics_file)
    if fmt == "openmetrics" and not as_json:
        emit_text(openmetrics(result), result.exit_code)
    emit(result, as_json or fmt == "json")


COMMANDS = [rotate, status]
