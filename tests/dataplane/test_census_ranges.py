"""The closing census over a file, spread over the crypto workers by the pass's pages
(dataplane/census_ranges.py). It is only faster: each way the application can change the
table while the ranges are read must still end the run unproven (exit 3), as it does for
the paged census. The application writes here between two ranges' answers, driven by the
census's progress (never by time)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Callable

import pytest

from keyrotate.crypto.envelope import seal
from keyrotate.crypto.keys import MasterKey
from keyrotate.dataplane import verify as verify_mod
from keyrotate.dataplane.reencrypt import ReencryptResult
from tests.dataplane.test_vouched_census import _run as run_reencrypt
from tests.support.helpers import NEW_SECRET, OLD_SECRET

TARGET = "accounts.encrypted_tokens"
ROWS, BATCH = 600, 100          # six pages of the pass: seven ranges (the last past its end)


class DuringTheCensus:
    """Progress sink: the application writes once, after the census's first range. The
    first five ranges (2 workers: 5 in flight) are asked for before that, so a change
    meant for a range not read yet goes to the sixth (keys 500-599) or past the end."""

    def __init__(self, db: Path, write: Callable[[sqlite3.Connection], None]):
        self.db, self.write, self.starts, self.done = db, write, 0, False

    def start(self, total: int) -> None:
        self.starts += 1

    def advance(self, rows: int) -> None:
        if self.starts == 2 and not self.done:   # the census started the progress again
            self.done = True
            conn = sqlite3.connect(self.db)
            self.write(conn)
            conn.commit()
            conn.close()

    def close(self) -> None:
        pass


@pytest.fixture
def ranges_used(monkeypatch):
    """How many times the census went to the workers' ranges."""
    calls = []
    real = verify_mod.census_in_ranges

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(verify_mod, "census_in_ranges", spy)
    return calls


def _run(db: Path, keys_env: dict[str, str], progress=None, workers: int = 2) -> ReencryptResult:
    return run_reencrypt(db, keys_env, progress, workers=workers, batch=BATCH)


def _insert(conn: sqlite3.Connection, account_id: str, value: str) -> None:
    conn.execute("INSERT INTO accounts (account_id, user_id, provider, email, encrypted_tokens, "
                 "created_at, updated_at) VALUES (?, 'u', 'google', 'e', ?, 'now', 'now')",
                 (account_id, value))


def test_the_workers_census_counts_what_the_paged_census_counts(ref_db, keys_env, ranges_used):
    db = ref_db(ROWS, null_every=7)
    result = _run(db, keys_env)
    assert ranges_used == [1]
    census = result.census
    assert result.status == "completed", result.problems
    assert census is not None and census.witness == "matched" and census.rows == ROWS
    assert census.vouched == census.ok == ROWS - census.null > 0
    ranges_used.clear()
    again = _run(db, keys_env, workers=0)   # nothing to do; the paged census, inline
    assert ranges_used == [] and again.status == "completed"
    assert (again.census.rows, again.census.ok, again.census.null) == (
        census.rows, census.ok, census.null)


OLD = MasterKey.from_secret(OLD_SECRET)
NEW = MasterKey.from_secret(NEW_SECRET)


@pytest.mark.parametrize("change, problem", [
    # a row inserted into the first range, which has been read: the witness sees it
    (lambda c: _insert(c, "acc_00000000x", seal(b'{"t": 1}', NEW)), "differs"),
    # a row of the first range deleted after it was counted
    (lambda c: c.execute("DELETE FROM accounts WHERE account_id = 'acc_00000003'"), "differs"),
    # a row of the first range moved to a key in a range not read yet (seen twice)
    (lambda c: c.execute("UPDATE accounts SET account_id = 'acc_00000595x' "
                         "WHERE account_id = 'acc_00000004'"), "differs"),
    # a value under the old key written into a range not read yet: opened, found old
    (lambda c: c.execute("UPDATE accounts SET encrypted_tokens = ? WHERE account_id = "
                         "'acc_00000590'", (seal(b'{"t": 2}', OLD),)), "old"),
    # a row past the pass's last key under the old key: the last range reads it
    (lambda c: _insert(c, "zzz", seal(b'{"t": 3}', OLD)), "old"),
])
def test_a_change_between_two_ranges_leaves_the_run_unproven(ref_db, keys_env, ranges_used,
                                                             change, problem):
    db = ref_db(ROWS)
    result = _run(db, keys_env, DuringTheCensus(db, change))
    assert ranges_used == [1]
    census = result.census
    assert census is not None and result.status == "incomplete", result.problems
    assert result.exit_code == 3
    if problem == "differs":
        assert census.witness == "differs"
    else:
        assert census.witness == "matched" and census.old == 1


def test_a_new_row_past_the_pass_under_the_new_key_is_counted(ref_db, keys_env, ranges_used):
    db = ref_db(ROWS)
    result = _run(db, keys_env, DuringTheCensus(db, lambda c: _insert(
        c, "zzz", seal(b'{"t": 4}', NEW))))
    assert ranges_used == [1]
    assert result.census is not None and result.census.rows == ROWS + 1
    # the census is clean, but the pass never counted that row: unproven all the same
    assert result.census.witness == "matched" and result.census.old == 0
    assert result.status == "incomplete" and "census disagrees" in " ".join(result.problems)


def test_a_row_no_key_opens_is_reported_by_its_id(ref_db, keys_env, ranges_used):
    db = ref_db(ROWS)
    result = _run(db, keys_env, DuringTheCensus(db, lambda c: c.execute(
        "UPDATE accounts SET encrypted_tokens = '{\"iv\": \"broken' "
        "WHERE account_id = 'acc_00000550'")))
    assert ranges_used == [1]
    census = result.census
    assert census is not None and census.failed == 1
    assert [f["id"] for f in census.failures] == ["acc_00000550"]
    assert result.exit_code != 0


def test_a_file_put_in_the_databases_place_before_the_census_is_not_censused(ref_db, keys_env,
                                                                           ranges_used):
    """Hostile review (read in the code): the workers open the file by its path while
    the witness is taken on the main process's connection. A file put in its place (a
    copy, here identical) would be censused and the other witnessed: exit 3 instead."""
    import os
    import shutil

    db = ref_db(ROWS)

    class SwapAtCensus(DuringTheCensus):
        def start(self, total: int) -> None:
            super().start(total)
            if self.starts == 2:   # the census begins: the pass is over
                copy = db.with_name("copy.db")
                shutil.copy(db, copy)
                os.replace(copy, db)

    from keyrotate.errors import EXIT_INCOMPLETE, StoreUnavailable

    with pytest.raises(StoreUnavailable, match="no longer the one this run opened") as raised:
        _run(db, keys_env, SwapAtCensus(db, lambda c: None))
    assert ranges_used == [1] and raised.value.exit_code == EXIT_INCOMPLETE
