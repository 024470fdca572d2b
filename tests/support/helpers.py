"""Shared test helpers: reference databases, keys, running the CLI, talking to Node."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from keyrotate.cli import main
from keyrotate.crypto.envelope import open_payload, parse, unwrap_dek
from keyrotate.crypto.keys import MasterKey
from keyrotate.demo.build import REFERENCE_SCHEMA, account_id

ROOT = Path(__file__).resolve().parents[2]
WEBCRYPTO = ROOT / "tests" / "interop" / "webcrypto.mjs"

# Two keys, one of each derivation: base64 (SHA-256 derived) and 64 hex (raw).
OLD_SECRET = "q3Jt1vQ0o5mYgJt4l8cQk1m4mR9W1yq8b9N2q2y3H0U="
NEW_SECRET = "9f2c1e8d7b6a5f4e3d2c1b0a99887766554433221100ffeeddccbbaa00112233"
THIRD_SECRET = "7d3c1e8d7b6a5f4e3d2c1b0a99887766554433221100ffeeddccbbaa00112299"


def run_cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def last_json(output: str) -> dict[str, Any]:
    return json.loads(output.strip().splitlines()[-1])


def open_value(value: str, secret: str) -> bytes | None:
    """Payload if the value opens under secret (Python side), else None."""
    env = parse(value)
    dek = unwrap_dek(env, MasterKey.from_secret(secret))
    return None if dek is None else open_payload(env, dek)


def make_reference_db(path: Path, payloads: list[str | None], envelopes: list[str | None]) -> None:
    """accounts rows acc_00000000.. with the given envelopes (already sealed)."""
    conn = sqlite3.connect(path)
    conn.executescript(REFERENCE_SCHEMA)
    conn.executemany(
        "INSERT INTO accounts (account_id, user_id, encrypted_tokens, created_at, updated_at) "
        "VALUES (?, ?, ?, 'now', 'now')",
        [(account_id(i), f"u{i}", e) for i, e in enumerate(envelopes)])
    conn.commit()
    conn.close()


def rows_of(path: Path, table: str = "accounts", column: str = "encrypted_tokens",
            key: str = "account_id") -> dict[Any, Any]:
    conn = sqlite3.connect(path)
    conn.text_factory = bytes
    out = {(k.decode() if isinstance(k, bytes) else k): v
           for k, v in conn.execute(f"SELECT {key}, {column} FROM {table} ORDER BY {key}")}
    conn.close()
    return out


def webcrypto(request: dict[str, Any]) -> dict[str, Any]:
    """Run the Workers' envelope code on Node's WebCrypto; the key goes on stdin."""
    proc = subprocess.run(["node", str(WEBCRYPTO)], input=json.dumps(request).encode(),
                          capture_output=True, check=True, timeout=120)
    return json.loads(proc.stdout)


def db_url(path: Path) -> str:
    return f"file:{path}"


def file_mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777


def big_reference_db(tmp_path: Path, rows: int, name: str = "big.db",
                     payload_bytes: int = 0) -> tuple[Path, dict, dict]:
    """A reference database sealed under OLD, its original payloads, and the environment
    (keys in KR_OLD / KR_NEW) for running keyrotate as a process. payload_bytes > 0 makes
    every payload that heavy."""
    from keyrotate.demo.build import build_reference_db, token_payload

    db = tmp_path / name
    payload = (lambda i: token_payload(i).ljust(payload_bytes, b" ")) if payload_bytes else token_payload
    build_reference_db(str(db), rows, OLD_SECRET, payload=payload)
    originals = {k: open_value(v.decode(), OLD_SECRET) for k, v in rows_of(db).items()}
    env = dict(os.environ, KR_OLD=OLD_SECRET, KR_NEW=NEW_SECRET, PYTHONPATH=str(ROOT))
    return db, originals, env


class StopAfter:
    """A progress sink that interrupts a run after n committed batches, as Ctrl-C would."""

    def __init__(self, n: int):
        self.n = n

    def start(self, total: int) -> None:
        pass

    def advance(self, rows: int) -> None:
        self.n -= 1
        if self.n == 0:
            raise KeyboardInterrupt

    def close(self) -> None:
        pass


def interrupted_rotation(db: Path, old_ref: str, new_ref: str, batches: int,
                         batch_size: int = 100, target: str = "accounts.encrypted_tokens") -> None:
    """A reencrypt run stopped (as by Ctrl-C) after `batches` committed batches."""
    import pytest

    from keyrotate.dataplane.codec_refs import codec_from_refs
    from keyrotate.dataplane.reencrypt import ReencryptOptions, reencrypt
    from keyrotate.db.connect import open_database
    from keyrotate.db.table_shape import resolve_target
    from keyrotate.errors import Interrupted

    store = open_database(f"file:{db}")
    try:
        codec = codec_from_refs("tminus-envelope", new_ref, old_ref)
        with pytest.raises(Interrupted):
            reencrypt(store, resolve_target(store, target, None), codec,
                      ReencryptOptions(batch_size=batch_size, workers=0), StopAfter(batches))
    finally:
        store.close()
def cli_commands() -> dict[str, Any]:
    """Every command keyrotate runs, by its path ("secrets push"), from click's own tree."""
    import click

    def walk(cmd: click.Command, path: list[str]) -> Any:
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield " ".join(path), cmd

    return dict(walk(main, []))
