"""The closing census counts unopened only rows holding exactly a value this run's pass
verified opens under the new key (dataplane/vouch.py). Each test here is a way a careless
cheap census would trust a row it must open: the application writes after the pass (a
value under the old key, as long as the new one or not; the same bytes as a BLOB; one
character deep inside a heavy row), a resumed run's earlier rows, a WITHOUT ROWID table."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Callable

import pytest

from keyrotate.crypto import envelope as env_mod
from keyrotate.crypto.envelope import seal
from keyrotate.crypto.keys import MasterKey
from keyrotate.dataplane.codec_refs import codec_from_refs
from keyrotate.dataplane.journal import run_failures
from keyrotate.dataplane.reencrypt import ReencryptOptions, ReencryptResult, reencrypt
from keyrotate.dataplane.vouch import NOBODY, Vouched, Window, digest
from keyrotate.db.connect import open_database
from keyrotate.db.table_shape import resolve_target
from keyrotate.errors import Interrupted
from tests.support.helpers import NEW_SECRET, OLD_SECRET, StopAfter, open_value, rows_of

TARGET = "accounts.encrypted_tokens"
OLD = MasterKey.from_secret(OLD_SECRET)


class BeforeTheCensus:
    """Progress sink: the application writes once the pass is done, before the census
    reads anything (the census starts the progress a second time)."""

    def __init__(self, write: Callable[[sqlite3.Connection], None]):
        self.write, self.starts = write, 0

    def start(self, total: int) -> None:
        self.starts += 1
        if self.starts == 2:
            conn = sqlite3.connect(self.db)
            self.write(conn)
            conn.commit()
            conn.close()

    def advance(self, rows: int) -> None:
        pass

    def close(self) -> None:
        pass


def _run(db: Path, keys_env: dict[str, str], progress=None, target: str = TARGET,
         key: str | None = None, workers: int = 0, batch: int = 100) -> ReencryptResult:
    if isinstance(progress, BeforeTheCensus):
        progress.db = db
    store = open_database(f"file:{db}")
    try:
        codec = codec_from_refs("tminus-envelope", keys_env["new"], keys_env["old"])
        return reencrypt(store, resolve_target(store, target, key), codec,
                         ReencryptOptions(batch_size=batch, workers=workers), progress)
    finally:
        store.close()


@pytest.mark.parametrize("workers", [0, 2])
def test_a_clean_run_opens_nothing_twice(ref_db, keys_env, workers):
    db = ref_db(600, null_every=7)
    result = _run(db, keys_env, workers=workers)
    assert result.status == "completed", result.problems
    census = result.census
    assert census is not None and census.witness == "matched"
    assert census.vouched == census.ok == 600 - census.null > 0


@pytest.mark.parametrize("same_length", [True, False])
def test_an_old_key_value_written_after_the_pass_is_opened(ref_db, keys_env, same_length):
    db = ref_db(300)
    victim = "acc_00000150"

    def write(conn: sqlite3.Connection) -> None:
        now = conn.execute("SELECT encrypted_tokens FROM accounts WHERE account_id = ?",
                           (victim,)).fetchone()[0]
        payload = open_value(now, NEW_SECRET)
        assert payload is not None
        stale = seal(payload if same_length else payload + b" ", OLD, with_kid=True)
        assert (len(stale) == len(now)) == same_length
        conn.execute("UPDATE accounts SET encrypted_tokens = ? WHERE account_id = ?",
                     (stale, victim))

    result = _run(db, keys_env, BeforeTheCensus(write))
    assert result.status == "incomplete" and result.exit_code == 3
    assert result.census is not None and result.census.old == 1
    assert result.census.vouched == 299
    assert any("old key" in p for p in result.problems)


def test_the_same_bytes_written_again_are_trusted_but_not_as_a_blob(ref_db, keys_env):
    db = ref_db(200)

    def write(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE accounts SET encrypted_tokens = encrypted_tokens "
                     "WHERE account_id = 'acc_00000010'")      # same bytes: opens the same
        conn.execute("UPDATE accounts SET encrypted_tokens = CAST(encrypted_tokens AS BLOB) "
                     "WHERE account_id = 'acc_00000020'")       # same bytes, a BLOB now

    result = _run(db, keys_env, BeforeTheCensus(write))
    census = result.census
    assert census is not None and census.vouched == 199 and census.failed == 1
    assert census.failures[0]["id"] == "acc_00000020" and "BLOB" in census.failures[0]["reason"]
    assert result.status == "incomplete"   # the counters said 200 under the new key


def test_a_resumed_run_opens_the_rows_an_earlier_process_did(ref_db, keys_env):
    db = ref_db(500)
    store = open_database(f"file:{db}")
    codec = codec_from_refs("tminus-envelope", keys_env["new"], keys_env["old"])
    with pytest.raises(Interrupted):
        reencrypt(store, resolve_target(store, TARGET, None), codec,
                  ReencryptOptions(batch_size=100, workers=0), StopAfter(2))
    store.close()
    # behind the cursor, where this process's pass never goes: an old-key value
    conn = sqlite3.connect(db)
    conn.execute("UPDATE accounts SET encrypted_tokens = ? WHERE account_id = 'acc_00000042'",
                 (seal(b'{"t":1}', OLD, with_kid=True),))
    conn.commit()
    conn.close()
    result = _run(db, keys_env)
    assert result.resumed and result.status == "incomplete"
    census = result.census
    assert census is not None and census.old == 1 and census.vouched == 300
    again = _run(db, keys_env)   # a new run: its pass opens every row, the census none
    assert again.status == "completed" and again.census is not None
    assert again.census.vouched == again.census.ok == 500


def test_a_without_rowid_table_is_vouched_for_and_a_later_write_opened(tmp_path, keys_env):
    db = tmp_path / "norowid.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (k TEXT COLLATE NOCASE PRIMARY KEY, v TEXT) WITHOUT ROWID")
    conn.executemany("INSERT INTO t VALUES (?, ?)",
                     [(f"K{i:03d}", seal(b'{"x":1}', OLD, with_kid=False)) for i in range(150)])
    conn.commit()
    conn.close()

    def write(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE t SET v = ? WHERE k = 'k077'", (seal(b'{"x":1}', OLD),))

    result = _run(db, keys_env, BeforeTheCensus(write), target="t.v", batch=40)
    census = result.census
    assert census is not None and census.witness == "counted"
    assert result.status == "incomplete" and census.old == 1 and census.vouched == 149
    again = _run(db, keys_env, target="t.v", batch=40)
    assert again.status == "completed" and again.census is not None
    assert again.census.vouched == 150


def test_one_character_deep_in_a_heavy_row_is_opened(tmp_path, keys_env):
    db = tmp_path / "heavy.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    heavy = b"x" * (3 << 20)          # 4 MB of base64: hashed in chunks, authenticated too
    conn.executemany("INSERT INTO t (v) VALUES (?)",
                     [(seal(heavy, OLD, with_kid=False),), (seal(b"{}", OLD, with_kid=False),)])
    conn.commit()
    conn.close()

    def write(conn: sqlite3.Connection) -> None:
        (v,) = conn.execute("SELECT v FROM t WHERE id = 1").fetchone()
        at = 3 << 20                   # inside the ciphertext, past the first chunk
        flipped = v[:at] + ("A" if v[at] != "A" else "B") + v[at + 1:]
        conn.execute("UPDATE t SET v = ? WHERE id = 1", (flipped,))

    result = _run(db, keys_env, BeforeTheCensus(write), target="t.v")
    census = result.census
    assert census is not None and census.vouched == 1 and census.failed == 1
    assert "authenticate" in census.failures[0]["reason"]


def test_a_rewrite_that_does_not_open_is_never_written(ref_db, keys_env, monkeypatch):
    """rotate checks what it makes before anyone writes it (and before the census may
    trust it): a rewrap that came out wrong leaves the row as it was, reported."""
    db = ref_db(50)
    before = rows_of(db)
    real, calls = env_mod.rewrap, []

    def now_and_then_wrong(env, dek, new_key):
        calls.append(1)
        wrong = MasterKey.from_secret(OLD_SECRET + "!") if len(calls) % 5 == 0 else new_key
        return real(env, dek, wrong)

    monkeypatch.setattr(env_mod, "rewrap", now_and_then_wrong)
    result = _run(db, keys_env)
    c = result.counts
    assert c.rows_failed > 0 and c.rows_rewritten + c.rows_failed == 50
    store = open_database(f"file:{db}")
    failures = run_failures(store, str(result.run_id))
    store.close()
    assert all("did not open under the new key" in f["reason"] for f in failures)
    after = rows_of(db)
    failed = {f["id"] for f in failures}
    assert len(failed) == c.rows_failed and all(after[k] == before[k] for k in failed)
    assert all(open_value(after[k].decode(), NEW_SECRET) for k in after if k not in failed)
    assert result.census is not None and result.census.old == c.rows_failed   # still old


def test_digests_are_keyed_typed_and_windows_survive_a_spill():
    key = b"k" * 32
    assert digest(key, "abc") != digest(b"j" * 32, "abc")
    assert digest(key, b"abc") == NOBODY and digest(key, 7) == NOBODY
    big = "a" * (3 << 20)
    assert digest(key, big) != digest(key, big[:-1] + "b")
    vouched = Vouched(offset=3, in_memory=64)          # spills after four digests
    values = [f"v{i}" for i in range(2_000)]
    for i in range(0, 2_000, 100):
        vouched.add(b"".join(digest(vouched.key, v) for v in values[i:i + 100]))
    try:
        window = Window(vouched.window(3 + 1_000, 10))      # census rows 1003..1012
        assert window.vouched(values[1_000:1_010]) == [True] * 10
        assert window.vouched([None, *values[1_001:1_010]]) == [False] + [True] * 9
        shifted = [values[1_000 - 400], values[0], "v1000 ", b"v1000", values[1_600]]
        assert window.vouched(shifted) == [True, False, False, False, False]  # slack: 512
        assert Window(vouched.window(0, 3)).vouched(values[:1]) == [True]  # before the pass
    finally:
        vouched.close()
