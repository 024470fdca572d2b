"""`file:` URLs: a local SQLite file (a local D1 state file is one) through the sqlite3 module.

Why not libsql-client's own file client: it opens a new connection for every call and
sets the busy timeout to 0, so any concurrent application write makes keyrotate fail
with "database is locked" instead of waiting its turn. Here one connection waits up to
`busy_timeout`, and each batch is one short BEGIN IMMEDIATE transaction so the
application is never starved for long.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, TypeVar
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
# SQLite's busy handler backs off in steps up to 100 ms: a shorter gap can be missed every
# time, so every pause is longer than that.
MIN_BREATHER = 0.11
# An application that has not committed yet (keyrotate cannot know it waits) still gets
# an opening after every two seconds keyrotate held the write lock: its wait stays well
# below the 5 s busy timeout Python's sqlite3 gives it by default.
OPENING_EVERY = 2.0
# Page cache of the writing connection: a few pages of rows fit, so a transaction never
# spills to the file before its commit (in rollback-journal mode every spill syncs the
# journal first: on a slow disk it doubled a run). A setting of this connection only.
WRITE_CACHE_KIB = 16 * 1024


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


# --- text that is not UTF-8 ---------------------------------------------------------------
#
# SQLite stores TEXT without checking it is UTF-8. Such a cell comes back (read leniently,
# above) as a str holding lone surrogates, which sqlite3 cannot bind again: a key like that
# used to end every run in a UnicodeEncodeError at the same row. Bound here as its own bytes
# through CAST(? AS TEXT), it is the very TEXT value it was read from, so its row is paged,
# compared and written like any other.

_SURROGATE = re.compile("[\ud800-\udfff]")


def _raw_text(value: Value) -> bool:
    return value.__class__ is str and not value.isascii() and _SURROGATE.search(value) is not None


def _placeholders(sql: str) -> list[int]:
    """Where the `?` parameters are (outside quotes, identifiers and comments)."""
    found, i, n = [], 0, len(sql)
    closing = {"'": "'", '"': '"', "`": "`", "[": "]"}
    while i < n:
        ch = sql[i]
        if ch in closing:
            i = sql.find(closing[ch], i + 1)
            i = n if i < 0 else i + 1
        elif sql.startswith("--", i):
            i = sql.find("\n", i)
            i = n if i < 0 else i
        elif sql.startswith("/*", i):
            i = sql.find("*/", i + 2)
            i = n if i < 0 else i + 2
        else:
            if ch == "?":
                found.append(i)
            i += 1
    return found


def bindable(sql: str, params: Sequence[Value]) -> tuple[str, tuple[Value, ...]]:
    """The statement and parameters sqlite3 can bind: a str that holds non-UTF-8 text (lone
    surrogates) goes as its own bytes, cast back to TEXT where it stands."""
    if not any(_raw_text(p) for p in params):
        return sql, tuple(params)
    out, last, bound = [], 0, []
    for pos, p in zip(_placeholders(sql), params):
        if _raw_text(p):
            out += [sql[last:pos], "CAST(? AS TEXT)"]
            last = pos + 1
            bound.append(p.encode("utf-8", "surrogateescape"))
        else:
            bound.append(p)
    out.append(sql[last:])
    return "".join(out), tuple(bound)


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
        self._write_lock = threading.Lock()
        self.conn = self._connect(path)
        self.wconn = self._connect(path)
        self.wconn.execute(f"PRAGMA cache_size = -{WRITE_CACHE_KIB}")
        # the file these connections hold: another process opening the path (a census's
        # worker) must find the same one, not a file put in its place meanwhile
        st = os.stat(path)
        self.identity = (st.st_dev, st.st_ino)
        self._data_version = self._read_data_version()
        self._contended = False
        self._held = 0.0   # seconds of write lock held since the last pause

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
        sql, bound = bindable(sql, params)
        return self._lenient(lambda: self.conn.execute(sql, bound).fetchall())

    def _lenient(self, read: Callable[[], T], conn: sqlite3.Connection | None = None) -> T:
        conn = conn or self.conn
        try:
            try:
                return read()
            except sqlite3.OperationalError as e:
                if "decode" not in str(e):
                    raise
                # a cell holds invalid UTF-8: read this page again, leniently (rare, slower)
                conn.text_factory = _lenient_text
                try:
                    return read()
                finally:
                    conn.text_factory = str
        except sqlite3.Error as e:
            raise store_error(f"query failed on {self.display_url}", e) from None

    # another process can open the file and read it beside this one (a census's ranges)
    parallel_reads = True

    def scan_page(self, target: Target, after: Value, first: bool, limit: int,
                  max_bytes: int, upto: Value = None) -> list[tuple[Value, Value]]:
        """Rows come off the cursor one by one until the page is full or heavy enough:
        SQLite never hands over more than the page holds. `upto`: no key past it."""
        bounded = upto is not None
        params = (() if first else (after,)) + ((upto,) if bounded else ()) + (limit,)
        sql, bound = bindable(scan_sql(target, first, bounded), params)
        with self._read_lock:
            return self._lenient(lambda: self._fill(sql, bound, max_bytes))

    def _fill(self, sql: str, params: tuple[Value, ...], max_bytes: int) -> list[tuple[Value, Value]]:
        cur = self.conn.execute(sql, params)
        page: list[tuple[Value, Value]] = []
        size = 0
        try:
            for row in cur:
                page.append(row)
                value = row[1]
                size += len(value) if value.__class__ is str else value_size(value)
                if size >= max_bytes:
                    break
        finally:
            cur.close()
        return page

    def apply(self, writes: Sequence[CasWrite], target: Target | None,
              statements: Sequence[Statement]) -> list[bool]:
        """CAS writes, then journal statements, in one immediate transaction."""
        with self._write_lock:   # the writer thread and the lease's heartbeat both write
            hits, held, contended = self._apply(writes, target, statements)
            pause = self._pause_for_others(held, contended)
        if pause:   # the write lock let go: the heartbeat may beat meanwhile
            with self._read_lock:   # a reader's SHARED lock would block the other's COMMIT
                time.sleep(pause)
        return hits

    @contextmanager
    def quiet(self) -> Iterator[None]:
        """No thread of this process inside SQLite for the block: a fork then (the crypto
        workers, which open the file themselves for a census) copies no lock SQLite
        believes this process holds, and no mutex held by another thread."""
        with self._write_lock, self._read_lock:
            yield

    def _apply(self, writes: Sequence[CasWrite], target: Target | None,
               statements: Sequence[Statement]) -> tuple[list[bool], float, bool]:
        """Which writes landed, how long the write lock was held, and whether another
        connection had committed since our last transaction."""
        conn = self.wconn
        try:
            conn.execute("BEGIN IMMEDIATE")
            locked_at = time.monotonic()
            try:
                # read holding the lock: a commit we waited for is another writer's, not ours
                contended = self._others_committed()
                hits = [True] * len(writes)
                if writes:
                    assert target is not None
                    plain = [w for w in writes if not _raw_text(w[1])]
                    changed = conn.executemany(cas_sql(target), plain).rowcount
                    for w in writes if len(plain) != len(writes) else ():
                        if _raw_text(w[1]):   # a key that is not UTF-8: one by one, as bytes
                            changed += conn.execute(*bindable(cas_sql(target), w)).rowcount
                    if changed != len(writes):
                        hits = self._landed(target, writes)
                for st in statements:
                    conn.execute(*bindable(st.sql, st.params))
                conn.execute("COMMIT")
                held = time.monotonic() - locked_at
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise store_error(f"write failed on {self.display_url}", e) from None
        return hits, held, contended

    def _pause_for_others(self, held: float, contended: bool) -> float:
        """How long to leave the file to others after a commit (0: not now). After a commit
        that followed another connection's, at least as long as the commit held the lock
        (an application writing steadily gets half the time); else once every
        OPENING_EVERY seconds held (an application whose write waits in SQLite's busy
        handler: keyrotate cannot see it). Call holding _write_lock."""
        self._held += held
        if contended:
            pause = min(max(held * SHARE_WHEN_CONTENDED, MIN_BREATHER), 0.5)
        elif self._held >= OPENING_EVERY:
            pause = MIN_BREATHER
        else:
            return 0.0
        self._held = 0.0
        return pause

    @property
    def contended(self) -> bool:
        """Whether another connection has committed to the file since we opened it: an
        application writes too, and every page gets a commit of its own (its turn at the
        write lock). Once seen, for the rest of the run."""
        if not self._contended:
            with self._write_lock:   # the baseline stays: the next commit pauses for it
                self._contended = self._read_data_version() != self._data_version
        return self._contended

    def _others_committed(self) -> bool:
        """Whether another connection committed since we last looked; call holding
        _write_lock. Our own commits leave data_version as it was."""
        version = self._read_data_version()
        changed, self._data_version = version != self._data_version, version
        self._contended = self._contended or changed
        return changed

    def _read_data_version(self) -> int:
        """Changes whenever another connection commits to the file (never for our own)."""
        return int(self.wconn.execute("PRAGMA data_version").fetchone()[0])

    def _landed(self, target: Target, writes: Sequence[CasWrite]) -> list[bool]:
        """Which CAS writes hit. Exact: we still hold the write lock, nobody else wrote since."""
        now: dict[Value, Value] = {}
        for i in range(0, len(writes), 500):
            sql, chunk = bindable(rows_by_key_sql(target, min(500, len(writes) - i)),
                                  [w[1] for w in writes[i:i + 500]])
            now.update(self._lenient(lambda: self.wconn.execute(sql, chunk).fetchall(), self.wconn))
        return [now.get(key) == new for new, key, _ in writes]

    def restore_point(self) -> None:
        return None  # no history kept: back the file or server up yourself

    def close(self) -> None:
        self.conn.close()
        self.wconn.close()
