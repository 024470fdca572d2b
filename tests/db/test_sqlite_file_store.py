"""The file store notices an application writing to the same file, so that every page gets
a commit of its own and the application its turn at the write lock between them."""

from __future__ import annotations

import sqlite3
import threading

from keyrotate.db.base import Statement
from keyrotate.db.sqlite_file import SqliteFileStore


def _db(tmp_path):
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.close()
    return path


def test_a_commit_made_while_keyrotate_waits_for_the_write_lock_counts_as_contention(tmp_path):
    """The application holds the write lock; keyrotate's transaction waits for it; the
    application commits and keyrotate gets in. That commit is another writer, though it
    landed before keyrotate's own: it must not be taken for keyrotate's."""
    path = _db(tmp_path)
    store = SqliteFileStore(f"file:{path}")
    app = sqlite3.connect(path, isolation_level=None)
    app.execute("BEGIN IMMEDIATE")
    app.execute("INSERT INTO t (v) VALUES ('application')")
    waiting = threading.Event()
    store.wconn.set_trace_callback(lambda sql: waiting.set() if sql.startswith("BEGIN") else None)
    writer = threading.Thread(target=store.apply,
                              args=([], None, [Statement("INSERT INTO t (v) VALUES ('keyrotate')")]))
    writer.start()
    try:
        assert waiting.wait(60), "keyrotate's transaction never began"
    finally:
        app.execute("COMMIT")   # keyrotate's BEGIN IMMEDIATE is waiting, or about to
        writer.join(60)
    assert not writer.is_alive()
    store.wconn.set_trace_callback(None)
    assert store.contended


def test_a_commit_seen_between_keyrotate_writes_counts_as_contention(tmp_path):
    path = _db(tmp_path)
    store = SqliteFileStore(f"file:{path}")
    store.apply([], None, [Statement("INSERT INTO t (v) VALUES ('keyrotate')")])
    assert not store.contended, "keyrotate's own commits are not contention"
    app = sqlite3.connect(path, isolation_level=None)
    app.execute("INSERT INTO t (v) VALUES ('application')")
    # asked before keyrotate writes again: the writer decides from it whether to gather pages
    assert store.contended


class _HeldClock:
    """sqlite_file's clock, moved only by the statements a transaction runs (SELECT
    hold(s)): how long each commit held the write lock, without depending on how fast
    this machine is; and the pauses the store makes, recorded instead of slept."""

    def __init__(self):
        self.t, self.pauses = 0.0, []

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)

    def hold(self, seconds: float) -> int:
        self.t += seconds
        return 1


def _held_store(tmp_path, monkeypatch):
    from keyrotate.db import sqlite_file

    store = SqliteFileStore(f"file:{_db(tmp_path)}")
    clock = _HeldClock()
    monkeypatch.setattr(sqlite_file, "time", clock)
    store.wconn.create_function("hold", 1, clock.hold)
    return store, clock


def test_an_application_keyrotate_has_not_seen_gets_an_opening_every_two_seconds_held(
        tmp_path, monkeypatch):
    """Review: an application whose write waits in SQLite's busy handler (which tries
    again every 100 ms) has not committed, so keyrotate cannot know of it; committing back
    to back, it left gaps of a millisecond or two and the write waited 3.4 s. After every
    two seconds of holding the write lock keyrotate now pauses longer than the busy
    handler's step."""
    from keyrotate.db.sqlite_file import MIN_BREATHER, OPENING_EVERY

    store, clock = _held_store(tmp_path, monkeypatch)
    commits = 0
    while not clock.pauses:
        store.apply([], None, [Statement("SELECT hold(0.3)")])
        commits += 1
        assert commits <= 20, "no opening in 6 s of holding the write lock"
    assert commits * 0.3 >= OPENING_EVERY, "an opening before it was due"
    assert commits * 0.3 <= OPENING_EVERY + 0.3
    assert clock.pauses == [MIN_BREATHER] and MIN_BREATHER > 0.1


def test_after_an_application_s_commit_keyrotate_pauses_as_long_as_it_held_the_lock(
        tmp_path, monkeypatch):
    store, clock = _held_store(tmp_path, monkeypatch)
    app = sqlite3.connect(store.path, isolation_level=None)
    app.execute("INSERT INTO t (v) VALUES ('application')")
    store.apply([], None, [Statement("SELECT hold(0.3)")])
    assert clock.pauses == [0.3]
    app.execute("INSERT INTO t (v) VALUES ('application')")
    store.apply([], None, [Statement("SELECT hold(0.01)")])
    assert clock.pauses[-1] > 0.1, "shorter than the busy handler's step: often missed"


def test_the_crypto_workers_are_forked_while_no_thread_is_inside_sqlite(ref_db, keys_env,
                                                                        monkeypatch):
    """Review: the workers, which open the file themselves for the census, were forked
    while the lease's heartbeat could be inside a commit; a child then inherits the lock
    SQLite believes this process holds (it reads without a real lock) or a mutex held by
    that thread (it hangs). The fork happens with both of the store's locks held."""
    from keyrotate.dataplane import reencrypt as module
    from keyrotate.dataplane.codec_refs import codec_from_refs
    from keyrotate.db.connect import open_database
    from keyrotate.db.table_shape import resolve_target

    store = open_database(f"file:{ref_db(300)}")
    seen = []
    real = module.CryptoRunner

    def runner(*args, **kwargs):
        seen.append((store._write_lock.locked(), store._read_lock.locked()))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "CryptoRunner", runner)
    try:
        codec = codec_from_refs("tminus-envelope", keys_env["new"], keys_env["old"])
        result = module.reencrypt(store, resolve_target(store, "accounts.encrypted_tokens", None),
                                  codec, module.ReencryptOptions(workers=2))
    finally:
        store.close()
    assert result.status == "completed"
    assert seen == [(True, True)]


def test_a_failed_look_at_other_writers_leaves_no_transaction_open(tmp_path, monkeypatch):
    """Review: the read of data_version came after BEGIN IMMEDIATE but outside the block
    that rolls back: had it failed, the write lock stayed held (every application write
    blocked) and every later write of the run failed "within a transaction"."""
    store = SqliteFileStore(f"file:{_db(tmp_path)}")
    real = store._read_data_version

    def failing() -> int:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "_read_data_version", failing)
    try:
        store.apply([], None, [Statement("INSERT INTO t (v) VALUES ('keyrotate')")])
    except Exception as e:   # the store's error, named
        assert "disk I/O error" in str(e)
    else:
        raise AssertionError("the failure did not stop the write")
    assert not store.wconn.in_transaction
    monkeypatch.setattr(store, "_read_data_version", real)
    store.apply([], None, [Statement("INSERT INTO t (v) VALUES ('keyrotate')")])
    (n,), = sqlite3.connect(store.path).execute("SELECT count(*) FROM t").fetchall()
    assert n == 1
