"""Guarantee 4: key material never reaches argv, output, errors, the journal or the JSON."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

from keyrotate.demo.build import build_reference_db
from tests.support.helpers import NEW_SECRET, OLD_SECRET, ROOT, last_json
from tests.support.hygiene import CmdlineSampler, assert_clean


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "keyrotate.cli", *env.get("KR_LEVEL", "").split(),
                           *args], env=env, capture_output=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("level", [(), ("-v",), ("-q",)], ids=["default", "verbose", "quiet"])
def test_no_key_material_anywhere(tmp_path, level):
    db = tmp_path / "hygiene.db"
    build_reference_db(str(db), 30_000, OLD_SECRET)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE accounts SET encrypted_tokens = '{bad' WHERE account_id = 'acc_00000009'")
    conn.commit()
    conn.close()
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"MASTER_KEY_NEXT={NEW_SECRET}\n")
    env = dict(os.environ, KR_OLD=OLD_SECRET, PYTHONPATH=str(ROOT), KR_LEVEL=" ".join(level))
    new_ref = f"dotenv:{dotenv}#MASTER_KEY_NEXT"
    target = ["--db", f"file:{db}", "--target", "accounts.encrypted_tokens"]
    outputs: list[tuple[str, bytes]] = []
    with CmdlineSampler() as sampler:
        runs = [
            _cli(env, "reencrypt", *target, "--old-key", "env:KR_OLD", "--new-key", new_ref,
                 "--json", "--dry-run"),
            _cli(env, "reencrypt", *target, "--old-key", "env:KR_OLD", "--new-key", new_ref,
                 "--json", "--workers", "2"),
            _cli(env, "reencrypt", *target, "--old-key", "env:KR_OLD", "--new-key", new_ref,
                 "--mode", "fresh-dek"),
            _cli(env, "verify", *target, "--key", new_ref, "--old-key", "env:KR_OLD", "--json"),
            _cli(env, "verify", *target, "--key", "env:KR_OLD"),
            _cli(env, "runs", "--db", f"file:{db}", "--json"),
            _cli(env, "reencrypt", *target, "--old-key", new_ref, "--new-key", new_ref),
            _cli(env, "reencrypt", *target, "--old-key", "env:KR_OLD", "--new-key", "env:KR_UNSET"),
        ]
    assert [r.returncode for r in runs] == [1, 1, 1, 1, 1, 0, 2, 2]
    assert last_json(runs[1].stdout.decode())["rows_rewritten"] == 29_999
    if level == ("-v",):  # the scan covers the debug detail too
        assert b"keyrotate: debug: keyrotate.reencrypt: census of" in runs[1].stderr
    run_id = last_json(runs[1].stdout.decode())["run_id"]
    runs.append(_cli(env, "runs", "--db", f"file:{db}", run_id, "--json"))
    for i, r in enumerate(runs):
        outputs += [(f"stdout of run {i}", r.stdout), (f"stderr of run {i}", r.stderr)]
    for where, blob in outputs:
        assert_clean(blob, where, [OLD_SECRET, NEW_SECRET])

    assert sampler.samples > 20
    assert any(b"reencrypt" in c for c in sampler.seen), "the sampler never saw a run"
    for cmdline in sampler.seen:
        assert_clean(cmdline, "a process command line", [OLD_SECRET, NEW_SECRET])

    conn = sqlite3.connect(db)
    tables = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'keyrotate%'")]
    assert {"keyrotate_runs", "keyrotate_checkpoints", "keyrotate_row_failures"} <= set(tables)
    for table in tables:
        for row in conn.execute(f"SELECT * FROM {table}"):
            assert_clean(repr(row).encode(), f"table {table}", [OLD_SECRET, NEW_SECRET])
    conn.close()
    assert_clean(db.read_bytes(), "the database file", [OLD_SECRET, NEW_SECRET])


def test_demo_output_names_references_not_keys(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = _cli(env, "demo", "--rows", "300", "--dir", str(tmp_path / "d"), "--json")
    assert res.returncode == 0
    from keyrotate.secrets.dotenv import read_dotenv

    keys = list(read_dotenv(str(tmp_path / "d" / ".env")).values())
    assert len(keys) == 2
    assert_clean(res.stdout + res.stderr, "demo output", keys)
