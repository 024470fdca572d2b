"""Guarantee 2: an application writing during the rotation never loses a write."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.support.helpers import NEW_SECRET, ROOT, big_reference_db, open_value, rows_of

ROWS = 60_000


def _reencrypt(db, env):
    return subprocess.run(
        [sys.executable, "-m", "keyrotate.cli", "reencrypt", "--db", f"file:{db}",
         "--target", "accounts.encrypted_tokens", "--old-key", "env:KR_OLD",
         "--new-key", "env:KR_NEW", "--batch-size", "500", "--json"],
        env=env, capture_output=True, timeout=600)


@pytest.mark.slow
def test_application_writes_during_rotation_are_never_lost(tmp_path):
    db, originals, env = big_reference_db(tmp_path, ROWS, "app.db")
    log, stop = tmp_path / "app.log", tmp_path / "stop"
    app = subprocess.Popen([sys.executable, str(ROOT / "tests" / "support" / "app_writer.py"), str(db),
                            str(log), str(stop), str(ROWS)], env=env)
    try:
        time.sleep(3)  # the application alone first: its unhindered write rate
        started = time.time()
        first = _reencrypt(db, env)
        ended = time.time()
    finally:
        stop.touch()
        app.wait(timeout=60)
    assert app.returncode == 0
    assert first.returncode in (0, 3), first.stderr.decode()[-2000:]
    result = json.loads(first.stdout.decode().strip().splitlines()[-1])

    lines = [json.loads(x) for x in log.read_text().splitlines()]
    summary = lines.pop()
    assert summary["locked"] == 0, "the application saw 'database is locked'"
    alone = [w for w in lines if w["t"] < started]
    during = [w for w in lines if started <= w["t"] <= ended]
    rate_alone = len(alone) / (started - lines[0]["t"])
    rate_during = len(during) / (ended - started)
    assert rate_during >= 0.35 * rate_alone, (
        f"the application was starved: {rate_during:.0f} writes/s during vs {rate_alone:.0f} alone")
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
