"""`file:` URLs: a local SQLite file (a local D1 state file is one) through the sqlite3 module.

Why not libsql-client's own file client: it opens a new connection for every call and
sets the busy timeout to 0, so any concurrent application write makes keyrotate fail
with "database is locked" instead of waiting its turn. Here one connection waits up to
`busy_timeout`, and each batch is one short BEGIN IMMEDIATE transaction so the
application is never starved for long.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from typing import Sequence
from urllib.parse import unquote, urlparse

from keyrotate.errors import ConfigError, StoreError
from keyrotate.db.base import (
    DEFAULT_BATCH_SIZE, CasWrite, ColumnInfo, Statement, Target, Value, cas_sql, columns_from_pragma,
    quote_ident, rows_by_key_sql, unique_single_columns_via,
)

BUSY_TIMEOUT_MS = 30_000
# When another connection is writing, keyrotate holds the write lock at most half the time.
SHARE_WHEN_CONTENDED = 1.0
# SQLite's busy handler backs off in steps up to 100 ms: a shorter gap is often missed.
MIN_BREATHER = 0.05


def file_url_path(url: str) -> str:
    """The filesystem path of `file:PATH` or `file:///abs/path`."""
    if url.startswith("file://"):
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"a file: URL cannot name a host: {url}")
        return unquote(parsed.path)
    path = url[len("file:"):]
    if not path:
        raise ConfigError("file: URL without a path")
    return path


def _lenient_text(data: bytes) -> str:
    """Invalid UTF-8 in a TEXT cell must not abort a scan; surrogates mark it for the codec."""
    return data.decode("utf-8", "surrogateescape")


class SqliteFileStore:
    """A row store over one SQLite file. Never creates a database that does not exist."""

    preferred_batch_size = DEFAULT_BATCH_SIZE

    def __init__(self, url: str):
        path = file_url_path(url)
        self.display_url = url
        self.path = path
        if not os.path.isfile(path):
            raise ConfigError(f"database file not found: {path} "
                              "(keyrotate never creates an empty database)")
        # Two connections: reads (keyset scans) and writes (CAS batches), so a writer thread
        # can commit while the main thread scans; sqlite3 releases the GIL inside SQLite.
        self._read_lock = threading.Lock()
        self.conn = self._connect(path)
        self.wconn = self._connect(path)
        self._data_version = self._read_data_version()

    @staticmethod
    def _connect(path: str) -> sqlite3.Connection:
        try:
            # mode=rw: fail rather than create; isolation_level=None: we say BEGIN ourselves
            conn = sqlite3.connect(f"file:{os.path.abspath(path)}?mode=rw", uri=True,
                                   isolation_level=None, check_same_thread=False,
                                   timeout=BUSY_TIMEOUT_MS / 1000)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"cannot open {path} as an SQLite database: {e}") from None

    def columns(self, table: str) -> list[ColumnInfo]:
        return columns_from_pragma(self.query(f"PRAGMA table_info({quote_ident(table)})"))

    def unique_single_columns(self, table: str) -> set[str]:
        return unique_single_columns_via(self, table)

    def query(self, sql: str, params: Sequence[Value] = ()) -> list[tuple[Value, ...]]:
        with self._read_lock:
            return self._query(sql, params)

    def _query(self, sql: str, params: Sequence[Value]) -> list[tuple[Value, ...]]:
        try:
            try:
                return self.conn.execute(sql, tuple(params)).fetchall()
            except sqlite3.OperationalError as e:
                if "decode" not in str(e):
                    raise
                # a cell holds invalid UTF-8: read this page again, leniently (rare, slower)
                self.conn.text_factory = _lenient_text
                try:
                    return self.conn.execute(sql, tuple(params)).fetchall()
                finally:
                    self.conn.text_factory = str
        except sqlite3.Error as e:
            raise StoreError(f"query failed on {self.display_url}: {e}") from None

    def apply(self, writes: Sequence[CasWrite], target: Target | None,
              statements: Sequence[Statement]) -> list[bool]:
        """CAS writes, then journal statements, in one immediate transaction."""
        conn = self.wconn
        contended = self._read_data_version() != self._data_version
        try:
            conn.execute("BEGIN IMMEDIATE")
            locked_at = time.monotonic()
            try:
                hits = [True] * len(writes)
                if writes:
                    assert target is not None
                    changed = conn.executemany(cas_sql(target), writes).rowcount
                    if changed != len(writes):
                        hits = self._landed(target, writes)
                for st in statements:
                    conn.execute(st.sql, st.params)
                conn.execute("COMMIT")
                held = time.monotonic() - locked_at
                self._data_version = self._read_data_version()
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise StoreError(f"write failed on {self.display_url}: {e}") from None
        if contended:
            # quiet on both connections: a reader's SHARED lock would block their COMMIT too
            with self._read_lock:
                time.sleep(min(max(held * SHARE_WHEN_CONTENDED, MIN_BREATHER), 0.5))
        return hits

    def _read_data_version(self) -> int:
        """Changes whenever another connection commits to the file (never for our own)."""
        return int(self.wconn.execute("PRAGMA data_version").fetchone()[0])

    def _landed(self, target: Target, writes: Sequence[CasWrite]) -> list[bool]:
        """Which CAS writes hit. Exact: we still hold the write lock, nobody else wrote since."""
        now: dict[Value, Value] = {}
        for i in range(0, len(writes), 500):
            chunk = [w[1] for w in writes[i:i + 500]]
            now.update(self.wconn.execute(rows_by_key_sql(target, len(chunk)), chunk).fetchall())
        return [now.get(key) == new for new, key, _ in writes]

    def close(self) -> None:
        self.conn.close()
        self.wconn.close()
