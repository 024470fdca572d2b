"""The checkpoint journal: which run is unfinished, where it stopped, what failed.

Every mutation is returned as Statements so the caller commits it in the same
transaction as the row writes it describes: after a crash, the journal and the data agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from keyrotate.db.own_schema import ensure_journal_schema, journal_exists
from keyrotate.db.base import RowStore, Statement, Target, Value
from keyrotate.timeutil import new_id, now_iso

COUNTERS = ("rows_scanned", "rows_rewritten", "rows_already_current", "rows_null",
            "rows_failed", "rows_conflicted")


@dataclass
class Counts:
    rows_scanned: int = 0
    rows_rewritten: int = 0
    rows_already_current: int = 0
    rows_null: int = 0
    rows_failed: int = 0
    rows_conflicted: int = 0

    def add(self, other: "Counts") -> None:
        for name in COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTERS}


@dataclass(frozen=True)
class RunIdentity:
    """What makes two invocations 'the same command' for resuming."""

    target: Target
    fmt: str
    mode: str
    old_kid: str
    new_kid: str


@dataclass
class RunState:
    run_id: str
    identity: RunIdentity
    resumed: bool
    has_cursor: bool = False
    last_key: Value = None
    counts: Counts = field(default_factory=Counts)
    seconds: float = 0.0


class Journal:
    def __init__(self, store: RowStore):
        self.store = store

    def open_run(self, ident: RunIdentity) -> RunState:
        """The unfinished run of the same command, or a new one (committed at once)."""
        ensure_journal_schema(self.store)
        t = ident.target
        rows = self.store.query(
            "SELECT r.run_id, c.has_cursor, c.last_key, c.seconds, "
            + ", ".join(f"c.{n}" for n in COUNTERS)
            + " FROM keyrotate_runs r JOIN keyrotate_checkpoints c USING (run_id) "
            "WHERE r.kind = 'reencrypt' AND r.target = ? AND r.key_column = ? AND r.format = ? "
            "AND r.mode = ? AND r.old_kid = ? AND r.new_kid = ? AND r.status = 'running' "
            "ORDER BY r.started_at DESC LIMIT 1",
            (t.name, t.key_column, ident.fmt, ident.mode, ident.old_kid, ident.new_kid))
        if rows:
            r = rows[0]
            counts = Counts(*[int(v) for v in r[4:]])
            return RunState(str(r[0]), ident, True, bool(r[1]), r[2], counts, float(r[3]))
        run_id = new_id("r")
        ts = now_iso()
        self.store.apply([], None, [
            Statement("INSERT INTO keyrotate_runs (run_id, kind, target, key_column, format, mode, "
                      "old_kid, new_kid, status, started_at) "
                      "VALUES (?, 'reencrypt', ?, ?, ?, ?, ?, ?, 'running', ?)",
                      (run_id, t.name, t.key_column, ident.fmt, ident.mode,
                       ident.old_kid, ident.new_kid, ts)),
            Statement("INSERT INTO keyrotate_checkpoints (run_id, updated_at) VALUES (?, ?)",
                      (run_id, ts)),
        ])
        return RunState(run_id, ident, False)

    @staticmethod
    def checkpoint(run: RunState, delta: Counts, seconds: float, last_key: Value | None,
                   failures: Sequence[tuple[Value, str]]) -> list[Statement]:
        """Statements recording one batch; commit them with the batch's row writes."""
        sets = ", ".join(f"{n} = {n} + ?" for n in COUNTERS)
        params: list[Any] = [getattr(delta, n) for n in COUNTERS]
        cursor_sql = ""
        if last_key is not None:
            cursor_sql = ", has_cursor = 1, last_key = ?, batches = batches + 1"
            params.append(last_key)
        stmts = [Statement(f"UPDATE keyrotate_checkpoints SET {sets}{cursor_sql}, seconds = ?, "
                           "updated_at = ? WHERE run_id = ?",
                           (*params, seconds, now_iso(), run.run_id))]
        for key, reason in failures:
            stmts.append(Statement(
                "INSERT OR REPLACE INTO keyrotate_row_failures (run_id, row_key, reason) "
                "VALUES (?, ?, ?)", (run.run_id, str(key), reason)))
        return stmts

    @staticmethod
    def finish(run: RunState, status: str) -> Statement:
        return Statement("UPDATE keyrotate_runs SET status = ?, finished_at = ? WHERE run_id = ?",
                         (status, now_iso(), run.run_id))


# --- reading the journal (the `runs` command) -------------------------------------------

RUN_COLUMNS = ("run_id", "kind", "target", "key_column", "format", "mode", "old_kid",
               "new_kid", "status", "started_at", "finished_at")


def list_runs(store: RowStore, run_id: str | None = None) -> list[dict[str, Any]]:
    """Runs, newest first, with their checkpoint counters; empty if no journal yet."""
    if not journal_exists(store):
        return []
    cols = ", ".join(f"r.{c}" for c in RUN_COLUMNS) + ", c.batches, c.seconds, " + ", ".join(
        f"c.{n}" for n in COUNTERS)
    where, params = ("WHERE r.run_id = ?", (run_id,)) if run_id else ("", ())
    rows = store.query(f"SELECT {cols} FROM keyrotate_runs r JOIN keyrotate_checkpoints c "
                       f"USING (run_id) {where} ORDER BY r.started_at DESC, r.run_id DESC",
                       params)
    names = RUN_COLUMNS + ("batches", "seconds") + COUNTERS
    return [dict(zip(names, r, strict=False)) for r in rows]


def run_failures(store: RowStore, run_id: str, limit: int = 1000) -> list[dict[str, str]]:
    rows = store.query("SELECT row_key, reason FROM keyrotate_row_failures WHERE run_id = ? "
                       "ORDER BY row_key LIMIT ?", (run_id, limit))
    return [{"id": r[0], "reason": r[1]} for r in rows]


def rewrap_runs_to(store: RowStore, target: str, new_kid: str) -> list[str]:
    """Earlier rewrap runs that moved rows of `target` to this same new key: those rows
    count as current for a fresh-dek run and keep the DEKs they had."""
    if not journal_exists(store):
        return []
    return [str(r[0]) for r in store.query(
        "SELECT run_id FROM keyrotate_runs WHERE kind = 'reencrypt' AND target = ? AND "
        "new_kid = ? AND mode = 'rewrap' ORDER BY started_at", (target, new_kid))]
