"""The row-store contract every backend keeps (SQLite file, libSQL server, D1).

The engine needs only this: look at a table's shape, stream rows by primary key
(keyset pagination, never OFFSET), and apply a batch of compare-and-swap writes together
with journal statements in one transaction, learning which writes hit.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, replace
from operator import itemgetter
from typing import Any, ContextManager, Iterable, Protocol, Sequence

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
    """One encrypted column and the unique column that addresses its rows.

    `collation`: the collating sequence under which the key column is unique (its unique
    index's): every comparison and ORDER BY of keys uses it, so paging can neither skip
    nor repeat a row, and that index serves it. None for the rowid (integers).
    `rowid`: how to name the table's rowid (None for WITHOUT ROWID tables): the census's
    witness that it reached every row. `witnessed`: scans add the rowid as a third column.
    """

    table: str
    column: str
    key_column: str
    collation: str | None = None
    rowid: str | None = None
    witnessed: bool = False

    @property
    def name(self) -> str:
        return f"{self.table}.{self.column}"

    def with_witness(self) -> "Target":
        """The same target, its scans carrying each row's rowid (when it has one)."""
        return replace(self, witnessed=self.rowid is not None)


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

def collate(target: Target) -> str:
    """The COLLATE clause every key comparison and ORDER BY carries ('' for none)."""
    return f" COLLATE {target.collation}" if target.collation else ""


def _names(target: Target) -> tuple[str, str, str, str]:
    """Quoted table, column and key, and the key as compared (with its collation)."""
    t, c, k = quote_ident(target.table), quote_ident(target.column), quote_ident(target.key_column)
    return t, c, k, k + collate(target)


def _witness(target: Target) -> str:
    return f", {quote_ident(target.rowid)} AS keyrotate_witness" if (
        target.witnessed and target.rowid) else ""


@functools.lru_cache(maxsize=64)
def cas_sql(target: Target) -> str:
    """UPDATE ... SET col = new WHERE key = ? AND col IS expected: the compare-and-swap."""
    t, c, _, kc = _names(target)
    return f"UPDATE {t} SET {c} = ? WHERE {kc} = ? AND {c} IS ?"


def scan_sql(target: Target, first: bool, bounded: bool = False) -> str:
    """A keyset page: keys after ? (unless `first`), up to ? included (when `bounded`)."""
    t, c, k, kc = _names(target)
    conditions = ([] if first else [f"{kc} > ?"]) + ([f"{kc} <= ?"] if bounded else [])
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return f"SELECT {k}, {c}{_witness(target)} FROM {t}{where} ORDER BY {kc} LIMIT ?"


def bounded_scan_sql(target: Target, first: bool, non_null: bool = False) -> str:
    """One statement that stops a page at a byte budget (for stores that answer whole
    results): the key range of the first rows whose values fit, then those rows.
    Parameters: [after,] limit, max_bytes[, after]. `non_null`: only rows whose value is
    not NULL (the probe)."""
    t, c, k, kc = _names(target)
    co = collate(target)
    conds = ([] if first else [f"{kc} > ?"]) + ([f"{c} IS NOT NULL"] if non_null else [])
    where = f" WHERE {' AND '.join(conds)}" if conds else ""
    last = ([f"{kc} <= (SELECT max(k{co}) FROM cut)"] + ([] if first else [f"{kc} > ?"])
            + ([f"{c} IS NOT NULL"] if non_null else []))
    return (f"WITH page AS (SELECT {k} AS k, coalesce(length({c}), 0) AS n FROM {t}{where} "
            f"ORDER BY {kc} LIMIT ?), cut AS (SELECT k FROM (SELECT k, sum(n) OVER (ORDER BY "
            f"k{co} ROWS UNBOUNDED PRECEDING) - n AS before FROM page) WHERE before < ?) "
            f"SELECT {k}, {c}{_witness(target)} FROM {t} WHERE {' AND '.join(last)} "
            f"ORDER BY {kc}")


def bounded_scan_params(after: Value, first: bool, limit: int, max_bytes: int) -> tuple[Value, ...]:
    return (limit, max_bytes) if first else (after, limit, max_bytes, after)


def read_many(store: RowStore, statements: Sequence[Statement]) -> list[list[tuple[Value, ...]]]:
    """Several reads; one request on stores that take a batch of them (D1)."""
    many = getattr(store, "query_many", None)
    if many is not None:
        return many(statements)  # type: ignore[no-any-return]
    return [store.query(st.sql, st.params) for st in statements]


class ReadAhead:
    """Reads answered early, in a request that had to be made anyway (D1: every request
    counts), each handed out once, to the very same statement; any other read goes to the
    store. An answer is as old as the request that carried it: only for reads that may
    be made at that moment (after the lease that guards them was claimed)."""

    def __init__(self, statements: Sequence[Statement] = (),
                 answers: Sequence[list[tuple[Value, ...]]] = ()):
        self._answers = {(st.sql, tuple(st.params)): rows
                         for st, rows in zip(statements, answers, strict=True)}

    def take(self, st: Statement) -> list[tuple[Value, ...]] | None:
        """The answer to `st`, once; None if it was not read ahead."""
        return self._answers.pop((st.sql, tuple(st.params)), None)

    def query(self, store: RowStore, sql: str, params: Sequence[Value] = ()) -> list[tuple[Value, ...]]:
        rows = self.take(Statement(sql, tuple(params)))
        return rows if rows is not None else store.query(sql, params)

    def read_many(self, store: RowStore, statements: Sequence[Statement]) -> list[list[tuple[Value, ...]]]:
        if all((st.sql, tuple(st.params)) in self._answers for st in statements):
            return [self.query(store, st.sql, st.params) for st in statements]
        return read_many(store, statements)


def bounded_scan_page(store: RowStore, target: Target, after: Value, first: bool, limit: int,
                      max_bytes: int) -> list[tuple[Value, ...]]:
    """`scan_page` for stores that answer whole results: the statement cuts the page."""
    return [tuple(r) for r in store.query(bounded_scan_sql(target, first),
                                          bounded_scan_params(after, first, limit, max_bytes))]


def cas_statements(target: Target | None, writes: Sequence[CasWrite]) -> list[Statement]:
    """A batch's compare-and-swap writes as statements (for stores that take a batch)."""
    if not writes:
        return []
    if target is None:
        raise StoreError("compare-and-swap writes need the target they belong to")
    sql = cas_sql(target)
    return [Statement(sql, tuple(w)) for w in writes]


def display_key(key: Value) -> str:
    """A row's key as printable text, for failure lists and output: a TEXT key that is not
    UTF-8 (read back holding lone surrogates) shows its bad bytes as \\xNN escapes."""
    text = str(key)
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def value_size(value: Value) -> int:
    return len(value) if isinstance(value, (str, bytes)) else 8


def page_weight(rows: Sequence[tuple[Value, ...]]) -> int:
    """The stored bytes of a page's values (the common all-text page without a Python
    call per row)."""
    try:
        return sum(map(len, map(itemgetter(1), rows)))
    except TypeError:   # a NULL or a number among them
        return sum(value_size(r[1]) for r in rows)


def read_rows(store: RowStore, target: Target, keys: Sequence[Value]) -> list[tuple[Value, Value]]:
    """Re-read specific rows (to retry a conflict), within D1's bound-parameter limit."""
    out: list[tuple[Value, Value]] = []
    for i in range(0, len(keys), MAX_BOUND_PARAMS):
        chunk = keys[i:i + MAX_BOUND_PARAMS]
        out += [(r[0], r[1]) for r in store.query(rows_by_key_sql(target, len(chunk)), tuple(chunk))]
    return out


def rows_by_key_sql(target: Target, n: int) -> str:
    t, c, k, kc = _names(target)
    return f"SELECT {k}, {c} FROM {t} WHERE {kc} IN ({','.join('?' * n)}) ORDER BY {kc}"


def count_after(store: RowStore, target: Target, after: Value, first: bool) -> int:
    t, _, _, kc = _names(target)
    if first:
        return count_rows(store, target)
    return int(store.query(f"SELECT count(*) FROM {t} WHERE {kc} > ?", (after,))[0][0])


# --- the census's witness: did paging reach every row? ---------------------------------
#
# Counts cannot prove it: a row paging skipped and a row the application deleted meanwhile
# cancel out. So the census sums a keyed hash of each row's rowid as it visits the rows,
# and compares that sum with the same sum over the whole table at the end, computed in
# SQL by one aggregate that never compares keys (no collation, no ORDER BY, no paging).
# A rowid r (any 64-bit integer) is written in base P with floored digits, which every
# integer has in exactly one way: r = m + P*(m1 + P*q1), 0 <= m, m1 < P, |q1| <= 3.
# SQLite's / and % truncate toward zero, so the SQL floors them itself (truncated
# remainders alone made -(d0 + d1*P) and (P - d0) + (P - d1)*P the same limbs, a hostile
# review's pair). h(r) = u^3 mod P with u = (a*m + c*m1 + d*(q1 mod P) + b) mod P, for a
# salt (a, b, c, d) drawn per census: two rowids collide only by chance (1 in P, the salt
# unknown to anyone else), even 2^31 apart (a hash of r mod P alone made rowids P apart
# one row); and cubing is one-to-one mod P (P = 2 mod 3). For more rows the sums agree by
# chance with odds of about 1 in P. SQLite's 64-bit integers hold every product
# (P < 2^31) and the sum of up to 2^32 terms.

WITNESS_PRIME = 2_147_483_579   # prime, = 2 (mod 3)
Salt = tuple[int, int, int, int]


def new_salt() -> Salt:
    import secrets

    def coefficient() -> int:
        return 1 + secrets.randbelow(WITNESS_PRIME - 1)

    return coefficient(), secrets.randbelow(WITNESS_PRIME), coefficient(), coefficient()


def witness_sum(rowids: Iterable[int], salt: Salt) -> int:
    """Python's side of witness_sql: the sum of h(rowid) over these rows."""
    a, b, c, d = salt
    p = WITNESS_PRIME
    total = 0
    for r in rowids:
        if 0 <= r < p:                      # the usual rowid: one limb, the others 0
            u = (a * r + b) % p
        else:                               # Python's // and % floor
            q = r // p
            u = (a * (r % p) + c * (q % p) + d * (q // p % p) + b) % p
        total += u * u % p * u % p
    return total


def witness_sql(table: str, rowid: str, salt: Salt, where: str = "") -> str:
    """count(*) and the sum of h(rowid) over the table (and `where`), in one aggregate."""
    a, b, c, d = salt
    p, r = WITNESS_PRIME, quote_ident(rowid)

    def floor_mod(x: str) -> str:
        return f"((({x}) % {p} + {p}) % {p})"

    def floor_div(x: str) -> str:             # no overflow: x / P first, then minus one
        return f"(({x}) / {p} - (CASE WHEN ({x}) % {p} < 0 THEN 1 ELSE 0 END))"

    q = floor_div(r)
    limbs = (f"(({a} * {floor_mod(r)} % {p} + {c} * {floor_mod(q)} % {p} + "
             f"{d} * {floor_mod(floor_div(q))} % {p} + {b}) % {p})")
    # the usual rowid, 0 <= r < P, is one limb (the others are 0): witness_sum's fast path,
    # and three times faster for SQLite than the limbs (CASE evaluates one branch)
    u = f"(CASE WHEN {r} >= 0 AND {r} < {p} THEN ({a} * {r} + {b}) % {p} ELSE {limbs} END)"
    return (f"SELECT count(*), coalesce(sum({u} * {u} % {p} * {u} % {p}), 0) "
            f"FROM {quote_ident(table)}{where}")


def count_rows(store: RowStore, target: Target) -> int:
    """Every row of the table, however its keys are (the census's yardstick)."""
    st = count_statement(target)
    return int(store.query(st.sql, st.params)[0][0])


def count_statement(target: Target) -> Statement:
    return Statement(f"SELECT count(*) FROM {quote_ident(target.table)}")


def quiet(store: Any) -> ContextManager[None]:
    """No thread of this process inside the store while the block runs (a store that can
    say so: the SQLite file's `quiet`). Fork there: a crypto worker that opens the file
    itself inherits no lock or mutex another thread held."""
    return store.quiet() if hasattr(store, "quiet") else contextlib.nullcontext()
