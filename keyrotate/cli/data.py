"""Data-plane commands: reencrypt, verify, runs, keygen, demo. No manifest needed."""

from __future__ import annotations

import os
import shlex
import shutil
import sys

import click

from keyrotate.cli.options import (
    batch_option,
    db_option,
    format_option,
    json_option,
    key_column_option,
    opened,
    optional_environment,
    target_option,
    workers_option,
)
from keyrotate.cli.output import emit, say
from keyrotate.cli.progress_bar import progress_for
from keyrotate.config.context import Context
from keyrotate.crypto.codecs import MODES
from keyrotate.crypto.keys import MAX_NEW_KEY_BYTES, MIN_NEW_KEY_BYTES, NEW_KEY_RANGE
from keyrotate.dataplane.codec_refs import codec_from_refs
from keyrotate.dataplane.reencrypt import ReencryptOptions
from keyrotate.dataplane.reencrypt import reencrypt as run_reencrypt
from keyrotate.dataplane.runs import runs as list_runs
from keyrotate.dataplane.verify import LISTED
from keyrotate.dataplane.verify import verify as run_verify
from keyrotate.db.table_shape import resolve_target
from keyrotate.demo.run import run_demo
from keyrotate.evidence.record import keygen_recorded
from keyrotate.secrets.keygen import keygen as make_key


@click.command()
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
def reencrypt(db_url: str, target: str, old_key: str, new_key: str, key_column: str | None,
              fmt: str, mode: str, batch_size: int | None, workers: int | None, dry_run: bool,
              as_json: bool) -> None:
    """Move every row of TABLE.COLUMN from the old key to the new key.

    Resumable: running the same command again continues an unfinished run, and rows
    already under the new key are never rewritten. Exit 0 done, 1 some rows failed
    (listed, left untouched), 2 usage error, 3 interrupted (run again).
    """

    codec = codec_from_refs(fmt, new_key, old_key, mode)
    db = opened(db_url)
    tgt = resolve_target(db, target, key_column)
    options = ReencryptOptions(fmt=fmt, mode=mode, batch_size=batch_size, dry_run=dry_run,
                               workers=workers)
    emit(run_reencrypt(db, tgt, codec, options, progress_for(tgt.name)), as_json)


@click.command()
@db_option
@target_option
@click.option("--key", required=True, metavar="REF", help="Reference to the key rows should open under.")
@click.option("--old-key", metavar="REF", help="Also count rows still under this key.")
@key_column_option
@format_option
@batch_option
@workers_option
@click.option("--failed-ids", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write every failed row's id to FILE, one per line (replaced atomically when "
                   f"the census ends; the output lists the first {LISTED}).")
@json_option
def verify(db_url: str, target: str, key: str, old_key: str | None, key_column: str | None,
           fmt: str, batch_size: int | None, workers: int | None, failed_ids: str | None,
           as_json: bool) -> None:
    """Census of TABLE.COLUMN: rows ok under --key, old, null, failed.

    Exit 0 only if no row failed and none is under the old key.
    """

    codec = codec_from_refs(fmt, key, old_key, "rewrap", new_flag="--key", check_new=False)
    db = opened(db_url)
    tgt = resolve_target(db, target, key_column)
    emit(run_verify(db, tgt, codec, batch_size, workers, progress_for(tgt.name), failed_ids),
         as_json)


@click.command()
@db_option
@click.argument("run_id", required=False)
@json_option
def runs(db_url: str, run_id: str | None, as_json: bool) -> None:
    """List reencrypt runs from the journal, or show one run with its failed rows."""

    emit(list_runs(opened(db_url), run_id), as_json)


@click.command()
@click.option("--format", "fmt", type=click.Choice(["base64", "hex", "fernet"]), default="base64",
              show_default=True, help="base64 like `openssl rand -base64 32`; hex: a MASTER_KEY is "
                                      "exactly 32 bytes (64 hex characters).")
@click.option("--bytes", "nbytes", type=click.IntRange(MIN_NEW_KEY_BYTES, MAX_NEW_KEY_BYTES),
              default=32, show_default=True,
              help=f"Bytes of key material: {NEW_KEY_RANGE}, the range every command accepts "
                   "for a new key.")
@click.option("--to", "to", metavar="REF", help="Write the key into a store instead of printing it.")
@optional_environment
@json_option
def keygen(fmt: str, nbytes: int, to: str | None, env: Context | None, as_json: bool) -> None:
    """Make a new random secret. With --to it is stored and never printed; with --env too,
    the environment's audit trail records where (and its fingerprint)."""

    result = keygen_recorded(env, fmt, nbytes, to) if env and to else make_key(fmt, nbytes, to)
    if result.written_to:
        say(f"wrote a new {nbytes}-byte {fmt} secret to {result.written_to}")
    emit(result, as_json)


def how_to_run_keyrotate() -> tuple[str, str | None]:
    """The command that runs this very keyrotate from here, and a note when that is not a
    bare `keyrotate` (after `pip install` into a virtualenv it is not on PATH: exit 127)."""
    script = sys.argv[0]
    if os.path.basename(script) == "keyrotate" and os.path.isfile(script):
        on_path = shutil.which("keyrotate")
        if on_path and os.path.realpath(on_path) == os.path.realpath(script):
            return "keyrotate", None
        program = shlex.quote(script)
        activate = os.path.join(os.path.dirname(script), "activate")
        hint = (f", or first run `source {shlex.quote(activate)}` and type plain `keyrotate`"
                if os.path.isfile(activate) else "")
        return program, f"(keyrotate is not on your PATH: the commands use {program}{hint})"
    program = f"{shlex.quote(sys.executable)} -m keyrotate.cli"
    return program, f"(keyrotate ran as a module here: the commands use {program})"


@click.command()
@click.option("--rows", type=click.IntRange(1, 10_000_000), default=10_000, show_default=True)
@click.option("--dir", "directory", default="keyrotate-demo", show_default=True,
              help="Where the demo database and its .env go (a new folder, or one the demo made).")
@click.option("--force", is_flag=True, help="Use --dir even if it holds files the demo did not make.")
@click.option("--workers", type=click.IntRange(0, 64), default=None)
@json_option
def demo(rows: int, directory: str, force: bool, workers: int | None, as_json: bool) -> None:
    """Build a local database of synthetic accounts, rotate its master key, verify it."""

    program, note = how_to_run_keyrotate()
    emit(run_demo(rows, directory, workers, say, progress_for, force, program, note), as_json)


COMMANDS = [reencrypt, verify, runs, keygen, demo]
