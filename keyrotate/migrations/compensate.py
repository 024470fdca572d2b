"""Write the compensating migration that undoes a forward D1 migration.

D1 migrations are forward-only, so an undo is a new migration. The schema before FILE
comes from replaying the folder's earlier migrations into an in-memory SQLite; the
schema after, from replaying FILE on top. The difference is undone in reverse:
triggers, views and indexes FILE added are dropped, tables it created are dropped,
columns it added are dropped where SQLite's DROP COLUMN can (3.35+; not a primary-key,
unique, indexed, foreign-key or CHECK-referenced column), and any other changed table
is rebuilt to its earlier definition keeping the data of the columns it had (in an order
D1's enforced foreign keys accept: see _rebuild). What
cannot be undone (dropped tables or columns, data changes) is restored in shape only
and flagged with a WARNING in the file and on stderr.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keyrotate.config.context import Context
from keyrotate.db.base import quote_ident
from keyrotate.db.migration_ledger import Migration, discover, split_sql
from keyrotate.errors import ConfigError
from keyrotate.evidence.event import Event
from keyrotate.evidence.record import audit_trail

DROP_COLUMN_MIN = (3, 35, 0)


@dataclass
class Table:
    name: str
    sql: str
    columns: list[tuple] = field(default_factory=list)  # PRAGMA table_xinfo rows
    indexes: dict[str, str] = field(default_factory=dict)  # name -> CREATE INDEX sql
    index_columns: dict[str, set[str]] = field(default_factory=dict)  # every index, autoindexes too
    fk_columns: set[str] = field(default_factory=set)

    @property
    def column_names(self) -> list[str]:
        return [c[1] for c in self.columns]


@dataclass
class Schema:
    tables: dict[str, Table]
    views: dict[str, str]
    triggers: dict[str, tuple[str, str]]  # name -> (table, sql)


def read_schema(conn: sqlite3.Connection) -> Schema:
    tables: dict[str, Table] = {}
    views, triggers = {}, {}
    for type_, name, tbl, sql in conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' "
            "AND name != 'd1_migrations' AND substr(name, 1, 4) != '_cf_' ORDER BY rowid"):
        if type_ == "table":
            t = Table(name, sql, conn.execute(f"PRAGMA table_xinfo({quote_ident(name)})").fetchall())
            t.fk_columns = {r[3] for r in conn.execute(f"PRAGMA foreign_key_list({quote_ident(name)})")}
            tables[name] = t
        elif type_ == "view":
            views[name] = sql
        elif type_ == "trigger":
            triggers[name] = (tbl, sql)
    for name, tbl, sql in conn.execute(
            "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index'"):
        if tbl in tables:
            cols = {r[2] for r in conn.execute(f"PRAGMA index_info({quote_ident(name)})") if r[2]}
            tables[tbl].index_columns[name] = cols  # autoindexes too: UNIQUE / PRIMARY KEY
            if sql:  # explicit CREATE INDEX (autoindexes have no SQL)
                tables[tbl].indexes[name] = sql
    return Schema(tables, views, triggers)


def replay(migrations: list[Migration]) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    for m in migrations:
        for statement in split_sql(m.sql()):
            try:
                conn.execute(statement)
            except sqlite3.Error as e:
                raise ConfigError(f"replaying {m.name} failed: {e}") from None
    return conn


@dataclass
class Compensation:
    name: str
    sql: str
    warnings: list[str]


def compensate(file: Path, sqlite_version: tuple[int, ...] | None = None) -> Compensation:
    """The compensating migration for FILE (not written yet)."""
    folder = file.resolve().parent
    all_migrations = discover(folder)
    target = next((m for m in all_migrations if m.path.resolve() == file.resolve()), None)
    if target is None:
        raise ConfigError(f"{file} is not a NNNN_name.sql migration of {folder}")
    earlier = [m for m in all_migrations if m.number < target.number]
    before = read_schema(replay(earlier))
    # a rename is undone by a rename (a rebuild would lose the renamed data): those go
    # first, and the rest is what differs once they are undone
    renames_back = _renames_back(target, set(before.tables))
    after_conn = replay(earlier + [target])
    for sql in renames_back:
        after_conn.execute(sql)
    after = read_schema(after_conn)
    version = sqlite_version or tuple(int(x) for x in sqlite3.sqlite_version.split("."))
    body, warnings = _undo(before, after, target, version)
    if renames_back:
        body = ["-- undo the renames", *renames_back,
                *([] if body == [NOTHING] else body)]
    number = max(m.number for m in all_migrations) + 1
    stem = re.sub(r"^\d{4}_", "", target.name)[:-4]
    name = f"{number:04d}_rollback_{stem}.sql"
    header = [f"-- Compensating migration for {target.name}, written by keyrotate.",
              "-- Apply it to staging first, check, then production."]
    header += [f"-- WARNING: {w}" for w in warnings]
    return Compensation(name, "\n".join(header + [""] + body) + "\n", warnings)


def _undo(before: Schema, after: Schema, target: Migration,
          version: tuple[int, ...]) -> tuple[list[str], list[str]]:
    out: list[str] = []
    warnings: list[str] = []
    created_here = set(after.tables) - set(before.tables)

    statements = [_strip(s).strip() for s in split_sql(target.sql())]
    made_here = {_ident(m).lower() for s in statements
                 if (m := re.match(r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?" + _NAME, s, re.I))}
    for stmt in statements:
        m = _data_change(stmt)
        if m and _ident(m, 2).lower() not in made_here:  # filling a table it builds is no change
            warnings.append(f"{target.name} changes data ({m.group(1).split()[0].upper()} on "
                            f"{_ident(m, 2)}); that cannot be undone here")

    for name in after.triggers:
        if name not in before.triggers or before.triggers[name] != after.triggers[name]:
            out.append(f"DROP TRIGGER IF EXISTS {quote_ident(name)};")
    for name, sql in after.views.items():
        if before.views.get(name) != sql:
            out.append(f"DROP VIEW IF EXISTS {quote_ident(name)};")

    rebuilt: list[str] = []
    for name, table in after.tables.items():
        old = before.tables.get(name)
        if old is None:
            continue
        for idx, sql in table.indexes.items():
            if old.indexes.get(idx) != sql:
                out.append(f"DROP INDEX IF EXISTS {quote_ident(idx)};")
        if _same_table(old, table):
            continue
        added = _only_added_columns(old, table)
        staying = {c for idx, cols in table.index_columns.items()
                   if idx.startswith("sqlite_autoindex") or old.indexes.get(idx) == table.indexes.get(idx)
                   for c in cols}
        if added is not None and all(_droppable(table, c, after, version, staying) for c in added):
            for c in reversed(added):
                out.append(f"ALTER TABLE {quote_ident(name)} DROP COLUMN {quote_ident(c)};")
        else:
            lost = [c for c in old.column_names if c not in table.column_names]
            if lost:
                warnings.append(f"{target.name} dropped column(s) {', '.join(lost)} of {name}: "
                                "they come back empty (NULL or their default); the data is gone")
            out += _rebuild(old, table)
            rebuilt.append(name)

    dropped = [n for n in reversed(list(after.tables)) if n in created_here]  # children first
    if dropped:
        out.append("PRAGMA defer_foreign_keys = true;")
    for name in dropped:
        out.append(f"DROP TABLE IF EXISTS {quote_ident(name)};")

    for name, old in before.tables.items():
        if name not in after.tables:
            warnings.append(f"{target.name} dropped table {name}: it comes back empty; the data is gone")
            out.append(old.sql.rstrip(";") + ";")
            out += [sql.rstrip(";") + ";" for sql in old.indexes.values()]
        elif name not in rebuilt:
            current = after.tables[name]
            for idx, sql in old.indexes.items():
                if current.indexes.get(idx) != sql:
                    out.append(sql.rstrip(";") + ";")
    for name, sql in before.views.items():
        if after.views.get(name) != sql:
            out.append(sql.rstrip(";") + ";")
    for name, (tbl, sql) in before.triggers.items():
        if after.triggers.get(name) != (tbl, sql) or tbl in rebuilt:  # a rebuild drops them
            out.append(sql.rstrip(";") + ";")
    if not out:
        out.append(NOTHING)
    return out, warnings


# a table name: "quoted", `quoted`, [quoted] or bare, optionally after a schema name
_NAME = r'(?:(?:"[^"]+"|`[^`]+`|\[[^\]]+\]|\w+)\s*\.\s*)?("[^"]+"|`[^`]+`|\[[^\]]+\]|\w+)'
_DATA_CHANGE = re.compile(r"(INSERT\s+(?:OR\s+\w+\s+)?INTO|REPLACE\s+INTO|UPDATE(?:\s+OR\s+\w+)?|"
                          r"DELETE\s+FROM)\s+" + _NAME, re.I)
_RENAME_TABLE = re.compile(r"ALTER\s+TABLE\s+" + _NAME + r"\s+RENAME\s+TO\s+" + _NAME + r"\s*;?$", re.I)
_RENAME_COLUMN = re.compile(r"ALTER\s+TABLE\s+" + _NAME + r"\s+RENAME\s+(?:COLUMN\s+)?" + _NAME
                            + r"\s+TO\s+" + _NAME + r"\s*;?$", re.I)
NOTHING = "-- nothing to undo: the schema before and after is the same"


def _ident(m: re.Match[str], group: int = 1) -> str:
    """The name a _NAME group matched, quotes removed."""
    raw = m.group(group)
    return raw[1:-1] if raw[0] in "\"`[" else raw


def _data_change(stmt: str) -> re.Match[str] | None:
    """INSERT / REPLACE / UPDATE / DELETE, also after a WITH clause (a CTE)."""
    if re.match(r"WITH\b", stmt, re.I):
        return next((m for m in _DATA_CHANGE.finditer(stmt)), None)
    return _DATA_CHANGE.match(stmt)


def _renames_back(target: Migration, existing: set[str]) -> list[str]:
    """ALTER TABLE ... RENAME statements that undo FILE's renames of tables that existed
    before it (`existing`), last first. A table FILE creates and then renames into place
    (the rebuild pattern) is not renamed back: the rebuild is undone as a change."""
    back = []
    pre = {name: True for name in existing}   # current name -> existed before FILE
    for stmt in (_strip(s).strip() for s in split_sql(target.sql())):
        if m := re.match(r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?" + _NAME, stmt, re.I):
            pre.setdefault(_ident(m), False)
        elif m := _RENAME_COLUMN.match(stmt):
            table, old, new = _ident(m, 1), _ident(m, 2), _ident(m, 3)
            if pre.get(table):
                back.append(f"ALTER TABLE {quote_ident(table)} RENAME COLUMN {quote_ident(new)} "
                            f"TO {quote_ident(old)};")
        elif m := _RENAME_TABLE.match(stmt):
            old, new = _ident(m, 1), _ident(m, 2)
            pre[new] = pre.pop(old, False)
            if pre[new]:
                back.append(f"ALTER TABLE {quote_ident(new)} RENAME TO {quote_ident(old)};")
        elif m := re.match(r"DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?" + _NAME, stmt, re.I):
            pre.pop(_ident(m), None)
    return back[::-1]


def _strip(sql: str) -> str:
    return re.sub(r"--[^\n]*|/\*.*?\*/", "", sql, flags=re.S)


def _same_table(a: Table, b: Table) -> bool:
    return _norm(a.sql) == _norm(b.sql)


def _norm(sql: str) -> str:
    return re.sub(r"\s+", " ", sql.strip().rstrip(";")).lower()


def _only_added_columns(old: Table, new: Table) -> list[str] | None:
    """Names of columns appended by ADD COLUMN, if that is the only change."""
    n = len(old.columns)
    if [c[1:] for c in new.columns[:n]] != [c[1:] for c in old.columns]:
        return None
    head = re.sub(r",?\s*$", "", _norm(old.sql)[:-1]) if _norm(old.sql).endswith(")") else None
    if head is None or not _norm(new.sql).startswith(head):
        return None  # a constraint changed too: rebuild
    return [c[1] for c in new.columns[n:]]


def _droppable(table: Table, column: str, schema: Schema, version: tuple[int, ...],
               indexed: set[str]) -> bool:
    """SQLite refuses DROP COLUMN on these (and before 3.35 altogether). `indexed`: columns
    of the indexes that remain once the compensation has dropped the ones FILE added."""
    if version < DROP_COLUMN_MIN:
        return False
    info = next(c for c in table.columns if c[1] == column)
    if info[5] or column in indexed or column in table.fk_columns:
        return False
    word = re.compile(rf"\b{re.escape(column)}\b", re.I)
    definition = _column_definition(table.sql, column)
    if re.search(r"\bunique\b|\breferences\b|\bgenerated\b|\bas\s*\(", definition, re.I):
        return False
    rest = _norm(table.sql).replace(_norm(definition), "")
    if re.search(r"\bcheck\b", rest) and word.search(rest):
        return False  # named in another CHECK constraint
    for sql in list(schema.views.values()) + [s for _, s in schema.triggers.values()]:
        if word.search(sql):
            return False  # conservative: a view or trigger naming it would break
    return True


def _column_definition(table_sql: str, column: str) -> str:
    """The text of one column's definition in CREATE TABLE (or ALTER ... ADD COLUMN form)."""
    body = table_sql[table_sql.index("(") + 1:table_sql.rindex(")")]
    depth, start, parts = 0, 0, []
    for i, ch in enumerate(body):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    for p in parts:
        first = p.strip().split(None, 1)[0].strip('"`[]') if p.strip() else ""
        if first.lower() == column.lower():
            return p.strip()
    return ""


