"""The row-store contract every backend keeps (SQLite file, libSQL server, D1).

The engine needs only this: look at a table's shape, stream rows by primary key
(keyset pagination, never OFFSET), and apply a batch of compare-and-swap writes together
with journal statements in one transaction, learning which writes hit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from keyrotate.errors import ConfigError

Value = Any  # what SQLite stores: None, int, float, str, bytes

# D1 allows 100 bound parameters per statement; every multi-key query stays under it.
MAX_BOUND_PARAMS = 100
DEFAULT_BATCH_SIZE = 1_000


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


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    decl_type: str
    pk_position: int  # 0 when not part of the primary key


def quote_ident(name: str) -> str:
    """An SQL identifier, double-quoted, so any table or column name is safe."""
    return '"' + name.replace('"', '""') + '"'


class RowStore(Protocol):
    """What every backend offers. Implementations are not thread-safe; one owner each."""

    display_url: str
    preferred_batch_size: int  # rows per page when the caller does not say

    def columns(self, table: str) -> list[ColumnInfo]: ...

    def unique_single_columns(self, table: str) -> set[str]: ...

    def query(self, sql: str, params: Sequence[Value] = ()) -> list[tuple[Value, ...]]: ...

    def apply(self, writes: Sequence[CasWrite], target: Target | None,
              statements: Sequence[Statement]) -> list[bool]: ...

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


def scan(store: RowStore, target: Target, after: Value, limit: int,
         first: bool) -> list[tuple[Value, Value]]:
    """One keyset page: rows with key > after (or from the start), in key order."""
    params: tuple[Value, ...] = (limit,) if first else (after, limit)
    return [(r[0], r[1]) for r in store.query(scan_sql(target, first), params)]


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
        return int(store.query(f"SELECT count(*) FROM {t}")[0][0])
    return int(store.query(f"SELECT count(*) FROM {t} WHERE {k} > ?", (after,))[0][0])


def resolve_target(store: RowStore, spec: str, key_column: str | None) -> Target:
    """Check TABLE.COLUMN against the schema and pick the unique key column to page by."""
    if spec.count(".") != 1 or not all(spec.split(".")):
        raise ConfigError(f"--target must be TABLE.COLUMN, got {spec!r}")
    table, column = spec.split(".")
    cols = store.columns(table)
    if not cols:
        raise ConfigError(f"table {table!r} does not exist in {store.display_url}")
    names = {c.name for c in cols}
    if column not in names:
        raise ConfigError(f"column {column!r} does not exist in table {table!r}")
    if key_column is None:
        pk = sorted((c for c in cols if c.pk_position), key=lambda c: c.pk_position)
        if not pk:
            raise ConfigError(f"table {table!r} has no primary key; name a unique column "
                              "with --key-column")
        if len(pk) > 1:
            raise ConfigError(f"table {table!r} has a composite primary key "
                              f"({', '.join(c.name for c in pk)}); name a unique column "
                              "with --key-column")
        key_column = pk[0].name
    elif key_column not in names:
        raise ConfigError(f"key column {key_column!r} does not exist in table {table!r}")
    else:
        pk = [c for c in cols if c.pk_position]
        single_pk = len(pk) == 1 and pk[0].name == key_column
        if not single_pk and key_column not in store.unique_single_columns(table):
            raise ConfigError(f"key column {key_column!r} is neither the primary key nor "
                              "covered by a unique index; keyset paging needs unique keys")
    if key_column == column:
        raise ConfigError("the key column cannot be the encrypted column itself")
    return Target(table, column, key_column)


def columns_from_pragma(rows: Sequence[Sequence[Value]]) -> list[ColumnInfo]:
    """Rows of PRAGMA table_info: cid, name, type, notnull, dflt_value, pk."""
    return [ColumnInfo(str(r[1]), str(r[2] or ""), int(r[5] or 0)) for r in rows]


def unique_single_columns_via(store: RowStore, table: str) -> set[str]:
    """Columns that alone carry a UNIQUE index (PRAGMA index_list / index_info)."""
    out: set[str] = set()
    for idx in store.query(f"PRAGMA index_list({quote_ident(table)})"):
        name, unique = idx[1], idx[2]
        if not unique:
            continue
        cols = store.query(f"PRAGMA index_info({quote_ident(str(name))})")
        if len(cols) == 1 and cols[0][2] is not None:
            out.add(str(cols[0][2]))
    return out
