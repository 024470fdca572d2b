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
from typing import Callable, Sequence, TypeVar
from urllib.parse import quote, unquote, urlparse

from keyrotate.db.base import (
    DEFAULT_BATCH_SIZE,
    CasWrite,
    Statement,
    Target,
    Value,
    cas_sql,
    rows_by_key_sql,
    scan_sql,
    value_size,
)
from keyrotate.errors import ConfigError, StoreError, StoreUnavailable

T = TypeVar("T")
BUSY_TIMEOUT_MS = 30_000
# When another connection is writing, keyrotate holds the write lock at most half the time.
SHARE_WHEN_CONTENDED = 1.0
# SQLite's busy handler backs off in steps up to 100 ms: a shorter gap is often missed.
MIN_BREATHER = 0.05


def file_url_path(url: str) -> str:
    """The one filesystem path a `file:` URL names.

    - `file:PATH` (no `//`): PATH exactly as written, every character its own: `%41` is
      three characters, `#` and `?` are part of the name. This is how the manifest and
      wrangler's local D1 paths are written.
    - `file://[localhost]/PATH` (RFC 8089): PATH percent-decoded (`%23` for `#`, `%3F` for
      `?`). A query (`?mode=ro`) or fragment would mean something keyrotate does not do, so
      either is refused rather than dropped.
    """
    if url.startswith("file://"):
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"a file: URL cannot name a host: {url}")
        if "?" in url or "#" in url:
            raise ConfigError(
                f"{url}: keyrotate honours no query string or fragment in a file:// URL "
                "(SQLite options such as mode=ro or immutable=1 are not applied, and the "
                "database is written). Give the path alone; spell a '?' or '#' in the file "
                "name as %3F or %23, or write file:PATH, which takes PATH literally.")
        try:
            path = unquote(parsed.path, errors="strict")
        except UnicodeDecodeError:
            raise ConfigError(f"{url}: its percent-escapes are not UTF-8") from None
    else:
        path = url[len("file:"):]
    if not path:
        raise ConfigError("file: URL without a path")
    if "\0" in path:
        raise ConfigError("a file: URL cannot name a path with a NUL byte")
    return path


def sqlite_uri(path: str) -> str:
    """An SQLite URI that opens exactly `path`, read-write, never creating it: every
    character SQLite's URI parser would read as syntax (%, ?, #) is percent-encoded."""
    return f"file:{quote(os.path.abspath(path), safe='/')}?mode=rw"


# SQLite errors that pass: a lock held past the busy timeout, a full or failing disk
_TRANSIENT = ("locked", "busy", "disk is full", "disk i/o error", "out of memory")


def store_error(what: str, e: sqlite3.Error) -> StoreError:
    """The error for a failed SQLite call: resumable (exit 3) when it may pass."""
    message = f"{what}: {e}"
    if any(t in str(e).lower() for t in _TRANSIENT):
        return StoreUnavailable(message)
    return StoreError(message)


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
            conn = sqlite3.connect(sqlite_uri(path), uri=True,
                                   isolation_level=None, check_same_thread=False,
                                   timeout=BUSY_TIMEOUT_MS / 1000)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.DatabaseError as e:
            error = store_error(f"cannot open {path} as an SQLite database", e)
            raise (error if isinstance(error, StoreUnavailable) else ConfigError(str(error))) from None

    def query(self, sql: str, params: Sequence[Value] = ()) -> list[tuple[Value, ...]]:
        with self._read_lock:
            return self._query(sql, params)

    def _query(self, sql: str, params: Sequence[Value]) -> list[tuple[Value, ...]]:
        return self._lenient(lambda: self.conn.execute(sql, tuple(params)).fetchall())

    def _lenient(self, read: Callable[[], T]) -> T:
        try:
            try:
                return read()
            except sqlite3.OperationalError as e:
                if "decode" not in str(e):
                    raise
                # a cell holds invalid UTF-8: read this page again, leniently (rare, slower)
                self.conn.text_factory = _lenient_text
                try:
                    return read()
                finally:
                    self.conn.text_factory = str
        except sqlite3.Error as e:
            raise store_error(f"query failed on {self.display_url}", e) from None

    def scan_page(self, target: Target, after: Value, first: bool, limit: int,
                  max_bytes: int) -> list[tuple[Value, Value]]:
        """Rows come off the cursor one by one until the page is full or heavy enough:
        SQLite never hands over more than the page holds."""
        params: tuple[Value, ...] = (limit,) if first else (after, limit)
        with self._read_lock:
            return self._lenient(lambda: self._fill(scan_sql(target, first), params, max_bytes))

    def _fill(self, sql: str, params: tuple[Value, ...], max_bytes: int) -> list[tuple[Value, Value]]:
        cur = self.conn.execute(sql, params)
        page: list[tuple[Value, Value]] = []
        size = 0
        try:
            for row in cur:
                page.append(row)
                size += value_size(row[1])
                if size >= max_bytes:
                    break
        finally:
            cur.close()
        return page

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
            raise store_error(f"write failed on {self.display_url}", e) from None
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

    def restore_point(self) -> None:
        return None  # no history kept: back the file or server up yourself

    def close(self) -> None:
        self.conn.close()
        self.wconn.close()
