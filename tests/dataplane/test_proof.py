"""The census that ends a reencrypt run opens only what the pass does not prove: pages it
left untouched are read back and compared (or, on an SQLite file nobody else wrote to,
not even read), and whatever changed is opened and judged like `verify` would."""

from __future__ import annotations

import sqlite3

import pytest

from keyrotate.crypto.envelope import seal
from keyrotate.crypto.keys import MasterKey
from keyrotate.dataplane import workers
from keyrotate.dataplane.codec_refs import codec_from_refs
from keyrotate.dataplane.digest import page_digest
from keyrotate.dataplane.reencrypt import ReencryptOptions, reencrypt
from keyrotate.db.connect import open_database
from keyrotate.db.sqlite_file import SqliteFileStore
from keyrotate.db.table_shape import resolve_target
from tests.support.helpers import NEW_SECRET, OLD_SECRET, StopAfter, open_value, rows_of

TARGET = "accounts.encrypted_tokens"


@pytest.fixture
def opened(monkeypatch):
    """Rows the census opens (the "census" operation of the crypto workers, inline)."""
    real = workers.process_page
    seen: list[int] = []

    def counting(codec, op, rows):
        if op == "census":
            seen.append(len(rows))
        return real(codec, op, rows)

    monkeypatch.setattr(workers, "process_page", counting)
    return seen


@pytest.fixture
def read_back(monkeypatch):
    """Key ranges the census reads back from the file."""
    real = SqliteFileStore.scan_range
    seen: list[tuple] = []

    def counting(self, target, after, first, upto, limit, max_bytes):
        seen.append((after, upto))
        return real(self, target, after, first, upto, limit, max_bytes)

    monkeypatch.setattr(SqliteFileStore, "scan_range", counting)
    return seen


def _run(db, keys_env, progress=None):
    store = open_database(f"file:{db}")
    try:
        codec = codec_from_refs("tminus-envelope", keys_env["new"], keys_env["old"])
        return reencrypt(store, resolve_target(store, TARGET, None), codec,
                         ReencryptOptions(batch_size=100, workers=0), progress)
    finally:
        store.close()


def test_a_file_nobody_else_wrote_to_is_proven_without_a_second_read(ref_db, keys_env, opened,
                                                                     read_back):
    db = ref_db(1_000)
    result = _run(db, keys_env)
    assert result.status == "completed" and result.census is not None
    assert (result.census.rows, result.census.ok) == (1_000, 1_000)
    assert opened == []                                     # nothing opened twice
    assert read_back == []                                   # and nothing read back
    assert all(open_value(v.decode(), NEW_SECRET) for v in rows_of(db).values())


def test_pages_are_read_back_and_compared_when_others_wrote(ref_db, keys_env, opened,
                                                             read_back, monkeypatch):
    """Another connection committed during the run (here: to another table), so the file
    may hold anything: every page is read back, but one the pass proves is not opened."""
    db = ref_db(1_000)
    monkeypatch.setattr(SqliteFileStore, "unchanged_since", lambda self, mark: False)
    result = _run(db, keys_env)
    assert result.status == "completed" and result.census is not None
    assert (result.census.rows, result.census.ok) == (1_000, 1_000)
    assert opened == []
    assert len(read_back) == 10    # each page of the pass, read back


class MovedBackMidway(StopAfter):
    """After the 5th page the application writes row 42 (page 1) under the old key."""

    def __init__(self, db):
        super().__init__(10**9)
        self.db, self.batches = db, 0

    def advance(self, rows: int) -> None:
        self.batches += 1
        if self.batches == 5:
            conn = sqlite3.connect(self.db)
            conn.execute("UPDATE accounts SET encrypted_tokens = ? WHERE account_id = 'acc_00000042'",
                         (seal(b'{"late":1}', MasterKey.from_secret(OLD_SECRET), with_kid=False),))
            conn.commit()
            conn.close()


def test_a_page_changed_after_the_pass_left_it_is_opened_and_the_row_found(ref_db, keys_env,
                                                                           opened):
    db = ref_db(1_000)
    result = _run(db, keys_env, MovedBackMidway(db))
    assert result.status == "incomplete" and result.exit_code == 3
    assert result.census is not None and result.census.old == 1
    assert opened == [100]           # that page, and only that page, opened again


def test_the_digest_tells_apart_what_could_be_confused():
    pages = [[("a", "bc")], [("ab", "c")], [(1, "x")], [("1", "x")], [("k", None)], [("k", "")],
             [("k", b"x")], [("k", "x")], [("k", 1.0)], [("k", 1)], [("k", "x"), ("l", "y")],
             [("k", "x"), ("l", "y"), ("m", None)], [("k", "\udcff")], [("k", "\xff")]]
    assert len({page_digest(p) for p in pages}) == len(pages)
    assert page_digest([("k", "x")]) == page_digest([("k", "x")])
