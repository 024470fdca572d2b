"""TABLE.COLUMN to a Target: the encrypted column and a column that pages it safely.

Keyset paging (`WHERE key > ? ORDER BY key`) visits every row only if the key is unique
and never NULL: a NULL key is skipped by `>`, a duplicate can be skipped at a page
boundary. So a key column is accepted only when uniqueness is a constraint over the
whole table (a single-column primary key, or a unique index that is not partial) and
NULL is ruled out: declared NOT NULL (or an INTEGER PRIMARY KEY rowid alias, or a
WITHOUT ROWID table), or, for the common `TEXT PRIMARY KEY` that SQLite lets hold NULL,
no NULL in the column when the run starts (a row given a NULL key later is caught by
the final census: the run then says so and exits 3). Otherwise the table is paged by its
rowid, which always is both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from keyrotate.db.base import RowStore, Statement, Target, quote_ident, read_many
from keyrotate.errors import ConfigError

ROWID_NAMES = ("rowid", "_rowid_", "oid")


@dataclass(frozen=True)
class Column:
    name: str
    decl_type: str
    not_null: bool
    pk_position: int  # 0 when not part of the primary key


@dataclass(frozen=True)
class TableShape:
    name: str
    columns: tuple[Column, ...]
    without_rowid: bool
    unique_not_partial: frozenset[str]   # columns that alone carry a full unique index
    nulls: dict[str, int] = field(default_factory=dict)   # NULL counts already read

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)

    @property
    def primary_key(self) -> tuple[Column, ...]:
        return tuple(sorted((c for c in self.columns if c.pk_position), key=lambda c: c.pk_position))

    @property
    def rowid_name(self) -> str | None:
        """How to name the rowid here: None for WITHOUT ROWID tables (or every alias shadowed)."""
        if self.without_rowid:
            return None
        taken = {c.name.lower() for c in self.columns}
        return next((n for n in ROWID_NAMES if n not in taken), None)

    def unique(self, name: str) -> bool:
        """Unique by a constraint over the whole table."""
        pk = self.primary_key
        return (len(pk) == 1 and pk[0].name == name) or name in self.unique_not_partial

    def declared_not_null(self, name: str) -> bool:
        col = self.column(name)
        if col is None:
            return False
        pk = self.primary_key
        rowid_alias = (len(pk) == 1 and pk[0].name == name and not self.without_rowid
                       and col.decl_type.upper() == "INTEGER")
        return col.not_null or rowid_alias or (self.without_rowid and col.pk_position > 0)


def table_shape(store: RowStore, table: str, key_hint: str | None = None) -> TableShape | None:
    """The table's columns and unique indexes: two rounds of reads, one request each on
    D1. `key_hint`: the column likely to page by; if the schema does not rule out NULL
    there, its NULL count comes in the second round (TableShape.nulls) instead of a
    request of its own."""
    q = quote_ident(table)
    info, sql, indexes = read_many(store, [
        Statement(f"PRAGMA table_info({q})"),
        Statement("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)),
        Statement(f"PRAGMA index_list({q})")])
    if not info:
        return None
    columns = tuple(Column(str(r[1]), str(r[2] or ""), bool(r[3]), int(r[5] or 0)) for r in info)
    without_rowid = bool(sql and sql[0][0] and
                         re.search(r"\bWITHOUT\s+ROWID\s*;?\s*$", str(sql[0][0]), re.I))
    candidates = [str(idx[1]) for idx in indexes
                  if idx[2] and not (idx[4] if len(idx) > 4 else 0)]   # unique, not partial
    shape = TableShape(table, columns, without_rowid, frozenset())
    pk = shape.primary_key
    hint = key_hint or (pk[0].name if len(pk) == 1 else None)
    count_nulls = hint is not None and shape.column(hint) is not None \
        and not shape.declared_not_null(hint)
    second = [Statement(f"PRAGMA index_info({quote_ident(name)})") for name in candidates]
    if count_nulls:
        second.append(_nulls_statement(table, str(hint)))
    answers = read_many(store, second) if second else []
    unique = {str(cols[0][2]) for cols in answers[:len(candidates)]
              if len(cols) == 1 and cols[0][2] is not None}
    nulls = {str(hint): int(answers[-1][0][0])} if count_nulls else {}
    return TableShape(table, columns, without_rowid, frozenset(unique), nulls)


def _nulls_statement(table: str, column: str) -> Statement:
    return Statement(f"SELECT count(*) FROM {quote_ident(table)} WHERE {quote_ident(column)} IS NULL")


def resolve_target(store: RowStore, spec: str, key_column: str | None) -> Target:
    """Check TABLE.COLUMN against the schema and pick the column to page by."""
    if spec.count(".") != 1 or not all(spec.split(".")):
        raise ConfigError(f"--target must be TABLE.COLUMN, got {spec!r}")
    table, column = spec.split(".")
    shape = table_shape(store, table, key_column)
    if shape is None:
        raise ConfigError(f"table {table!r} does not exist in {store.display_url}")
    if shape.column(column) is None:
        raise ConfigError(f"column {column!r} does not exist in table {table!r}")
    key = _key_column(store, shape, key_column)
    if key == column:
        raise ConfigError("the key column cannot be the encrypted column itself")
    return Target(table, column, key)


def _pages_safely(store: RowStore, shape: TableShape, name: str) -> bool:
    if not shape.unique(name):
        return False
    if shape.declared_not_null(name):
        return True
    if name in shape.nulls:
        return shape.nulls[name] == 0
    st = _nulls_statement(shape.name, name)
    return int(store.query(st.sql, st.params)[0][0]) == 0


def _key_column(store: RowStore, shape: TableShape, asked: str | None) -> str:
    rowid = shape.rowid_name
    if asked is None:
        pk = shape.primary_key
        if len(pk) == 1 and _pages_safely(store, shape, pk[0].name):
            return pk[0].name
        if rowid:
            return rowid
        raise ConfigError(f"table {shape.name!r} has no single-column primary key that is NOT "
                          "NULL and no rowid: name a NOT NULL column with a unique index with "
                          "--key-column")
    if asked.lower() in ROWID_NAMES and shape.column(asked) is None:
        if rowid is None:
            raise ConfigError(f"table {shape.name!r} has no rowid (WITHOUT ROWID)")
        return rowid
    if shape.column(asked) is None:
        raise ConfigError(f"key column {asked!r} does not exist in table {shape.name!r}")
    if not _pages_safely(store, shape, asked):
        hint = " Leave out --key-column to page by rowid." if rowid else ""
        raise ConfigError(f"key column {asked!r} of {shape.name!r} is not provably unique and "
                          "NOT NULL over the whole table (it needs a primary key or a unique "
                          "index without WHERE, and no NULL): paging by it could skip rows."
                          + hint)
    return asked
