"""The row-store contract every backend keeps (SQLite file, libSQL server, D1).

The engine needs only this: look at a table's shape, stream rows by primary key
(keyset pagination, never OFFSET), and apply a batch of compare-and-swap writes together
with journal statements in one transaction, learning which writes hit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from keyrotate.errors import StoreError

Value = Any  # what SQLite stores: None, int, float, str, bytes

# D1 allows 100 bound parameters per statement; every multi-key query stays under it.
MAX_BOUND_PARAMS = 100
# Rows per page when the caller does not say; most pages stop at PAGE_BYTES first (2 MB
# is about 2,900 rows of 700-byte tokens): each page is one commit, and on a file every
# commit waits for the disk
DEFAULT_BATCH_SIZE = 5_000
# About this much of encrypted values per page: pages in flight x this bounds memory.
PAGE_BYTES = 2 << 20


@dataclass(frozen=True)
class Statement:
    """One SQL statement with positional parameters."""

    sql: str
    params: tuple[Value, ...] = ()


# One compare-and-swap write: (new, key, expected), in the order of cas_sql's parameters,
# so a list of them goes straight to executemany. A plain tuple, not a class: it is built
# in worker processes and pickled by the hundred thousand.
CasWrite = tuple[str, Value, Value]


@dataclass(frozen=True)
class Target:
    """One encrypted column and the unique column that addresses its rows."""

    table: str
    column: str
    key_column: str

    @property
    def name(self) -> str:
        return f"{self.table}.{self.column}"


def quote_ident(name: str) -> str:
    """An SQL identifier, double-quoted, so any table or column name is safe."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class RestorePoint:
    """A point the database can be restored to (D1 Time Travel), recorded before a
    rotation's first row write: value-free, safe to log and to send."""

    bookmark: str
    taken_at: str
    expires_at: str          # the restore point is gone after this
    restore_command: str

    def as_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


class RowStore(Protocol):
    """What every backend offers. Implementations are not thread-safe; one owner each."""

    display_url: str
    preferred_batch_size: int  # rows per page when the caller does not say

    def query(self, sql: str, params: Sequence[Value] = ()) -> list[tuple[Value, ...]]: ...

    def scan_page(self, target: "Target", after: Value, first: bool, limit: int,
                  max_bytes: int) -> list[tuple[Value, Value]]:
        """One keyset page: (key, value) of rows with key > after (or from the start), in
        key order, at most `limit` rows and about `max_bytes` of values, at least one."""
        ...

    def apply(self, writes: Sequence[CasWrite], target: Target | None,
              statements: Sequence[Statement]) -> list[bool]: ...

    def restore_point(self) -> RestorePoint | None:
        """Where the database could be restored to now, when the backend keeps history
        (D1 Time Travel); None otherwise."""
        ...

    def close(self) -> None: ...


# --- helpers shared by every backend ----------------------------------------------------

@functools.lru_cache(maxsize=64)
def cas_sql(target: Target) -> str:
    """UPDATE ... SET col = new WHERE key = ? AND col IS expected: the compare-and-swap."""
    t, c, k = quote_ident(target.table), quote_ident(target.column), quote_ident(target.key_column)
    return f"UPDATE {t} SET {c} = ? WHERE {k} = ? AND {c} IS ?"


def scan_sql(target: Target, first: bool) -> str:
    t, c, k = quote_ident(target.table), quote_ident(target.column), quote_ident(target.key_column)
    where = "" if first else f" WHERE {k} > ?"
    return f"SELECT {k}, {c} FROM {t}{where} ORDER BY {k} LIMIT ?"


def range_sql(target: Target, first: bool) -> str:
    """scan_sql within an upper bound. Parameters: [after,] upto, limit."""
    t, c, k = quote_ident(target.table), quote_ident(target.column), quote_ident(target.key_column)
    lower = "" if first else f"{k} > ? AND "
    return f"SELECT {k}, {c} FROM {t} WHERE {lower}{k} <= ? ORDER BY {k} LIMIT ?"


