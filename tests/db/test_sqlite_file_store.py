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
