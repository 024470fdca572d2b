"""keyrotate's own schema (migrations/NNNN_name.sql), applied like any D1 migration but
recorded in its own ledger, keyrotate_migrations."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path

from keyrotate.db.base import RowStore, Statement, read_many
from keyrotate.db.migration_ledger import applied, discover, ledger_ddl, migration_statements
from keyrotate.errors import StoreError, StoreUnavailable

LEDGER = "keyrotate_migrations"


def migrations_dir() -> Path:
    """Installed wheels carry them as keyrotate/_migrations; a checkout has migrations/."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_migrations", here.parent / "migrations"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("keyrotate's migrations folder is missing from the install")


OWN_TABLES = Statement("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE "
                       "'keyrotate\\_%' ESCAPE '\\'")
_APPLIED = Statement(f"SELECT name FROM {LEDGER} ORDER BY id")


@dataclass(frozen=True)
class OwnSchema:
    """keyrotate's tables as this command found and left them."""

    tables: frozenset[str]        # after the pending migrations ran
    created: frozenset[str]       # made by this command: they hold nothing yet
    migrated: bool = False        # this command applied migrations


_KNOWN: "weakref.WeakKeyDictionary[RowStore, OwnSchema]" = weakref.WeakKeyDictionary()


def ensure_journal_schema(store: RowStore,
                          answers: list[list[tuple[object, ...]]] | None = None) -> None:
    """Apply keyrotate's pending migrations, each with its ledger row, all in one
    transaction. Checked once per connection: every check costs requests on a d1://
    database, so the ledger and keyrotate's table names come in one read (one request;
    on a database without the ledger that read fails, every migration is pending, and
    they follow in one more), and what it learnt is kept for `own_table`. `answers`:
    schema_reads() already made (with other reads, in the same request).

    Migrations that fail because they are already there (a D1 answer lost and the request
    replayed by the client after it committed; two first runs at once) are fine: the
    ledger then lists them. A failure the ledger does not explain but that looks like that
    race is resumable (exit 3), never a usage error."""
    if store in _KNOWN:
        return
    if answers is None:
        try:
            answers = read_many(store, schema_reads())
        except StoreError as e:
            if "no such table" not in str(e):
                raise
            answers = [[], []]   # no ledger: every migration is pending
    applied_rows, table_rows = answers
    before = frozenset(str(r[0]) for r in table_rows)
    done = {str(r[0]) for r in applied_rows}
    todo = [m for m in discover(migrations_dir()) if m.name not in done]
    after = before
    if todo:
        statements = [Statement(ledger_ddl(LEDGER))]
        for migration in todo:
            statements += migration_statements(migration, LEDGER)
        try:
            after = frozenset(str(r[0]) for r in _apply_then_read(store, statements, OWN_TABLES))
        except StoreError as e:
            if all(m.name in set(applied(store, LEDGER)) for m in todo):
                after = frozenset(str(r[0]) for r in store.query(OWN_TABLES.sql))
            elif any(sign in str(e).lower() for sign in _ALREADY_THERE):
                raise StoreUnavailable("keyrotate's own tables changed under it while it "
                                       "created them") from None
            else:
                raise
    _KNOWN[store] = OwnSchema(after, after - before, bool(todo))


def schema_reads() -> list[Statement]:
    """What ensure_journal_schema reads first, for a caller that batches it with its own
    reads (they fail together on a database without keyrotate's tables)."""
    return [_APPLIED, OWN_TABLES]


def schema_known(store: RowStore) -> OwnSchema | None:
    """The schema as checked on this connection (None: not yet)."""
    return _KNOWN.get(store)


def _apply_then_read(store: RowStore, statements: list[Statement],
                     read: Statement) -> list[tuple[object, ...]]:
    exchange = getattr(store, "exchange", None)
    if exchange is not None:   # one request
        return exchange([], None, statements, [read])[1][0]  # type: ignore[no-any-return]
    store.apply([], None, statements)
    return store.query(read.sql, read.params)


def own_table(store: RowStore, name: str) -> str | None:
    """What this command knows of one of keyrotate's tables without asking: "absent",
    "created" (by this command: empty) or "present"; None when the schema was not
    checked on this connection."""
    known = _KNOWN.get(store)
    if known is None:
        return None
    if name not in known.tables:
        return "absent"
    return "created" if name in known.created else "present"


# what a migration applied twice fails with
_ALREADY_THERE = ("unique constraint", "duplicate column", "already exists")


def journal_exists(store: RowStore) -> bool:
    rows = store.query("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?",
                       ("keyrotate_runs",))
    return bool(rows)


# a rotation in one of these states may still change what the Workers hold
OPEN_STATES = ("in-progress", "awaiting-finish", "aborting")


def open_rotations(store: RowStore, env: str) -> list[tuple[str, str, str]]:
    """(secret, rotation id, state) of every open rotation of the environment."""
    marks = ", ".join("?" * len(OPEN_STATES))
    return [(str(r[0]), str(r[1]), str(r[2])) for r in store.query(
        f"SELECT secret, rotation_id, state FROM keyrotate_rotations WHERE environment = ? "
        f"AND state IN ({marks})", (env, *OPEN_STATES))]
