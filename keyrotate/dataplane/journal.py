"""The checkpoint journal: which run is unfinished, where it stopped, what failed.

Every mutation is returned as Statements so the caller commits it in the same
transaction as the row writes it describes: after a crash, the journal and the data agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from keyrotate.db.base import ReadAhead, RowStore, Statement, Target, Value, display_key
from keyrotate.db.own_schema import ensure_journal_schema, journal_exists
from keyrotate.errors import ConfigError, StoreError
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
    also_old: tuple[str, ...] = ()   # more old keys the run opens (not part of the identity)

    def opens(self) -> set[str]:
        """The key ids whose rows this run can open."""
        return {self.old_kid, self.new_kid, *self.also_old} - {"-"}


# A run ended in one of these went over the whole table: completed and
# completed_with_failures were proven by their census; rewritten passed every row and
# left the proof to its caller (a rotation's verify step, taken right after). superseded:
# retired by a later run that took over its rows. Any other status (running: killed or
# interrupted; incomplete: exit 3) is unfinished: rows may sit under either of its keys.
FINISHED = ("completed", "completed_with_failures", "rewritten")
SETTLED = (*FINISHED, "superseded")


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
    ahead: ReadAhead = field(default_factory=ReadAhead)  # reads made with its start


@dataclass(frozen=True)
class _Unfinished:
    run_id: str
    key_column: str
    fmt: str
    mode: str
    old_kid: str
    new_kid: str
    started_at: str

    status: str = "running"

    def same_command(self, ident: RunIdentity) -> bool:
        return (self.key_column, self.fmt, self.mode, self.old_kid, self.new_kid) == (
            ident.target.key_column, ident.fmt, ident.mode, ident.old_kid, ident.new_kid)


@dataclass(frozen=True)
class RunPlan:
    resume: str | None              # the run to continue, or None for a new one
    supersede: list[_Unfinished]    # unfinished runs this one retires


def unfinished_runs(target: Target) -> Statement:
    """The unfinished reencrypt runs of `target`, newest first (Journal.plan_run). Runs
    recorded before targets were named as the schema spells them (table_shape) may carry
    another spelling of the same table and column: SQLite's names ignore ASCII case, and
    so does this guard."""
    settled = ", ".join(f"'{s}'" for s in SETTLED)
    finished = ", ".join(f"'{s}'" for s in FINISHED)
    return Statement(
        "SELECT run_id, key_column, format, mode, old_kid, new_kid, started_at, status FROM "
        "keyrotate_runs u WHERE kind = 'reencrypt' AND target = ? COLLATE NOCASE "
        f"AND status NOT IN ({settled}) AND NOT EXISTS (SELECT 1 FROM keyrotate_runs f WHERE "
        f"f.kind = 'reencrypt' AND f.target = u.target COLLATE NOCASE AND f.status IN "
        f"({finished}) AND (f.started_at > u.started_at OR (f.started_at = u.started_at AND "
        "f.run_id > u.run_id))) ORDER BY started_at DESC, run_id DESC", (target.name,))


class Journal:
    def __init__(self, store: RowStore):
        self.store = store

    def plan_run(self, ident: RunIdentity, create: bool = True,
                 ahead: ReadAhead = ReadAhead()) -> "RunPlan":
        """Which run this command continues, and which unfinished runs it retires. Reads
        only (`create`: keyrotate's own tables are made first), so a refusal changes
        nothing.

        An unfinished run (any run that did not end finished, see FINISHED, and started
        after the last run that did) may have left rows under its old key and under its
        new key. This run takes it over only if it opens both; otherwise the target would
        end split between keys, so this refuses. Only a `running` run of the same command
        is resumed (an incomplete one is started over: rows behind its cursor changed),
        and never one a later run overtook.
        """
        if create:
            ensure_journal_schema(self.store)
        t = ident.target
        lookup = unfinished_runs(t)
        unfinished = [_Unfinished(*map(str, r))
                      for r in ahead.query(self.store, lookup.sql, lookup.params)]
        same = next((u for u in unfinished if u.status == "running" and u.same_command(ident)),
                    None)
        others = [u for u in unfinished if u is not same]
        for u in others:
            stranded = {u.old_kid, u.new_kid} - {"-"} - ident.opens()
            if stranded:
                raise ConfigError(
                    f"run {u.run_id} on {t.name} is unfinished ({u.status}): it was moving rows "
                    f"from key {u.old_kid} to key {u.new_kid}, and this run (key "
                    f"{ident.old_kid} -> {ident.new_kid}) cannot open rows under key "
                    f"{', '.join(sorted(stranded))}: the table would end split between keys. "
                    f"Finish it first (the same command, old key of kid {u.old_kid}, new key "
                    f"of kid {u.new_kid}), then rotate on. Nothing was changed.")
        if same is not None:
            later = self.store.query(
                "SELECT 1 FROM keyrotate_runs WHERE kind = 'reencrypt' AND target = ? COLLATE NOCASE "
                "AND (started_at > ? OR (started_at = ? AND run_id > ?)) LIMIT 1",
                (t.name, same.started_at, same.started_at, same.run_id))
            if not later:  # every other unfinished run is older: resume, retiring those
                return RunPlan(same.run_id, others)
            others.append(same)  # overtaken: rows behind its cursor may have moved since
        return RunPlan(None, others)

    def start_run(self, ident: RunIdentity, plan: "RunPlan",
                  reads: Sequence[Statement] = ()) -> RunState:
        """Carry out a plan: retire what it retires, then resume or begin (committed). A
        new run's start carries `reads` (made after it, in its request, on stores that
        exchange writes for reads): their answers are the run's `ahead`."""
        ts = now_iso()
        retired = [u.run_id for u in plan.supersede]
        if plan.resume is not None:
            if plan.supersede:
                self.store.apply([], None, _superseded(plan.supersede, ts))
            return self._resume(plan.resume, ident, retired)
        t = ident.target
        run_id = new_id("r")
        start = [
            *_superseded(plan.supersede, ts),
            Statement("INSERT INTO keyrotate_runs (run_id, kind, target, key_column, format, "
                      "mode, old_kid, new_kid, status, started_at) "
                      "VALUES (?, 'reencrypt', ?, ?, ?, ?, ?, ?, 'running', ?)",
                      (run_id, t.name, t.key_column, ident.fmt, ident.mode,
                       ident.old_kid, ident.new_kid, ts)),
            Statement("INSERT INTO keyrotate_checkpoints (run_id, updated_at) VALUES (?, ?)",
                      (run_id, ts)),
        ]
        exchange = getattr(self.store, "exchange", None)
        ahead = ReadAhead()
        try:
            if exchange is not None and reads:
                ahead = ReadAhead(reads, exchange([], None, start, reads)[1])
            else:
                self.store.apply([], None, start)
        except StoreError:
            # a D1 answer lost after the commit: the client sent it again, and the replay
            # met the run it had already made (its id is new: nobody else has it)
            if not self.store.query("SELECT 1 FROM keyrotate_checkpoints WHERE run_id = ?",
                                    (run_id,)):
                raise
        return RunState(run_id, ident, False, superseded=retired, ahead=ahead)

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
                "VALUES (?, ?, ?, ?)", (run.run_id, display_key(key), key, reason)))
        return stmts

    def finished_as(self, run: RunState) -> tuple[Any, ...] | None:
        """The run's recorded status, when it finished and the seconds its last checkpoint
        counted: together they tell one end of the run from another (a run that took the
        lease over and resumed the same run). None: no such run."""
        rows = self.store.query(
            "SELECT r.status, r.finished_at, c.seconds FROM keyrotate_runs r JOIN "
            "keyrotate_checkpoints c ON c.run_id = r.run_id WHERE r.run_id = ?", (run.run_id,))
        return tuple(rows[0]) if rows else None

    @staticmethod
    def finish(run: RunState, status: str, at: str) -> Statement:
        return Statement("UPDATE keyrotate_runs SET status = ?, finished_at = ? WHERE run_id = ?",
                         (status, at, run.run_id))


def _superseded(runs: list[_Unfinished], ts: str) -> list[Statement]:
    settled = ", ".join(f"'{s}'" for s in SETTLED)
    return [Statement("UPDATE keyrotate_runs SET status = 'superseded', finished_at = "
                      f"coalesce(finished_at, ?) WHERE run_id = ? AND status NOT IN ({settled})",
                      (ts, u.run_id)) for u in runs]


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
