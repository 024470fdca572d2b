"""The checkpoint journal: which run is unfinished, where it stopped, what failed.

Every mutation is returned as Statements so the caller commits it in the same
transaction as the row writes it describes: after a crash, the journal and the data agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from keyrotate.db.base import RowStore, Statement, Target, Value, read_many
from keyrotate.db.own_schema import ensure_journal_schema, journal_exists
from keyrotate.errors import ConfigError
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
    seq: int = 0            # checkpoints committed; each one applies only at its own seq
    superseded: list[str] = field(default_factory=list)  # runs this one took over


@dataclass(frozen=True)
class _Unfinished:
    run_id: str
    key_column: str
    fmt: str
    mode: str
    old_kid: str
    new_kid: str
    started_at: str

    def same_command(self, ident: RunIdentity) -> bool:
        return (self.key_column, self.fmt, self.mode, self.old_kid, self.new_kid) == (
            ident.target.key_column, ident.fmt, ident.mode, ident.old_kid, ident.new_kid)


@dataclass(frozen=True)
class RunPlan:
    resume: str | None              # the run to continue, or None for a new one
    supersede: list[_Unfinished]    # unfinished runs this one retires


class Journal:
    def __init__(self, store: RowStore):
        self.store = store

    def plan_run(self, ident: RunIdentity) -> "RunPlan":
        """Which run this command continues, and which unfinished runs it retires. Reads
        only, so a refusal changes nothing."""
        ensure_journal_schema(self.store)
        return self.plan_from(ident, *read_many(self.store, self.plan_reads(ident)))

    @staticmethod
    def plan_reads(ident: RunIdentity) -> list[Statement]:
        """What plan_from needs: the target's unfinished runs, and its latest run."""
        t = ident.target
        return [Statement("SELECT run_id, key_column, format, mode, old_kid, new_kid, started_at "
                          "FROM keyrotate_runs WHERE kind = 'reencrypt' AND target = ? AND "
                          "status = 'running' ORDER BY started_at DESC, run_id DESC", (t.name,)),
                Statement("SELECT run_id FROM keyrotate_runs WHERE kind = 'reencrypt' AND "
                          "target = ? ORDER BY started_at DESC, run_id DESC LIMIT 1", (t.name,))]

    @staticmethod
    def plan_from(ident: RunIdentity, unfinished_rows: Sequence[Sequence[Any]],
                  latest_rows: Sequence[Sequence[Any]]) -> "RunPlan":
        """The plan, from plan_reads' answers.

        Another unfinished run on the target is taken over only if this run's keys open
        everything it wrote (its new key is this run's old or new key); otherwise the
        target would end split between keys, so this refuses. A run that a later run
        overtook is never resumed: rows behind its cursor may have moved since.
        """
        t = ident.target
        unfinished = [_Unfinished(*map(str, r)) for r in unfinished_rows]
        same = next((u for u in unfinished if u.same_command(ident)), None)
        others = [u for u in unfinished if u is not same]
        for u in others:
            if u.new_kid not in (ident.old_kid, ident.new_kid):
                raise ConfigError(
                    f"run {u.run_id} on {t.name} is unfinished: it was moving rows from key "
                    f"{u.old_kid} to key {u.new_kid}, which this run (key {ident.old_kid} -> "
                    f"{ident.new_kid}) cannot open. Finish it first (the same command with the "
                    f"new key of kid {u.new_kid}), then rotate on. Nothing was changed.")
        if same is not None:
            if latest_rows and str(latest_rows[0][0]) == same.run_id:
                return RunPlan(same.run_id, others)   # every other unfinished run is older
            others.append(same)  # overtaken: rows behind its cursor may have moved since
        return RunPlan(None, others)

    def start_run(self, ident: RunIdentity, plan: "RunPlan") -> RunState:
        """Carry out a plan: retire what it retires, then resume or begin (committed)."""
        ts = now_iso()
        retired = [u.run_id for u in plan.supersede]
        if plan.resume is not None:
            if plan.supersede:
                self.store.apply([], None, _superseded(plan.supersede, ts))
            return self._resume(plan.resume, ident, retired)
        run = RunState(new_id("r"), ident, False, superseded=retired)
        self.store.apply([], None, [*_superseded(plan.supersede, ts), *Journal.begin(run)])
        return run

    @staticmethod
    def begin(run: RunState) -> list[Statement]:
        """A new run's rows (commit them with its first batch: a run that finds nothing to
        write need not write itself down)."""
        t, ident, ts = run.identity.target, run.identity, now_iso()
        return [Statement("INSERT INTO keyrotate_runs (run_id, kind, target, key_column, format, "
                          "mode, old_kid, new_kid, status, started_at) "
                          "VALUES (?, 'reencrypt', ?, ?, ?, ?, ?, ?, 'running', ?)",
                          (run.run_id, t.name, t.key_column, ident.fmt, ident.mode,
                           ident.old_kid, ident.new_kid, ts)),
                Statement("INSERT INTO keyrotate_checkpoints (run_id, updated_at) VALUES (?, ?)",
                          (run.run_id, ts))]

    def open_run(self, ident: RunIdentity) -> RunState:
        return self.start_run(ident, self.plan_run(ident))

    def _resume(self, run_id: str, ident: RunIdentity, superseded: list[str]) -> RunState:
        r = self.store.query(
            "SELECT has_cursor, last_key, seconds, seq, " + ", ".join(COUNTERS)
            + " FROM keyrotate_checkpoints WHERE run_id = ?", (run_id,))[0]
        return RunState(run_id, ident, True, bool(r[0]), r[1], Counts(*[int(v) for v in r[4:]]),
                        float(r[2]), int(r[3]), superseded)

    @staticmethod
    def checkpoint(run: RunState, delta: Counts, seconds: float, last_key: Value | None,
                   failures: Sequence[tuple[Value, str]]) -> list[Statement]:
        """Statements recording one batch; commit them with the batch's row writes. The
        update applies only at the run's current seq, so a replayed batch counts once."""
        sets = ", ".join(f"{n} = {n} + ?" for n in COUNTERS)
        params: list[Any] = [getattr(delta, n) for n in COUNTERS]
        cursor_sql = ""
        if last_key is not None:
            cursor_sql = ", has_cursor = 1, last_key = ?, batches = batches + 1"
            params.append(last_key)
        stmts = [Statement(f"UPDATE keyrotate_checkpoints SET {sets}{cursor_sql}, seconds = ?, "
                           "updated_at = ?, seq = seq + 1 WHERE run_id = ? AND seq = ?",
                           (*params, seconds, now_iso(), run.run_id, run.seq))]
        run.seq += 1
        for key, reason in failures:
            stmts.append(Statement(
                "INSERT OR REPLACE INTO keyrotate_row_failures (run_id, row_key, key_value, reason) "
                "VALUES (?, ?, ?, ?)", (run.run_id, str(key), key, reason)))
        return stmts

    @staticmethod
    def finish(run: RunState, status: str) -> Statement:
        return Statement("UPDATE keyrotate_runs SET status = ?, finished_at = ? WHERE run_id = ?",
                         (status, now_iso(), run.run_id))


def _superseded(runs: list[_Unfinished], ts: str) -> list[Statement]:
    return [Statement("UPDATE keyrotate_runs SET status = 'superseded', finished_at = ? "
                      "WHERE run_id = ? AND status = 'running'", (ts, u.run_id)) for u in runs]


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
                       "ORDER BY key_value, row_key LIMIT ?", (run_id, limit))
    return [{"id": r[0], "reason": r[1]} for r in rows]


def rewrap_runs_to(store: RowStore, target: str, new_kid: str) -> list[str]:
    """Earlier rewrap runs that moved rows of `target` to this same new key: those rows
    count as current for a fresh-dek run and keep the DEKs they had."""
    if not journal_exists(store):
        return []
    return [str(r[0]) for r in store.query(
        "SELECT run_id FROM keyrotate_runs WHERE kind = 'reencrypt' AND target = ? AND "
        "new_kid = ? AND mode = 'rewrap' ORDER BY started_at", (target, new_kid))]
