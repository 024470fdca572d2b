"""keyrotate's own schema (migrations/NNNN_name.sql), applied like any D1 migration but
recorded in its own ledger, keyrotate_migrations."""

from __future__ import annotations

import weakref
from pathlib import Path

from keyrotate.db.base import RowStore
from keyrotate.db.migration_ledger import applied, apply_one, discover, pending
from keyrotate.errors import StoreError, StoreUnavailable

LEDGER = "keyrotate_migrations"


def migrations_dir() -> Path:
    """Installed wheels carry them as keyrotate/_migrations; a checkout has migrations/."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_migrations", here.parent / "migrations"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("keyrotate's migrations folder is missing from the install")


_READY: "weakref.WeakSet[RowStore]" = weakref.WeakSet()


def ensure_journal_schema(store: RowStore) -> None:
    """Apply keyrotate's pending migrations, each with its ledger row in one transaction.
    Checked once per connection: every check costs requests on a d1:// database.

    A migration that fails because it is already there (a D1 answer lost and the request
    replayed by the client after it committed; two first runs at once) is fine: the ledger
    then lists it. A failure the ledger does not explain but that looks like that race is
    resumable (exit 3), never a usage error."""
    if store in _READY:
        return
    for migration in pending(store, discover(migrations_dir()), LEDGER):
        try:
            apply_one(store, migration, LEDGER)
        except StoreError as e:
            if migration.name in applied(store, LEDGER):
                continue
            if any(sign in str(e).lower() for sign in _ALREADY_THERE):
                raise StoreUnavailable(f"keyrotate's own tables changed under it while it "
                                       f"created them ({migration.name})") from None
            raise
    _READY.add(store)


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
