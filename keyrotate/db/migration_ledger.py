"""Forward-only migrations, recorded exactly as wrangler records D1 migrations.

A folder holds NNNN_name.sql files; the ledger table (`d1_migrations` for the
application, `keyrotate_migrations` for keyrotate's own journal tables) has wrangler's
shape, and a migration's statements and its ledger row go in one batch (one transaction),
so a database migrated by keyrotate is migrated for `wrangler d1 migrations` and back.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from keyrotate.db.base import RowStore, Statement, quote_ident
from keyrotate.errors import ConfigError

MIGRATION_FILE = re.compile(r"^(\d{4})_([A-Za-z0-9_\-]+)\.sql$")
D1_LEDGER = "d1_migrations"


@dataclass(frozen=True)
class Migration:
    name: str       # the file name, as wrangler records it
    number: int
    path: Path

    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


def discover(folder: Path) -> list[Migration]:
    if not folder.is_dir():
        raise ConfigError(f"migrations folder not found: {folder}")
    found = []
    for p in sorted(folder.iterdir()):
        m = MIGRATION_FILE.match(p.name)
        if m:
            found.append(Migration(p.name, int(m.group(1)), p))
    return found


def split_sql(script: str) -> list[str]:
    """Statements of a script: semicolons inside strings, comments and trigger bodies
    do not split (sqlite3.complete_statement decides where a statement ends)."""
    statements, buffer = [], ""
    for piece in script.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            text = _strip_comments(buffer).strip()
            if text.rstrip(";").strip():
                statements.append(buffer.strip())
            buffer = ""
    if _strip_comments(buffer).strip(" \n\t;"):
        raise ConfigError("the SQL ends with an unfinished statement")
    return statements


def _strip_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*|/\*.*?\*/", "", sql, flags=re.S)


def ledger_ddl(table: str) -> str:
    """wrangler's own DDL for the migrations table (wrangler 4.86 d1 migrations)."""
    return (f"CREATE TABLE IF NOT EXISTS {quote_ident(table)}(\n"
            "\t\tid         INTEGER PRIMARY KEY AUTOINCREMENT,\n"
            "\t\tname       TEXT UNIQUE,\n"
            "\t\tapplied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL\n)")


def applied(store: RowStore, table: str = D1_LEDGER) -> list[str]:
    exists = store.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
    if not exists:
        return []
    return [str(r[0]) for r in store.query(f"SELECT name FROM {quote_ident(table)} ORDER BY id")]


def pending(store: RowStore, migrations: list[Migration], table: str = D1_LEDGER) -> list[Migration]:
    done = set(applied(store, table))
    return [m for m in migrations if m.name not in done]


def migration_statements(migration: Migration, table: str = D1_LEDGER) -> list[Statement]:
    """The migration's statements and its ledger row, to run in one transaction."""
    statements = [Statement(s) for s in split_sql(migration.sql())]
    statements.append(Statement(f"INSERT INTO {quote_ident(table)} (name) VALUES (?)", (migration.name,)))
    return [Statement(ledger_ddl(table)), *statements]


def apply_one(store: RowStore, migration: Migration, table: str = D1_LEDGER) -> None:
    """The migration's statements and its ledger row, in one transaction."""
    store.apply([], None, migration_statements(migration, table))
