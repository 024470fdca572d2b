"""What a hostile review of the census found (2026-11-30), each a test that fails before
its fix:

- A census that can only count (a WITHOUT ROWID table: no rowid to witness) compared the
  rows it visited with `min(count before, count after)`: an old-key row inserted behind its
  cursor while it ran left the table one row larger than the census visited, read as 0
  unreached, and exit 0. Any difference between the rows visited and the rows at the end,
  or between the rows at the start and at the end, is now doubt: exit 3.
- The rowid witness hashed rowid mod P: rowids P apart were one row to it.
- The table was known by its spelling: `ACCOUNTS.x` was a table of its own beside
  `accounts.x` for the journal, the lease and the unfinished-run guard.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from keyrotate.crypto.envelope import seal
from keyrotate.crypto.keys import MasterKey
from keyrotate.dataplane.codec_refs import codec_from_refs
from keyrotate.dataplane.reencrypt import ReencryptOptions, reencrypt
from keyrotate.dataplane.verify import verify
from keyrotate.db.connect import open_database
from keyrotate.db.table_shape import resolve_target
from tests.support.helpers import NEW_SECRET, OLD_SECRET

OLD, NEW = MasterKey.from_secret(OLD_SECRET), MasterKey.from_secret(NEW_SECRET)


class WritesDuringTheCensus:
    """Progress sink: after the census's first page (the census starts the progress last),
    the application runs `sql` on its own connection."""

    def __init__(self, db: Path, sql: str, params: tuple, starts_before_census: int):
        self.db, self.sql, self.params = db, sql, params
        self.starts, self.census_at, self.done = 0, starts_before_census + 1, False

    def start(self, total: int) -> None:
        self.starts += 1

    def advance(self, rows: int) -> None:
        if self.starts == self.census_at and not self.done:
            conn = sqlite3.connect(self.db)
            conn.execute(self.sql, self.params)
            conn.commit()
            conn.close()
            self.done = True

    def close(self) -> None:
        pass


def _table(tmp_path: Path, key: MasterKey) -> Path:
    db = tmp_path / "norowid.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID")
    conn.executemany("INSERT INTO t VALUES (?, ?)",
                     [(f"K{i:03d}", seal(b'{"x":1}', key)) for i in range(200)])
    conn.commit()
    conn.close()
    return db


INSERT_BEHIND = ("INSERT INTO t VALUES (?, ?)", ("A-behind-the-cursor", seal(b'{"x":1}', OLD)))
DELETE_VISITED = ("DELETE FROM t WHERE k = ?", ("K000",))


@pytest.mark.parametrize("write", [INSERT_BEHIND, DELETE_VISITED], ids=["insert", "delete"])
def test_a_reencrypt_census_that_counts_a_different_table_is_not_complete(tmp_path, keys_env, write):
    db = _table(tmp_path, OLD)
    store = open_database(f"file:{db}")
    try:
        codec = codec_from_refs("tminus-envelope", keys_env["new"], keys_env["old"])
        result = reencrypt(store, resolve_target(store, "t.v", None), codec,
                           ReencryptOptions(batch_size=40, workers=0),
                           WritesDuringTheCensus(db, *write, starts_before_census=1))
    finally:
        store.close()
    census = result.census
    assert census is not None and census.witness == "counted"
    assert result.status != "completed" and census.unreached >= 1, (result.status, census)


def test_verify_that_counts_a_row_inserted_behind_it_is_not_clean(tmp_path, keys_env):
    db = _table(tmp_path, NEW)
    store = open_database(f"file:{db}")
    try:
        codec = codec_from_refs("tminus-envelope", keys_env["new"], keys_env["old"])
        census = verify(store, resolve_target(store, "t.v", None), codec, batch_size=40,
                        workers=0, progress=WritesDuringTheCensus(db, *INSERT_BEHIND, 0))
    finally:
        store.close()
    assert census.witness == "counted" and not census.clean and census.unreached >= 1, census


# -- the rowid witness over every 64-bit rowid ------------------------------------------

P = 2_147_483_579   # keyrotate.db.base.WITNESS_PRIME
EXTREMES = [0, 1, 5, P - 1, P, 5 + P, P * P, P * P + 5, 2**62 + 12345, 2**63 - 1,
            -1, -P, -P - 5, -(P * P) - 3, -(2**63)]


def test_the_witness_in_sql_and_in_python_agree_on_every_64_bit_rowid():
    import random

    from keyrotate.db.base import new_salt, witness_sql, witness_sum

    rng = random.Random(7)
    ids = sorted(set(EXTREMES + [rng.randint(-(2**63), 2**63 - 1) for _ in range(500)]))
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in ids])
    for _ in range(10):
        salt = new_salt()
        n, total = conn.execute(witness_sql("t", "id", salt)).fetchone()
        assert isinstance(total, int) and (n, total) == (len(ids), witness_sum(ids, salt))


@pytest.mark.parametrize("x, y", [(P + 1, -(P * P - 1)), (P * P - 5, -P - 5), (7, -(P - 7)),
                                  (2**63 - 1, -(2**63)), (P - 1, -1)])
def test_no_two_rowids_share_a_witness_hash_whatever_the_salt(x, y):
    """Hostile review, round 4: limbs taken from SQLite's truncating remainders made a
    negative rowid and a positive one the same limbs, under every salt."""
    from keyrotate.db.base import new_salt, witness_sql, witness_sum

    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    conn.execute("INSERT INTO t VALUES (?)", (y,))
    for _ in range(20):
        salt = new_salt()
        assert witness_sum([x], salt) != witness_sum([y], salt)
        assert conn.execute(witness_sql("t", "id", salt)).fetchone() == (1, witness_sum([y], salt))


def test_a_row_skipped_is_not_balanced_by_a_row_seen_twice_2_31_apart():
    """Hostile review: rowid 5 + P never visited, rowid 5 visited twice (renamed ahead of
    the cursor): a hash of rowid mod P made both sums equal, and the census exited 0."""
    from keyrotate.db.base import new_salt, witness_sql, witness_sum

    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    conn.executemany("INSERT INTO t VALUES (?)", [(5,), (5 + P,)])
    for _ in range(20):
        salt = new_salt()
        n, total = conn.execute(witness_sql("t", "id", salt)).fetchone()
        assert (n, total) != (2, witness_sum([5, 5], salt))


# -- one table, however its name is typed -------------------------------------------------

def test_a_target_typed_in_other_case_is_the_same_table_for_the_unfinished_run_guard(
        ref_db, keys_env, three_keys):
    """Hostile review: a run interrupted on `accounts.encrypted_tokens` refused another new
    key on that spelling, but `ACCOUNTS.encrypted_tokens` was a table of its own (journal,
    lease and guard keyed by the text typed) and split the table between two new keys."""
    from keyrotate.errors import Interrupted
    from tests.support.helpers import StopAfter, run_cli

    db = ref_db(3_000)
    store = open_database(f"file:{db}")
    try:
        codec = codec_from_refs("tminus-envelope", keys_env["new"], keys_env["old"])
        target = resolve_target(store, "ACCOUNTS.encrypted_tokens", None)
        assert target.table == "accounts"
        with pytest.raises(Interrupted):
            reencrypt(store, target, codec, ReencryptOptions(batch_size=500, workers=0),
                      StopAfter(2))
    finally:
        store.close()
    _, _, third = three_keys
    other = run_cli("reencrypt", "--db", f"file:{db}", "--target", "Accounts.encrypted_tokens",
                    "--old-key", keys_env["old"], "--new-key", third, "--json")
    assert other.exit_code == 2 and "unfinished" in other.output, other.output
    resumed = run_cli("reencrypt", "--db", f"file:{db}", "--target", "accounts.encrypted_tokens",
                      "--old-key", keys_env["old"], "--new-key", keys_env["new"], "--json")
    assert resumed.exit_code == 0 and '"resumed": true' in resumed.output, resumed.output


def test_an_unfinished_run_recorded_under_another_spelling_still_guards_the_table(
        ref_db, keys_env, three_keys):
    """Runs recorded before targets were named as the schema spells them carry the text
    typed: such an unfinished run still refuses a run to another new key."""
    from keyrotate.errors import Interrupted
    from tests.support.helpers import StopAfter, run_cli

    db = ref_db(3_000)
    store = open_database(f"file:{db}")
    try:
        codec = codec_from_refs("tminus-envelope", keys_env["new"], keys_env["old"])
        with pytest.raises(Interrupted):
            reencrypt(store, resolve_target(store, "accounts.encrypted_tokens", None), codec,
                      ReencryptOptions(batch_size=500, workers=0), StopAfter(2))
    finally:
        store.close()
    conn = sqlite3.connect(db)     # as an earlier keyrotate recorded `ACCOUNTS.encrypted_tokens`
    conn.execute("UPDATE keyrotate_runs SET target = 'ACCOUNTS.encrypted_tokens'")
    conn.commit()
    conn.close()
    _, _, third = three_keys
    other = run_cli("reencrypt", "--db", f"file:{db}", "--target", "accounts.encrypted_tokens",
                    "--old-key", keys_env["old"], "--new-key", third, "--json")
    assert other.exit_code == 2 and "unfinished" in other.output, other.output
