"""keyrotate's own schema (migrations/NNNN_name.sql), applied once per database."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

from keyrotate.store.base import RowStore, Statement

_NAME = re.compile(r"^(\d{4})_[A-Za-z0-9_]+\.sql$")
LEDGER = "keyrotate_migrations"


def migrations_dir() -> Path:
    """Installed wheels carry them as keyrotate/_migrations; a checkout has migrations/."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_migrations", here.parent / "migrations"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("keyrotate's migrations folder is missing from the install")


def own_migrations() -> list[tuple[str, str]]:
    """(name, sql) in order."""
    files = sorted(p for p in migrations_dir().iterdir() if _NAME.match(p.name))
    return [(p.name, p.read_text()) for p in files]


def split_sql(script: str) -> list[str]:
    """Statements of a migration file (no semicolons inside our own literals)."""
    lines = [ln for ln in script.splitlines() if not ln.strip().startswith("--")]
    text = "\n".join(ln.split("--", 1)[0] if "--" in ln else ln for ln in lines)
    return [s.strip() for s in text.split(";") if s.strip()]


def ensure_journal_schema(store: RowStore) -> None:
    """Apply keyrotate's pending migrations; each with its ledger row in one transaction."""
    store.apply([], None, [Statement(
        f"CREATE TABLE IF NOT EXISTS {LEDGER} (id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "name TEXT UNIQUE NOT NULL, applied_at TEXT NOT NULL)")])
    done = {r[0] for r in store.query(f"SELECT name FROM {LEDGER}")}
    for name, sql in own_migrations():
        if name in done:
            continue
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        stmts = [Statement(s) for s in split_sql(sql)]
        stmts.append(Statement(f"INSERT OR IGNORE INTO {LEDGER} (name, applied_at) VALUES (?, ?)",
                               (name, now)))
        store.apply([], None, stmts)


def journal_exists(store: RowStore) -> bool:
    rows = store.query("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?",
                       ("keyrotate_runs",))
    return bool(rows)
