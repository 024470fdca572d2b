"""Options shared by several commands, as decorators (sqlite-utils' habit), and the two
things a command may own: the --db database and the --env context, each opened once and
closed when the command ends."""

from __future__ import annotations

import functools
from typing import Any, Callable

import click

from keyrotate.cli.output import SETTLE
from keyrotate.config.context import Context
from keyrotate.crypto.codecs import FORMATS
from keyrotate.db.base import RowStore
from keyrotate.db.connect import open_database
from keyrotate.db.urls import DB_URL_HELP

F = Callable[..., Any]

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
target_option = click.option("--target", required=True, metavar="TABLE.COLUMN",
                             help="The encrypted column.")
key_column_option = click.option("--key-column", metavar="COL",
                                 help="Unique column to page by (default: the primary key).")
format_option = click.option("--format", "fmt", type=click.Choice(FORMATS),
                             default="tminus-envelope", show_default=True)
batch_option = click.option("--batch-size", type=click.IntRange(1, 50_000), default=None,
                            help="Rows per page (default: 5000; a page also stops at about "
                                 "2 MB of values). On a file no other process writes to, up "
                                 "to three pages waiting for the writer commit together.")
workers_option = click.option("--workers", type=click.IntRange(0, 64), default=None,
                              help="Crypto processes (default: 0 for small tables, else 2).")
dry_run_option = click.option("--dry-run", is_flag=True, help="Show the plan; change nothing.")
from_deployed_option = click.option(
    "--from-deployed", is_flag=True,
    help="Where a Worker's latest version is not the one deployed at 100% (after a rollback), "
         "make the new version from the deployed one (Cloudflare API) instead of refusing.")


db_option = click.option("--db", "db_url", required=True, metavar="URL", help=DB_URL_HELP)


def opened(db_url: str) -> RowStore:
    """The command's database, opened once and closed when the command ends. Commands
    open it after resolving their keys, so a bad reference never touches the database."""
    db = open_database(db_url)
    click.get_current_context().call_on_close(db.close)
    return db


def load_context(env_name: str, manifest_path: str | None) -> Context:
    """The command's environment: settled before its result is told (output.emit), closed
    when it ends."""
    ctx = Context.load(env_name, manifest_path)
    click_ctx = click.get_current_context()
    click_ctx.call_on_close(ctx.close)
    click_ctx.meta.setdefault(SETTLE, []).append(ctx.settle)
    return ctx


def _environment(required: bool, help_text: str) -> Callable[[F], F]:
    def decorate(fn: F) -> F:
        @click.option("--env", "env_name", required=required, metavar="ENV", help=help_text)
        @click.option("--manifest", "manifest_path", metavar="PATH",
                      help="keyrotate.toml (default: found here or above).")
        @functools.wraps(fn)
        def wrapper(*args: Any, env_name: str | None, manifest_path: str | None,
                    **kwargs: Any) -> Any:
            ctx = load_context(env_name, manifest_path) if env_name is not None else None
            return fn(*args, env=ctx, **kwargs)

        return wrapper

    return decorate


# --env ENV and --manifest PATH, loaded into a Context handed to the command as `env`;
# its database connection (opened on first use) is closed when it ends
environment = _environment(True, "An environment of the manifest (staging, production, ...).")
# the same, for a command that works without one and records in its trail with one
optional_environment = _environment(
    False, "An environment of the manifest: its audit key fingerprints, its trail records.")
