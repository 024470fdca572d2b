"""`rollover`: what a cron or CI schedule runs, advancing each secret as its policy says."""

from __future__ import annotations

import click

from keyrotate.cli.options import environment, json_option
from keyrotate.cli.output import emit, say
from keyrotate.config.context import Context
from keyrotate.rotation.rollover import rollover as run_rollover


@click.command()
@environment
@click.option("--dry-run", is_flag=True,
              help="Print what this run would do and when the next step falls due; change nothing.")
@json_option
def rollover(env: Context, dry_run: bool, as_json: bool) -> None:
    """Advance what is due on ENV, by each secret's policy in the manifest (max_age, auto,
    finish_after, window): start due rotations, resume paused ones, finish those whose
    overlap has lasted finish_after. Never a compromise, never a rotation a person started.

    Exit 0: advanced, or nothing due; 3: a step paused (the next run retries); 1: a step
    failed; 2: configuration (or another rollover holds the environment).
    """
    emit(run_rollover(env, dry_run, say), as_json)


COMMANDS = [rollover]
