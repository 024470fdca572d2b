"""TABLE.COLUMN to a Target: the encrypted column and a column that pages it safely.

Keyset paging (`WHERE key > ? ORDER BY key`) visits every row only if the key is unique
and never NULL under the collating sequence the comparisons use: a NULL key is skipped by
`>`, and a duplicate can be skipped at a page boundary. "Unique" is only ever unique
under some collation: a NOCASE column behind a BINARY unique index holds both `acc02`
and `ACC02`, which compare equal under the column's own NOCASE, so `key > 'acc02'` skips
one of them. So a key column is accepted only when uniqueness is a constraint over the
whole table (a single-column primary key, or a unique index that is not partial), and
every comparison of keys then uses that constraint's collation (Target.collation: the
same index serves them); and NULL is ruled out: declared NOT NULL (or an INTEGER PRIMARY
KEY rowid alias, or a WITHOUT ROWID table), or, for the common `TEXT PRIMARY KEY` that
SQLite lets hold NULL, no NULL in the column when the run starts (a row given a NULL key
later is caught by the final census: the run then says so and exits 3). Otherwise the
table is paged by its rowid, which always is both.

Refused outright: views (nothing to page, nothing to update), and unique indexes under a
collation SQLite does not build in (keyrotate could not compare under it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from keyrotate.db.base import RowStore, Statement, Target, quote_ident, read_many
from keyrotate.errors import ConfigError

ROWID_NAMES = ("rowid", "_rowid_", "oid")
BUILTIN_COLLATIONS = ("BINARY", "NOCASE", "RTRIM")


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
    # column -> the collations under which a full unique index over it alone makes it
    # unique (the primary key's first)
    unique_under: dict[str, tuple[str, ...]] = field(default_factory=dict)
    pk_index: bool = False               # the primary key has an index of its own (so an
                                         # INTEGER PRIMARY KEY is no rowid alias: DESC)
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

    def rowid_alias(self, name: str) -> bool:
        """The column is the rowid under another name: INTEGER PRIMARY KEY, except the
        `INTEGER PRIMARY KEY DESC` quirk (SQLite then keeps a separate column, with an
        index of its own, that may hold NULL)."""
        col, pk = self.column(name), self.primary_key
        return (col is not None and len(pk) == 1 and pk[0].name == name and not self.without_rowid
                and col.decl_type.upper() == "INTEGER" and not self.pk_index)

    def unique(self, name: str) -> bool:
        """Unique by a constraint over the whole table."""
        return self.rowid_alias(name) or bool(self.unique_under.get(name))

    def collation(self, name: str) -> str | None:
        """The collation to compare keys of `name` under (None for a rowid alias)."""
        if self.rowid_alias(name):
            return None
        usable = [c for c in self.unique_under.get(name, ()) if c in BUILTIN_COLLATIONS]
        return usable[0] if usable else None

    def declared_not_null(self, name: str) -> bool:
        col = self.column(name)
        if col is None:
            return False
        return col.not_null or self.rowid_alias(name) or (self.without_rowid and col.pk_position > 0)


def table_shape(store: RowStore, table: str, key_hint: str | None = None) -> TableShape | None:
    """The table's columns and unique indexes: two rounds of reads, one request each on
    D1. `key_hint`: the column likely to page by; if the schema does not rule out NULL
    there, its NULL count comes in the second round (TableShape.nulls) instead of a
    request of its own."""
    q = quote_ident(table)
    master, info, indexes = read_many(store, [
        Statement("SELECT type, sql, name FROM sqlite_master WHERE name = ? COLLATE NOCASE "
                  "AND type IN ('table', 'view')", (table,)),
        Statement(f"PRAGMA table_info({q})"),
        Statement(f"PRAGMA index_list({q})")])
    if master and master[0][0] == "view":
        raise ConfigError(f"{table!r} is a view: keyrotate rewrites rows in place and pages them "
                          "by a unique key, which a view has neither of. Name the table it reads "
                          "from.")
    if not info:
        return None
    # SQLite's names are case-insensitive: the table as the schema spells it, so that a
    # run's journal, its lease and the unfinished-run guard see one table however it is
    # typed (`ACCOUNTS.x` resumed nothing and took a lease of its own beside `accounts.x`)
    table = str(master[0][2]) if master else table
    columns = tuple(Column(str(r[1]), str(r[2] or ""), bool(r[3]), int(r[5] or 0)) for r in info)
    without_rowid = bool(master and master[0][1] and
                         re.search(r"\bWITHOUT\s+ROWID\s*;?\s*$", str(master[0][1]), re.I))
    candidates: list[tuple[str, str]] = []   # (index name, origin): unique, not partial
    pk_index = False
    for idx in indexes:
        name, is_unique, origin = idx[1], idx[2], idx[3] if len(idx) > 3 else ""
        partial = idx[4] if len(idx) > 4 else 0
        pk_index = pk_index or origin == "pk"
        if is_unique and not partial:
            candidates.append((str(name), str(origin)))
    shape = TableShape(table, columns, without_rowid, {}, pk_index)
    pk = shape.primary_key
    hint = key_hint or (pk[0].name if len(pk) == 1 else None)
    count_nulls = hint is not None and shape.column(hint) is not None \
        and not shape.declared_not_null(hint)
    # index_xinfo: (seqno, cid, name, desc, coll, key); key = 0 for the rowid it carries
    second = [Statement(f"PRAGMA index_xinfo({quote_ident(name)})") for name, _ in candidates]
    if count_nulls:
        second.append(_nulls_statement(table, str(hint)))
    answers = read_many(store, second) if second else []
    unique: dict[str, list[tuple[bool, str]]] = {}
    for (_, origin), cols in zip(candidates, answers, strict=False):
        keyed = [c for c in cols if c[5]]
        if len(keyed) == 1 and keyed[0][2] is not None:
            unique.setdefault(str(keyed[0][2]), []).append(
                (origin != "pk", str(keyed[0][4] or "BINARY").upper()))
    under = {col: tuple(dict.fromkeys(coll for _, coll in sorted(found)))
             for col, found in unique.items()}
    nulls = {str(hint): int(answers[-1][0][0])} if count_nulls else {}
    return TableShape(table, columns, without_rowid, under, pk_index, nulls)


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
    table = shape.name
    if shape.column(column) is None:
        raise ConfigError(f"column {column!r} does not exist in table {table!r}")
    key = _key_column(store, shape, key_column)
    if key == column:
        raise ConfigError("the key column cannot be the encrypted column itself")
    return Target(table, column, key, shape.collation(key), shape.rowid_name)


@dataclass(frozen=True)
class PagedColumn:
    """A column listing ids (Durable Objects), paged by its own values: unique under
    `collation`, compared under it; `rowid` witnesses that paging reached every id."""

    table: str
    column: str
    collation: str | None
    rowid: str | None


def resolve_id_column(store: RowStore, table: str, column: str) -> PagedColumn:
    """An ids column must be unique by a constraint (NULLs are no ids, and are skipped):
    otherwise keyset paging could skip ids at a page boundary."""
    shape = table_shape(store, table)
    if shape is None:
        raise ConfigError(f"ids table {table!r} does not exist in {store.display_url}")
    if shape.column(column) is None:
        raise ConfigError(f"ids column {column!r} does not exist in table {table!r}")
    problem = _unsafe(shape, column)
    if problem:
        raise ConfigError(f"ids column {table}.{column} {problem}: paging it could skip ids. "
                          "Give it a primary key or a unique index (without WHERE).")
    return PagedColumn(shape.name, column, shape.collation(column), shape.rowid_name)


def _unsafe(shape: TableShape, name: str) -> str | None:
    """Why paging by `name` could skip rows because of its uniqueness (None: it cannot)."""
    if not shape.unique(name):
        return "is not unique by a constraint over the whole table"
    if shape.rowid_alias(name) or shape.collation(name):
        return None
    found = ", ".join(shape.unique_under.get(name, ()))
    return (f"is unique only under collation {found}, which SQLite does not build in "
            "(keyrotate could not compare keys under it)")


def _pages_safely(store: RowStore, shape: TableShape, name: str) -> bool:
    if _unsafe(shape, name):
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
        why = _unsafe(shape, asked) or "may hold NULL"
        raise ConfigError(f"key column {asked!r} of {shape.name!r} is not provably unique and "
                          f"NOT NULL over the whole table ({why}; it needs a primary key or a "
                          "unique index without WHERE, and no NULL): paging by it could skip "
                          "rows." + hint)
    return asked
