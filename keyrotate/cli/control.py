"""Control-plane commands: init, deploy, rollback, validate, migrations."""

from __future__ import annotations

from pathlib import Path

import click

from keyrotate.cli.options import dry_run_option, environment, json_option, optional_environment
from keyrotate.cli.output import emit, say
from keyrotate.config.context import Context
from keyrotate.config.template import write_init
from keyrotate.controlplane.deploy import deploy as run_deploy
from keyrotate.controlplane.health import validate as run_validate
from keyrotate.controlplane.rollback import rollback as run_rollback
from keyrotate.migrations.apply import migrations_apply, migrations_list
from keyrotate.migrations.compensate import write_compensation


@click.command()
@click.option("--path", default="keyrotate.toml", show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing file.")
@json_option
def init(path: str, force: bool, as_json: bool) -> None:
    """Write a commented manifest for the reference application."""

    emit(write_init(Path(path), force), as_json)


@click.command()
@environment
@click.option("--only", metavar="WORKER")
@dry_run_option
@json_option
def deploy(env: Context, only: str | None, dry_run: bool, as_json: bool) -> None:
    """Deploy Workers in deploy order, validating each; a failed health check rolls back
    what this run deployed, in reverse order (exit 1)."""

    emit(run_deploy(env, only, dry_run, say), as_json)


@click.command()
@environment
@click.option("--only", metavar="WORKER")
@click.option("--yes", is_flag=True, help="Really roll back (without it: show the plan).")
@click.option("--force", is_flag=True,
              help="Also across a MASTER_KEY / JWT rotation: make one new version from the "
                   "target's code with the secrets serving now, deployed at 100% in one step "
                   "(the old values never serve).")
@json_option
def rollback(env: Context, only: str | None, yes: bool, force: bool, as_json: bool) -> None:
    """Roll Workers back to their previous deployment, in reverse deploy order, then validate.

    Refuses (exit 1) a rollback to a version from before a MASTER_KEY or JWT change that
    keyrotate pushed: that version carries the old secret values.
    """

    emit(run_rollback(env, only, yes, force, say), as_json)


@click.command()
@environment
@json_option
def validate(env: Context, as_json: bool) -> None:
    """Health of every Worker with a health URL; exit 1 on any failure."""

    emit(run_validate(env), as_json)


@click.group()
def migrations() -> None:
    """Forward-only D1 migrations (recorded in d1_migrations, as wrangler does)."""


@migrations.command("list")
@environment
@json_option
def migrations_list_cmd(env: Context, as_json: bool) -> None:
    """Migrations of migrations_dir and whether ENV has applied them."""

    emit(migrations_list(env), as_json)


@migrations.command("apply")
@environment
@click.option("--dry-run", is_flag=True, help="List what would be applied.")
@click.option("--force", is_flag=True, help="Apply even what staging has not applied.")
@json_option
def migrations_apply_cmd(env: Context, dry_run: bool, force: bool, as_json: bool) -> None:
    """Apply pending migrations, each with its record in one transaction."""

    emit(migrations_apply(env, dry_run, force, say), as_json)


@migrations.command("compensate")
@click.argument("file", type=click.Path(dir_okay=False))
@optional_environment
@json_option
def migrations_compensate_cmd(file: str, env: Context | None, as_json: bool) -> None:
    """Write NNNN_rollback_<name>.sql that undoes FILE (next free number, same folder);
    with --env, the environment's audit trail records it."""

    result = write_compensation(Path(file), env)
    for w in result.warnings:
        say(f"WARNING: {w}")
    emit(result, as_json)


COMMANDS = [init, deploy, rollback, validate, migrations]