def _rebuild(old: Table, new: Table) -> list[str]:
    """Rebuild `new` back to `old`'s definition, keeping the data of the columns both have.

    Not the classic copy-to-new / DROP / RENAME: under enforced foreign keys (D1 always
    enforces them) the DROP's implicit delete is counted as a deferred violation by every
    referencing row, and a RENAME never uncounts it, so the commit fails. Re-inserting the
    rows into the recreated table does uncount them: copy aside, DROP, CREATE (the old
    text, verbatim), INSERT back, drop the copy.
    """
    copy = f"_keyrotate_copy_{old.name}"
    keep = [c for c in old.column_names if c in new.column_names]
    # (cid, name, type, notnull, default, pk, hidden): a NOT NULL column without a default
    # that the table no longer has cannot be refilled: the INSERT back would fail
    unfillable = [c[1] for c in old.columns if c[1] not in keep and c[3] and c[4] is None
                  and not (c[5] and c[2].upper() == "INTEGER")]
    if unfillable:
        raise ConfigError(f"cannot write a compensation that restores {old.name}: its column(s) "
                          f"{', '.join(unfillable)} were NOT NULL without a default and the "
                          "migration removed them, so the rows cannot be put back. Write this "
                          "compensating migration by hand (nothing was written).")
    cols = ", ".join(quote_ident(c) for c in keep)
    return [f"-- rebuild {old.name} to its definition before this change, keeping its data",
            "PRAGMA defer_foreign_keys = true;",
            f"CREATE TABLE {quote_ident(copy)} AS SELECT {cols} FROM {quote_ident(old.name)};",
            f"DROP TABLE {quote_ident(old.name)};",
            old.sql.rstrip(";") + ";",
            f"INSERT INTO {quote_ident(old.name)} ({cols}) SELECT {cols} FROM {quote_ident(copy)};",
            f"DROP TABLE {quote_ident(copy)};",
            *[sql.rstrip(";") + ";" for sql in old.indexes.values()]]


@dataclass(frozen=True)
class CompensateResult:
    written: Path
    warnings: list[str]
    exit_code: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"written": str(self.written), "warnings": self.warnings}

    def text(self) -> str:
        return f"wrote {self.written}"


def write_compensation(file: Path, ctx: Context | None = None) -> CompensateResult:
    """The compensating migration, written beside FILE; with an environment, recorded in
    its trail (the file's name and SHA-256: `migrations apply` records running it)."""
    comp = compensate(file)
    out = file.resolve().parent / comp.name
    if out.exists():
        raise ConfigError(f"{out} exists already")
    out.write_text(comp.sql)
    if ctx is not None:
        audit_trail(ctx).append(Event(
            "schema.compensation", ctx.env.name, f"wrote {out.name}, which undoes {file.name}",
            detail={"undoes": file.name, "written": out.name, "warnings": comp.warnings,
                    "sha256": hashlib.sha256(comp.sql.encode()).hexdigest()}))
    return CompensateResult(out, comp.warnings)