def bounded_scan_sql(target: Target, first: bool, bounded_above: bool = False) -> str:
    """One statement that stops a page at a byte budget (for stores that answer whole
    results): the key range of the first rows whose values fit, then those rows.
    `bounded_above`: only rows with key <= an upper bound (a census reading back exactly
    the range one page of the pass covered). Parameters: bounded_scan_params."""
    t, c, k = quote_ident(target.table), quote_ident(target.column), quote_ident(target.key_column)
    conds = ([] if first else [f"{k} > ?"]) + ([f"{k} <= ?"] if bounded_above else [])
    where = f" WHERE {' AND '.join(conds)}" if conds else ""
    return (f"WITH page AS (SELECT {k} AS k, coalesce(length({c}), 0) AS n FROM {t}{where} "
            f"ORDER BY {k} LIMIT ?), cut AS (SELECT k FROM (SELECT k, sum(n) OVER (ORDER BY k "
            f"ROWS UNBOUNDED PRECEDING) - n AS before FROM page) WHERE before < ?) "
            f"SELECT {k}, {c} FROM {t} WHERE {k} <= (SELECT max(k) FROM cut)"
            f"{'' if first else f' AND {k} > ?'} ORDER BY {k}")


def bounded_scan_params(after: Value, first: bool, limit: int, max_bytes: int,
                        upto: tuple[Value] | tuple[()] = ()) -> tuple[Value, ...]:
    """`upto`: (the upper bound,) for a statement made with bounded_above."""
    lower: tuple[Value, ...] = () if first else (after,)
    return (*lower, *upto, limit, max_bytes, *lower)


def range_statement(target: Target, after: Value, first: bool, upto: Value, limit: int,
                    max_bytes: int) -> Statement:
    """Rows with after < key <= upto (from the start when `first`), at most `limit` rows
    and about `max_bytes` of values, in key order."""
    return Statement(bounded_scan_sql(target, first, bounded_above=True),
                     bounded_scan_params(after, first, limit, max_bytes, (upto,)))


def read_many(store: RowStore, statements: Sequence[Statement]) -> list[list[tuple[Value, ...]]]:
    """Several reads; one request on stores that take a batch of them (D1)."""
    many = getattr(store, "query_many", None)
    if many is not None:
        return many(statements)  # type: ignore[no-any-return]
    return [store.query(st.sql, st.params) for st in statements]


def bounded_scan_page(store: RowStore, target: Target, after: Value, first: bool, limit: int,
                      max_bytes: int) -> list[tuple[Value, Value]]:
    """`scan_page` for stores that answer whole results: the statement cuts the page."""
    rows = store.query(bounded_scan_sql(target, first),
                       bounded_scan_params(after, first, limit, max_bytes))
    return [(r[0], r[1]) for r in rows]


def cas_statements(target: Target | None, writes: Sequence[CasWrite]) -> list[Statement]:
    """A batch's compare-and-swap writes as statements (for stores that take a batch)."""
    if not writes:
        return []
    if target is None:
        raise StoreError("compare-and-swap writes need the target they belong to")
    sql = cas_sql(target)
    return [Statement(sql, tuple(w)) for w in writes]


def value_size(value: Value) -> int:
    return len(value) if isinstance(value, (str, bytes)) else 8


def read_rows(store: RowStore, target: Target, keys: Sequence[Value]) -> list[tuple[Value, Value]]:
    """Re-read specific rows (to retry a conflict), within D1's bound-parameter limit."""
    out: list[tuple[Value, Value]] = []
    for i in range(0, len(keys), MAX_BOUND_PARAMS):
        chunk = keys[i:i + MAX_BOUND_PARAMS]
        out += [(r[0], r[1]) for r in store.query(rows_by_key_sql(target, len(chunk)), tuple(chunk))]
    return out


def rows_by_key_sql(target: Target, n: int) -> str:
    t, c, k = quote_ident(target.table), quote_ident(target.column), quote_ident(target.key_column)
    return f"SELECT {k}, {c} FROM {t} WHERE {k} IN ({','.join('?' * n)}) ORDER BY {k}"


def count_after(store: RowStore, target: Target, after: Value, first: bool) -> int:
    t, k = quote_ident(target.table), quote_ident(target.key_column)
    if first:
        return count_rows(store, target)
    return int(store.query(f"SELECT count(*) FROM {t} WHERE {k} > ?", (after,))[0][0])


def count_rows(store: RowStore, target: Target) -> int:
    """Every row of the table, however its keys are (the census's yardstick)."""
    st = count_statement(target)
    return int(store.query(st.sql, st.params)[0][0])


def count_statement(target: Target) -> Statement:
    return Statement(f"SELECT count(*) FROM {quote_ident(target.table)}")
