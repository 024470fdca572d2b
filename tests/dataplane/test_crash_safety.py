"""Guarantee 1: kill -9 at any moment, re-run, and every row opens under the new key with
its original payload; after every kill the journal agrees with the data."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import psutil
import pytest

from keyrotate.crypto.keys import MasterKey
from tests.support.helpers import NEW_SECRET, ROOT, big_reference_db, open_value, rows_of

ROWS = 60_000
KILLS = 20
SLICE = 0.004  # seconds the run may go on between two looks at its checkpoint, near its kill
NO_PROGRESS_SLICE = 0.032   # at most, before its first checkpoint (it imports, starts workers)
MAX_SLICE = 0.1             # at most, far from its kill
NEW_KID = MasterKey.from_secret(NEW_SECRET).kid
CLOCKED_CLI = ROOT / "tests" / "support" / "clocked_cli.py"


def _argv(db, *extra: str) -> list[str]:
    """keyrotate's command line in a harness whose lease beats every 0.25 s
    (tests/support/clocked_cli.py): each run after a kill watches the dead run's lease stand
    still for 1.75 s before it takes it over, not 4 s."""
    return [sys.executable, str(CLOCKED_CLI), "reencrypt", "--db", f"file:{db}",
            "--target", "accounts.encrypted_tokens", "--old-key", "env:KR_OLD",
            "--new-key", "env:KR_NEW", "--batch-size", "250", "--json", *extra]


def _journal_agrees_with_data(db) -> int:
    """Rows at or before the checkpoint are all new, rows after it are all old, and the
    run's rewritten counter equals the rows under the new key. Returns rows done."""
    conn = sqlite3.connect(db)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'keyrotate_checkpoints'").fetchone():
            new = conn.execute("SELECT count(*) FROM accounts WHERE instr(encrypted_tokens, ?) > 0",
                               (f'"kid":"{NEW_KID}"',)).fetchone()[0]
            assert new == 0
            return 0
        runs = conn.execute("SELECT has_cursor, last_key, rows_rewritten, rows_scanned "
                            "FROM keyrotate_checkpoints").fetchall()
        assert len(runs) <= 1, "a resumed run must continue, not start over"
        if not runs:
            return 0
        has_cursor, last_key, rewritten, scanned = runs[0]
        is_new = f"instr(encrypted_tokens, '\"kid\":\"{NEW_KID}\"') > 0"
        before, new_before = conn.execute(
            f"SELECT count(*), coalesce(sum({is_new}), 0) FROM accounts WHERE account_id <= ?",
            (last_key if has_cursor else "",)).fetchone()
        new_after = conn.execute(f"SELECT count(*) FROM accounts WHERE account_id > ? AND {is_new}",
                                 (last_key if has_cursor else "",)).fetchone()[0]
        assert new_before == before, "a row before the checkpoint is not under the new key"
        assert new_after == 0, "a row after the checkpoint was written but not checkpointed"
        assert rewritten == new_before == scanned
        return rewritten
    finally:
        conn.close()


