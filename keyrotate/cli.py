"""The command line: parse, call the library, render text or --json. Nothing else."""

from __future__ import annotations

import functools
import signal
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import click

from keyrotate import __version__, render
from keyrotate.crypto.codecs import FORMATS, MODES
from keyrotate.errors import EXIT_FAILURES, EXIT_INCOMPLETE, EXIT_USAGE, ConfigError, KeyrotateError
from keyrotate.progress_bar import progress_for
from keyrotate.store import open_store
from keyrotate.store.base import RowStore


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """KeyrotateError -> one line on stderr and its exit code; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyrotateError as e:
            click.echo(f"keyrotate: error: {e}", err=True)
            sys.exit(e.exit_code)

    return wrapper


def _sigterm_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextmanager
def opened(db: str) -> Iterator[RowStore]:
    store = open_store(db)
    try:
        yield store
    finally:
        store.close()


def finish(result: dict[str, Any], as_json: bool, text: str, code: int) -> None:
    if as_json:
        render.emit_json(result)
    else:
        click.echo(text)
    sys.exit(code)


db_option = click.option("--db", required=True, metavar="URL",
                         help="file:PATH, libsql://, http(s)://, ws(s)://")
target_option = click.option("--target", required=True, metavar="TABLE.COLUMN",
                             help="The encrypted column.")
key_column_option = click.option("--key-column", metavar="COL",
                                 help="Unique column to page by (default: the primary key).")
format_option = click.option("--format", "fmt", type=click.Choice(FORMATS),
                             default="tminus-envelope", show_default=True)
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
batch_option = click.option("--batch-size", type=click.IntRange(1, 50_000), default=None,
                            help="Rows per page and transaction (default: 1000; 2000 for d1://).")
workers_option = click.option("--workers", type=click.IntRange(0, 64), default=None,
                              help="Crypto processes (default: 0 for small tables, else 2).")


@click.group()
@click.version_option(__version__, prog_name="keyrotate")
def main() -> None:
    """Safe secret rotation and key migration for Cloudflare Workers + D1.

    Keys are always given as references (env:NAME, file:PATH, dotenv:PATH#NAME,
    keyring:SERVICE#NAME, vault:MOUNT/PATH#FIELD@VERSION), never as values.
    """
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)


@main.command()
@db_option
@target_option
@click.option("--old-key", required=True, metavar="REF", help="Reference to the key being retired.")
@click.option("--new-key", required=True, metavar="REF", help="Reference to the new key.")
@key_column_option
@format_option
@click.option("--mode", type=click.Choice(MODES), default="rewrap", show_default=True,
              help="rewrap: new key wraps the same DEK. fresh-dek: new DEK and IV (compromise).")
@batch_option
@workers_option
@click.option("--dry-run", is_flag=True, help="Read and decrypt everything, write nothing.")
@json_option
@handle_errors
def reencrypt(db: str, target: str, old_key: str, new_key: str, key_column: str | None,
              fmt: str, mode: str, batch_size: int, workers: int | None, dry_run: bool,
              as_json: bool) -> None:
    """Move every row of TABLE.COLUMN from the old key to the new key.

    Resumable: running the same command again continues an unfinished run, and rows
    already under the new key are never rewritten. Exit 0 done, 1 some rows failed
    (listed, left untouched), 2 usage error, 3 interrupted (run again).
    """
    from keyrotate.engine.reencrypt import ReencryptOptions
    from keyrotate.engine.reencrypt import reencrypt as run_reencrypt
    from keyrotate.keys_from_refs import codec_from_refs
    from keyrotate.store.base import resolve_target

    codec = codec_from_refs(fmt, new_key, old_key, mode)
    with opened(db) as store:
        tgt = resolve_target(store, target, key_column)
        options = ReencryptOptions(fmt=fmt, mode=mode, batch_size=batch_size, dry_run=dry_run,
                                   workers=workers)
        result = run_reencrypt(store, tgt, codec, options, progress_for(tgt.name)).as_dict()
    code = EXIT_FAILURES if result["rows_failed"] else 0
    if result["rows_unsettled"] and not code:
        code = EXIT_INCOMPLETE
    finish(result, as_json, render.reencrypt_text(result), code)


@main.command()
@db_option
@target_option
@click.option("--key", required=True, metavar="REF", help="Reference to the key rows should open under.")
@click.option("--old-key", metavar="REF", help="Also count rows still under this key.")
@key_column_option
@format_option
@batch_option
@workers_option
@json_option
@handle_errors
def verify(db: str, target: str, key: str, old_key: str | None, key_column: str | None,
           fmt: str, batch_size: int, workers: int | None, as_json: bool) -> None:
    """Census of TABLE.COLUMN: rows ok under --key, old, null, failed.

    Exit 0 only if no row failed and none is under the old key.
    """
    from keyrotate.engine.verify import verify as run_verify
    from keyrotate.keys_from_refs import codec_from_refs
    from keyrotate.store.base import resolve_target

    codec = codec_from_refs(fmt, key, old_key, "rewrap", new_flag="--key")
    with opened(db) as store:
        tgt = resolve_target(store, target, key_column)
        census = run_verify(store, tgt, codec, batch_size, workers, progress_for(tgt.name))
    result = census.as_dict()
    finish(result, as_json, render.verify_text(result), 0 if census.clean else EXIT_FAILURES)


@main.command()
@db_option
@click.argument("run_id", required=False)
@json_option
@handle_errors
def runs(db: str, run_id: str | None, as_json: bool) -> None:
    """List reencrypt runs from the journal, or show one run with its failed rows."""
    from keyrotate.engine.journal import list_runs, run_failures
    from keyrotate.errors import ConfigError

    with opened(db) as store:
        found = list_runs(store, run_id)
        if run_id:
            if not found:
                raise ConfigError(f"no run {run_id!r} in {db}")
            one = dict(found[0], failures=run_failures(store, run_id))
            text = render.runs_text(found) + "\n" + "\n".join(
                render.failure_lines(one["failures"], int(one["rows_failed"])))
            finish(one, as_json, text.rstrip(), 0)
    finish({"runs": found}, as_json, render.runs_text(found), 0)


@main.command()
@click.option("--format", "fmt", type=click.Choice(["base64", "hex", "fernet"]), default="base64",
              show_default=True, help="base64 like `openssl rand -base64 32`; hex = 64 hex chars.")
@click.option("--bytes", "nbytes", type=int, default=32, show_default=True)
@click.option("--to", "to", metavar="REF", help="Write the key into a store instead of printing it.")
@handle_errors
def keygen(fmt: str, nbytes: int, to: str | None) -> None:
    """Make a new random secret. With --to it is stored and never printed."""
    from keyrotate.keygen import generate, write_new_secret

    value = generate(fmt, nbytes)
    if to is None:
        click.echo(value)
        return
    where = write_new_secret(to, value)
    render.say(f"wrote a new {nbytes}-byte {fmt} secret to {where}")


manifest_option = click.option("--manifest", "manifest_path", metavar="PATH",
                               help="keyrotate.toml (default: found here or above).")
env_option = click.option("--env", "env_name", required=True, metavar="ENV",
                          help="An environment of the manifest (staging, production, ...).")


def context(env_name: str, manifest_path: str | None):
    from keyrotate.control import Context

    return Context.load(env_name, manifest_path)


@main.command()
@click.option("--path", default="keyrotate.toml", show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing file.")
@handle_errors
def init(path: str, force: bool) -> None:
    """Write a commented manifest for the reference application."""
    from pathlib import Path

    from keyrotate.control import write_init

    render.say(f"wrote {write_init(Path(path), force)}")


@main.group()
def secrets() -> None:
    """Secrets in their stores and on the Workers (values are never printed unless asked)."""


@secrets.command("list")
@env_option
@manifest_option
@json_option
@handle_errors
def secrets_list_cmd(env_name: str, manifest_path: str | None, as_json: bool) -> None:
    """Secret names per Worker against the manifest: missing and extra (drift).

    Exit 1 when a Worker lacks a secret the manifest gives it.
    """
    from keyrotate.control import secrets_list

    result = secrets_list(context(env_name, manifest_path))
    finish(result, as_json, render.secrets_list_text(result), EXIT_FAILURES if result["missing"] else 0)


@secrets.command("push")
@env_option
@click.option("--only", metavar="NAME", help="Push just this secret.")
@click.option("--dry-run", is_flag=True, help="Show the plan with fingerprints; push nothing.")
@manifest_option
@json_option
@handle_errors
def secrets_push_cmd(env_name: str, only: str | None, dry_run: bool, manifest_path: str | None,
                     as_json: bool) -> None:
    """Push secrets from the environment's store to the Workers that hold them.

    In deploy order, one Worker at a time (each push deploys a new version), values on
    wrangler's stdin only.
    """
    from keyrotate.control import secrets_push

    result = secrets_push(context(env_name, manifest_path), only, dry_run, render.say)
    finish(result, as_json, render.push_text(result), 0)


@main.command()
@env_option
@click.option("--only", metavar="WORKER")
@click.option("--dry-run", is_flag=True, help="Show the plan; deploy nothing.")
@manifest_option
@json_option
@handle_errors
def deploy(env_name: str, only: str | None, dry_run: bool, manifest_path: str | None,
           as_json: bool) -> None:
    """Deploy Workers in deploy order, validating each; a failed health check rolls back
    what this run deployed, in reverse order (exit 1)."""
    from keyrotate.control import deploy as run_deploy

    result = run_deploy(context(env_name, manifest_path), only, dry_run, render.say)
    finish(result, as_json, render.deploy_text(result), 0 if result.get("ok", True) else EXIT_FAILURES)


@main.command()
@env_option
@click.option("--only", metavar="WORKER")
@click.option("--yes", is_flag=True, help="Really roll back (without it: show the plan).")
@click.option("--force", is_flag=True,
              help="Also across a MASTER_KEY / JWT rotation: roll back the code, then re-push "
                   "the current secrets.")
@manifest_option
@json_option
@handle_errors
def rollback(env_name: str, only: str | None, yes: bool, force: bool, manifest_path: str | None,
             as_json: bool) -> None:
    """Roll Workers back to their previous deployment, in reverse deploy order, then validate.

    Refuses (exit 1) a rollback to a version from before a MASTER_KEY or JWT change that
    keyrotate pushed: that version carries the old secret values.
    """
    from keyrotate.control import rollback as run_rollback

    result = run_rollback(context(env_name, manifest_path), only, yes, force, render.say)
    code = EXIT_USAGE if not result["done"] else (0 if result["ok"] else EXIT_FAILURES)
    finish(result, as_json, render.rollback_text(result), code)


@main.command()
@env_option
@manifest_option
@json_option
@handle_errors
def validate(env_name: str, manifest_path: str | None, as_json: bool) -> None:
    """Health of every Worker with a health URL; exit 1 on any failure."""
    from keyrotate.control import validate as run_validate

    result = run_validate(context(env_name, manifest_path))
    finish(result, as_json, render.validate_text(result), 0 if result["ok"] else EXIT_FAILURES)


@secrets.command("show")
@click.argument("ref")
@click.option("--reveal", is_flag=True, help="Print the value itself (to stdout).")
@json_option
@handle_errors
def secrets_show(ref: str, reveal: bool, as_json: bool) -> None:
    """Show a fingerprint of the secret at REF: never the value, unless --reveal."""
    from keyrotate.secret_info import describe

    info = describe(ref, reveal)
    text = "\n".join(f"{k}: {v}" for k, v in info.items() if v is not None)
    finish(info, as_json, text, 0)


@main.command()
@click.argument("secret")
@env_option
@click.option("--compromised", is_flag=True,
              help="Compromise response: fresh DEKs, no overlap, old key retired, incident report.")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--yes", is_flag=True, help="Go ahead with a cutover that has consequences (stated).")
@click.option("--finish", "finish_rotation", is_flag=True,
              help="End the overlap: remove PREVIOUS, promote the new value.")
@click.option("--force", is_flag=True, help="--finish before max_token_ttl has passed.")
@click.option("--abort", is_flag=True, help="Abandon a rotation that has only staged its new value.")
@manifest_option
@json_option
@handle_errors
def rotate(secret: str, env_name: str, compromised: bool, dry_run: bool, yes: bool,
           finish_rotation: bool, force: bool, abort: bool, manifest_path: str | None,
           as_json: bool) -> None:
    """Rotate SECRET on ENV from start to finish; a re-run resumes where it stopped.

    External secrets (OAuth client secrets) take the new value on stdin, never argv.
    """
    from keyrotate.rotation import rotate as run_rotate

    def read_external() -> str:
        stdin = sys.stdin
        if stdin.isatty():
            return click.prompt(f"new value for {secret}", hide_input=True, confirmation_prompt=True)
        value = stdin.read().rstrip("\n")
        if not value:
            raise ConfigError(f"no value for {secret} on stdin")
        return value

    result = run_rotate(context(env_name, manifest_path), secret, compromised=compromised,
                        dry_run=dry_run, yes=yes, finish=finish_rotation, force=force, abort=abort,
                        read_external=read_external, say=render.say)
    finish(result, as_json, render.rotate_text(result), 0)


@main.command()
@env_option
@click.option("--due", metavar="AGE", help="Exit 1 if a secret is older than this (e.g. 90d).")
@manifest_option
@json_option
@handle_errors
def status(env_name: str, due: str | None, manifest_path: str | None, as_json: bool) -> None:
    """Per secret: age, rotation in progress, rows per key. For cron and CI schedules."""
    from keyrotate.manifest import parse_duration
    from keyrotate.rotation import status as run_status

    result = run_status(context(env_name, manifest_path), parse_duration(due, "--due") if due else None)
    finish(result, as_json, render.status_text(result), EXIT_FAILURES if result["due"] else 0)


@main.group()
def migrations() -> None:
    """Forward-only D1 migrations (recorded in d1_migrations, as wrangler does)."""


@migrations.command("list")
@env_option
@manifest_option
@json_option
@handle_errors
def migrations_list_cmd(env_name: str, manifest_path: str | None, as_json: bool) -> None:
    """Migrations of migrations_dir and whether ENV has applied them."""
    from keyrotate.control import migrations_list

    result = migrations_list(context(env_name, manifest_path))
    text = "\n".join(f"  {'applied' if m['applied'] else 'PENDING':<8} {m['name']}"
                     for m in result["migrations"]) or "  no migrations"
    finish(result, as_json, f"migrations on {env_name}:\n{text}", 0)


@migrations.command("apply")
@env_option
@click.option("--dry-run", is_flag=True, help="List what would be applied.")
@click.option("--force", is_flag=True, help="Apply even what staging has not applied.")
@manifest_option
@json_option
@handle_errors
def migrations_apply_cmd(env_name: str, dry_run: bool, force: bool, manifest_path: str | None,
                         as_json: bool) -> None:
    """Apply pending migrations, each with its record in one transaction."""
    from keyrotate.control import migrations_apply

    result = migrations_apply(context(env_name, manifest_path), dry_run, force, render.say)
    names = result.get("would_apply") if dry_run else result.get("applied")
    verb = "would apply" if dry_run else "applied"
    finish(result, as_json, f"{verb}: {', '.join(names) if names else 'nothing'}", 0)


@migrations.command("compensate")
@click.argument("file", type=click.Path(dir_okay=False))
@json_option
@handle_errors
def migrations_compensate_cmd(file: str, as_json: bool) -> None:
    """Write NNNN_rollback_<name>.sql that undoes FILE (next free number, same folder)."""
    from pathlib import Path

    from keyrotate.compensate import write_compensation

    path, comp = write_compensation(Path(file))
    for w in comp.warnings:
        render.say(f"WARNING: {w}")
    finish({"written": str(path), "warnings": comp.warnings}, as_json, f"wrote {path}", 0)


@main.command()
@click.option("--rows", type=click.IntRange(1, 10_000_000), default=10_000, show_default=True)
@click.option("--dir", "directory", default="keyrotate-demo", show_default=True,
              help="Where the demo database and its .env go (replaced if present).")
@click.option("--workers", type=click.IntRange(0, 64), default=None)
@json_option
@handle_errors
def demo(rows: int, directory: str, workers: int | None, as_json: bool) -> None:
    """Build a local database of synthetic accounts, rotate its master key, verify it."""
    from keyrotate.demo_run import run_demo

    result = run_demo(rows, directory, workers, say=render.say)
    text = "\n".join(result.pop("text_lines"))
    finish(result, as_json, text, 0 if result["clean"] else EXIT_FAILURES)


if __name__ == "__main__":
    main()
