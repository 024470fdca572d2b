"""`objects census|rewrap`: envelopes inside Durable Objects, through the Worker's endpoint."""

from __future__ import annotations

import click

from keyrotate.cli.options import dry_run_option, environment, json_option
from keyrotate.cli.output import emit
from keyrotate.cli.progress_bar import progress_for
from keyrotate.config.context import Context
from keyrotate.dataplane.objects.driver import ObjectsOptions
from keyrotate.targets.objects import objects_census, objects_rewrap_proven

target_option = click.option("--target", "target_name", required=True, metavar="NAME",
                             help="The Durable Object class of an [[encrypted]] object target.")
concurrency_option = click.option("--concurrency", type=click.IntRange(1, 64), default=4,
                                  show_default=True, help="Requests in flight.")
batch_option = click.option("--batch", type=click.IntRange(1, 1000), default=50, show_default=True,
                            help="Ids per request (a free-plan Worker may make 50 subrequests).")


@click.group()
def objects() -> None:
    """Durable Object targets: census and rewrap through the Worker (no key is ever sent)."""


@objects.command("census")
@environment
@target_option
@concurrency_option
@batch_option
@json_option
def objects_census_cmd(env: Context, target_name: str, concurrency: int, batch: int,
                       as_json: bool) -> None:
    """Which key opens each object's envelope: current (the new key's id only), old,
    stale, missing, failed. Exit 0 only if none is old, stale or failed."""

    target = env.manifest.object_target(target_name)
    emit(objects_census(env, target, ObjectsOptions(concurrency, batch),
                        progress_for(f"{target.name} census")), as_json)


@objects.command("rewrap")
@environment
@target_option
@concurrency_option
@batch_option
@click.option("--stale-wait", type=click.FloatRange(0, 3600), default=120.0, show_default=True,
              help="Seconds to keep asking objects still on the old key before reporting them.")
@dry_run_option
@json_option
def objects_rewrap_cmd(env: Context, target_name: str, concurrency: int, batch: int,
                       stale_wait: float, dry_run: bool, as_json: bool) -> None:
    """Rewrap every object not yet completed in the ledger under the new key, then prove
    it with a census of every object (ids found behind are sent once more).

    Resumable: the ledger records every confirmed object. Exit 0 every object opens
    under the new key (by the census), 1 some objects failed (listed, never modified),
    2 refused (token, no previous key), 3 incomplete (objects still on the old key, or
    kept busy): run it again.
    """

    target = env.manifest.object_target(target_name)
    emit(objects_rewrap_proven(env, target, ObjectsOptions(concurrency, batch, stale_wait, dry_run),
                        progress_for(f"{target.name} rewrap")), as_json)


COMMANDS = [objects]