def _committed_rows(db) -> int | None:
    """rows_scanned of the checkpoint, read without waiting (None while the file is busy)."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0)
    except sqlite3.Error:
        return None
    try:
        row = conn.execute("SELECT rows_scanned FROM keyrotate_checkpoints").fetchone()
        return int(row[0]) if row else 0
    except sqlite3.Error:
        return None  # tables not made yet, or a commit holds the lock
    finally:
        conn.close()


def _kill_after(proc: subprocess.Popen, db, threshold: int, rng: random.Random) -> bool:
    """Let the stopped run go until its checkpoint shows `threshold` rows (_run_until),
    then let it run a random moment more and SIGKILL it. Returns False if the run ended
    first."""
    if not _run_until(proc, db, threshold):
        return False
    os.kill(proc.pid, signal.SIGCONT)
    time.sleep(rng.uniform(0, SLICE))  # a random moment: mid-batch, mid-commit, anywhere
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


def _run_until(proc: subprocess.Popen, db, threshold: int) -> bool:
    """Let the stopped run go in slices (SIGCONT, a moment, SIGSTOP) until the checkpoint
    shows `threshold` rows; it is left stopped. The run is stopped whenever the test looks,
    so it cannot finish unseen however fast the machine: kills land by observed progress,
    never by a guess at the machine's speed. A slice is as long as the run took, at the
    rate it was last seen going, for a quarter of the rows still to go (SLICE at least;
    MAX_SLICE and twice the last slice at most; while nothing is committed yet, it doubles
    up to NO_PROGRESS_SLICE): short near the threshold, long while the run starts or is far from
    it. Returns False if the run ended first."""
    length, last = SLICE, None
    while True:
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(length)
        os.kill(proc.pid, signal.SIGSTOP)
        if proc.poll() is not None:
            return False
        done = _committed_rows(db)
        if done is not None and done >= threshold:
            return True
        length = _next_slice(length, last, done, threshold)
        last = done if done is not None else last


def _next_slice(length: float, last: int | None, done: int | None, threshold: int) -> float:
    if not done:                                   # starting: nothing committed to go by
        return min(length * 2, NO_PROGRESS_SLICE)
    if last is None or done <= last:               # no rate seen yet (or a busy file)
        return SLICE
    rate = (done - last) / length                  # rows per second of running, as observed
    # at most twice the last slice: a rate measured across a stall (a commit waiting on the
    # file) underestimates the next one, and one long slice could then run past the end
    return min(MAX_SLICE, length * 2, max(SLICE, (threshold - done) / 4 / rate))


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing(tmp_path):
    db, originals, env = big_reference_db(tmp_path, ROWS, "crash.db")
    rng = random.Random(20261128)
    # kill points spread over the table, each past the previous one
    thresholds = sorted(rng.sample(range(1_000, ROWS - 5_000, 250), KILLS))
    kills, progress, orphans = 0, [], []
    for attempt, threshold in enumerate(thresholds):
        # alternate the inline path and the worker-process path
        workers = ("--workers", "0") if attempt % 2 else ()
        proc = subprocess.Popen(_argv(db, *workers), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            orphans += [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        except psutil.Error:
            pass
        landed = _kill_after(proc, db, threshold, rng)
        try:
            orphans += [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        except psutil.Error:
            pass
        assert landed, f"the run ended before reaching {threshold} rows"
        kills += 1
        progress.append(_journal_agrees_with_data(db))
    assert kills == KILLS
    assert len(set(progress)) > 5, f"kills did not land at varied moments: {progress}"

    final = subprocess.run(_argv(db), env=env, capture_output=True, timeout=600)
    assert final.returncode == 0, final.stderr.decode()[-2000:]
    assert _journal_agrees_with_data(db) == ROWS
    after = rows_of(db)
    assert len(after) == ROWS
    for key, value in after.items():
        assert open_value(value.decode(), NEW_SECRET) == originals[key], key
    for pid in orphans:  # pool workers of a killed run must not linger
        try:
            psutil.Process(pid).wait(timeout=10)
        except psutil.NoSuchProcess:
            pass


def test_a_crypto_worker_killed_mid_run_exits_3_and_the_run_resumes(tmp_path):
    """Hostile review: one pool worker SIGKILLed (as the OOM killer would) made keyrotate
    print a BrokenProcessPool traceback and exit 1, which means "rows failed" to cron and
    rollover. It is exit 3 now, run the same command again, and the re-run completes."""
    db, originals, env = big_reference_db(tmp_path, 20_000, "worker.db")
    proc = subprocess.Popen(_argv(db, "--workers", "2"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        assert _kill_after_a_worker(proc, db), "the run ended before its first checkpoint"
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, err.decode()[-2000:]
    text = (out + err).decode()
    assert "Traceback" not in text and "run the same command again" in text, text[-3000:]
    again = subprocess.run(_argv(db), env=env, capture_output=True, timeout=600)
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    for key, value in rows_of(db).items():
        assert open_value(value.decode(), NEW_SECRET) == originals[key], key


def _kill_after_a_worker(proc: subprocess.Popen, db) -> bool:
    """Let the stopped run go until its first checkpoint, kill one of its crypto workers,
    and let it go on."""
    if not _run_until(proc, db, 1):
        return False
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert workers, "no worker processes"
    workers[0].kill()        # a zombie until the run, stopped now, reaps it
    os.kill(proc.pid, signal.SIGCONT)
    return True
