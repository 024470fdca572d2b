"""`secrets list|push|show`: secrets in their stores and on the Workers."""

from __future__ import annotations

import click

from keyrotate.cli.options import (
    dry_run_option,
    environment,
    from_deployed_option,
    json_option,
    optional_environment,
)
from keyrotate.cli.output import emit, say
from keyrotate.config.context import Context
from keyrotate.controlplane.worker_secrets import secrets_list, secrets_push
from keyrotate.evidence.record import audit_key
from keyrotate.secrets.describe import describe


@click.group()
def secrets() -> None:
    """Secrets in their stores and on the Workers (values are never printed unless asked)."""


@secrets.command("list")
@environment
@json_option
def secrets_list_cmd(env: Context, as_json: bool) -> None:
    """Secret names per Worker against the manifest: missing and extra (drift).

    Exit 1 when a Worker lacks a secret the manifest gives it.
    """

    emit(secrets_list(env), as_json)


@secrets.command("push")
@environment
@click.option("--only", metavar="NAME", help="Push just this secret.")
@from_deployed_option
@dry_run_option
@json_option
def secrets_push_cmd(env: Context, only: str | None, from_deployed: bool, dry_run: bool,
                     as_json: bool) -> None:
    """Push secrets from the environment's store to the Workers that hold them.

    In deploy order, one Worker at a time (each push deploys a new version), values on
    wrangler's stdin only.
    """

    emit(secrets_push(env, only, dry_run, say, from_deployed), as_json)


@secrets.command("show")
@click.argument("ref")
@optional_environment
@click.option("--reveal", is_flag=True, help="Print the value itself (to stdout).")
@json_option
def secrets_show(ref: str, env: Context | None, reveal: bool, as_json: bool) -> None:
    """Show the kid of the secret at REF, and with --env its fingerprint (keyed by that
    environment's audit key): never the value, unless --reveal."""

    emit(describe(ref, reveal, audit_key(env) if env else None), as_json)


COMMANDS = [secrets]
