"""Guarantee 2: an application writing during the rotation never loses a write, and is
never starved of the write lock.

Driven by observed progress, never by the clock: keyrotate starts once the application
has written on its own, and fairness is judged batch by batch. Each application write
records, inside its own write transaction, which of keyrotate's checkpoints it followed;
an application that got its turn wrote between most pairs of keyrotate's batches,
however fast or loaded the machine (both go at the pace of the same machine)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.support.helpers import NEW_SECRET, ROOT, big_reference_db, open_value, rows_of

ROWS = 20_000
BATCH = 500
ALONE = 100  # writes the application makes before keyrotate starts
FAIR_SHARE = 0.5  # keyrotate's batches the application must have written between, at least


def _reencrypt(db, env):
    return subprocess.run(
        [sys.executable, "-m", "keyrotate.cli", "reencrypt", "--db", f"file:{db}",
         "--target", "accounts.encrypted_tokens", "--old-key", "env:KR_OLD",
         "--new-key", "env:KR_NEW", "--batch-size", str(BATCH), "--json"],
        env=env, capture_output=True, timeout=600)


def _wait_for_writes(log, n: int, app: subprocess.Popen, patience: float = 300) -> None:
    """Until the application has logged n writes; the patience only turns a hang into a
    failure."""
    deadline = time.monotonic() + patience
    while not log.exists() or log.read_text().count("\n") < n:
        assert app.poll() is None, "the application exited"
        assert time.monotonic() < deadline, f"the application made no {n} writes in {patience:.0f} s"
        time.sleep(0.05)


def _first_run_batches(db) -> int:
    conn = sqlite3.connect(db)
    try:
        (batches,), = conn.execute("SELECT batches FROM keyrotate_checkpoints")
        return int(batches)
    finally:
        conn.close()


@pytest.mark.slow
def test_application_writes_during_rotation_are_never_lost(tmp_path):
    db, originals, env = big_reference_db(tmp_path, ROWS, "app.db")
    log, stop = tmp_path / "app.log", tmp_path / "stop"
    app = subprocess.Popen([sys.executable, str(ROOT / "tests" / "support" / "app_writer.py"), str(db),
                            str(log), str(stop), str(ROWS)], env=env)
    try:
        _wait_for_writes(log, ALONE, app)  # the application on its own first
        first = _reencrypt(db, env)
    finally:
        stop.touch()
        app.wait(timeout=60)
    assert app.returncode == 0
    assert first.returncode in (0, 3), first.stderr.decode()[-2000:]
    result = json.loads(first.stdout.decode().strip().splitlines()[-1])

    lines = [json.loads(x) for x in log.read_text().splitlines()]
    summary = lines.pop()
    assert summary["locked"] == 0, "the application saw 'database is locked'"
    # the batches the application wrote between: each write names the checkpoint before it
    batches = _first_run_batches(db)
    assert batches >= ROWS // BATCH, "keyrotate must commit in batches of --batch-size rows"
    between = {w["after"] for w in lines if w["after"] is not None}
    assert len(between) >= FAIR_SHARE * batches, (
        f"the application was starved: it wrote between only {len(between)} of keyrotate's "
        f"{batches} batches")
    assert result["rows_conflicted"] >= 1, "writes aimed at the window must conflict"

    second = _reencrypt(db, env)
    assert second.returncode == 0
    verify = subprocess.run(
        [sys.executable, "-m", "keyrotate.cli", "verify", "--db", f"file:{db}", "--target",
         "accounts.encrypted_tokens", "--key", "env:KR_NEW", "--old-key", "env:KR_OLD", "--json"],
        env=env, capture_output=True, timeout=600)
    assert verify.returncode == 0, verify.stdout.decode()[-1000:]

    expected = {k: v for k, v in originals.items()}
    for w in lines:
        expected[w["id"]] = w["payload"].encode()
    after = rows_of(db)
    for key, value in after.items():
        assert open_value(value.decode(), NEW_SECRET) == expected[key], key
