"""The audit trail: append-only, in the environment's database (keyrotate_audit), hash
chained, with a copy in the local JSON-lines file beside the manifest.

Living in the database, it is one history for every operator and machine that works on
the environment: two appends that race for the same place in the chain cannot both land
(UNIQUE (environment, prev_hash)); the loser reads the new head and appends after it.
The local file is this machine's witness: `verify` checks that every event it wrote is
still in the table, unchanged, which catches a chain rebuilt after an edit.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from keyrotate.db.base import RowStore, Statement
from keyrotate.errors import EXIT_FAILURES, StoreError, StoreUnavailable
from keyrotate.evidence.chain import GENESIS, Break, Link, digest, first_break
from keyrotate.evidence.event import Event, operator

CONFLICT_TRIES = 20
PAGE = 500
_INSERT = ("INSERT INTO keyrotate_audit (environment, at, event, rotation_id, secret, record, "
           "prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


def _lost_race(e: StoreError) -> bool:
    """SQLite's words for a UNIQUE violation, the same from a file, libSQL and D1."""
    return "UNIQUE constraint failed" in str(e)


class AuditTrail:
    def __init__(self, db: RowStore, env: str, local_file: Path):
        self.db, self.env, self.local_file = db, env, local_file
        self.who = operator()
        self._head: str | None = None
        self._later: list[tuple[Event | None, tuple[Statement, ...]]] = []

    def append(self, event: Event, with_statements: Sequence[Statement] = ()) -> str:
        """Append one event (and commit `with_statements` in the same transaction, so a
        rotation's state and its audit event land together), after whatever `later`
        queued, all in one transaction. Returns its hash."""
        return self._append_all([*self._later, (event, tuple(with_statements))])

    def later(self, event: Event | None, with_statements: Sequence[Statement] = ()) -> None:
        """Queue an event (and statements) to commit with the next append, or flush():
        one request fewer on D1 for a record that may wait. Only for records whose loss
        in a crash is harmless: a step of a rotation (every step is idempotent: it runs
        again), a push's confirmation (an unconfirmed push counts as a change)."""
        self._later.append((event, tuple(with_statements)))

    def flush(self) -> None:
        """Commit what `later` queued."""
        if self._later:
            self._append_all(list(self._later))

    def _append_all(self, items: list[tuple[Event | None, tuple[Statement, ...]]]) -> str:
        """The events of `items` chained in order, each after its statements; one apply."""
        chained = any(event is not None for event, _ in items)
        for _ in range(CONFLICT_TRIES):
            prev = (self._head if self._head is not None else self.head()) if chained else ""
            statements: list[Statement] = []
            records: list[tuple[dict[str, Any], str]] = []
            for event, with_statements in items:
                statements += with_statements
                if event is None:
                    continue
                record = event.record(prev, self.who)
                prev = digest(record)
                records.append((record, prev))
                statements.append(Statement(_INSERT, (
                    self.env, event.at, event.event, event.rotation_id, event.secret,
                    json.dumps(record, sort_keys=True), record["prev"], prev)))
            try:
                self.db.apply([], None, statements)
            except StoreError as e:
                if not _lost_race(e) or not records:
                    raise
                self._head = None
                if self.head() == prev:   # it landed; only the answer was lost
                    break
                continue
            break
        else:
            raise StoreUnavailable(f"audit trail on {self.db.display_url}: other appends kept "
                                   "taking its head")
        self._later.clear()
        if records:
            self._head = prev
        for record, h in records:
            self._witness(record, h)
        return prev

    def head(self) -> str:
        rows = self.db.query("SELECT hash FROM keyrotate_audit WHERE environment = ? "
                             "ORDER BY seq DESC LIMIT 1", (self.env,))
        return str(rows[0][0]) if rows else GENESIS

    def records(self, event: str) -> list[dict[str, Any]]:
        """The records of one kind of event, in the order they were stored."""
        out: list[dict[str, Any]] = []
        after = -1
        while True:
            rows = self.db.query("SELECT seq, record FROM keyrotate_audit WHERE environment = ? "
                                 "AND event = ? AND seq > ? ORDER BY seq LIMIT ?",
                                 (self.env, event, after, PAGE))
            for _, record in rows:
                try:
                    parsed = json.loads(record)
                except (TypeError, ValueError):
                    continue
                if isinstance(parsed, dict):
                    out.append(parsed)
            if len(rows) < PAGE:
                return out
            after = int(rows[-1][0])

    def links(self) -> list[Link]:
        """Every event of the environment, in the order they were stored."""
        out: list[Link] = []
        after = -1
        while True:
            rows = self.db.query("SELECT seq, record, prev_hash, hash FROM keyrotate_audit "
                                 "WHERE environment = ? AND seq > ? ORDER BY seq LIMIT ?",
                                 (self.env, after, PAGE))
            for seq, record, prev, h in rows:
                try:
                    parsed = json.loads(record)
                except (TypeError, ValueError):
                    parsed = {"unparseable": True}
                out.append(Link(int(seq), parsed if isinstance(parsed, dict) else {}, str(prev), str(h)))
            if len(rows) < PAGE:
                return out
            after = int(rows[-1][0])

    def _witness(self, record: dict[str, Any], h: str) -> None:
        """This machine's copy: append-only JSON lines, 0600."""
        self.local_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        line = json.dumps({**record, "hash": h, "database": self.db.display_url}, sort_keys=True)
        fd = os.open(self.local_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def witnessed(self) -> list[tuple[dict[str, Any], str]]:
        """(record, hash) of the events this machine appended to this database."""
        if not self.local_file.exists():
            return []
        out = []
        for line in self.local_file.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("database") == self.db.display_url \
                    and entry.get("env") == self.env and "hash" in entry:
                h = entry.pop("hash")
                entry.pop("database")
                out.append((entry, str(h)))
        return out

    def verify(self) -> "AuditVerifyResult":
        links = self.links()
        problem = first_break(links)
        witnessed = self.witnessed()
        if problem is None:
            problem = _witness_break(links, witnessed)
        return AuditVerifyResult(self.env, len(links), links[-1].hash if links else GENESIS,
                                 len(witnessed), problem)


def _witness_break(links: list[Link], witnessed: list[tuple[dict[str, Any], str]]) -> Break | None:
    """The first event this machine wrote that the table no longer holds as written."""
    stored = {link.hash for link in links}
    for record, h in witnessed:
        if h not in stored or digest(record) != h:
            at = f"{record.get('event')} at {record.get('at')}"
            return Break(-1, "missing", f"the event {at}, which this machine appended (its "
                         "local copy holds it), is not in the trail as written: the trail "
                         "was cut or rebuilt")
    return None


@dataclass(frozen=True)
class AuditVerifyResult:
    env: str
    events: int
    head: str
    witnessed: int
    problem: Break | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_FAILURES if self.problem else 0

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.env, "events": self.events, "head": self.head,
                "witnessed_locally": self.witnessed, "ok": self.problem is None,
                "problem": None if self.problem is None else {
                    "seq": self.problem.seq if self.problem.seq >= 0 else None,
                    "kind": self.problem.problem, "message": self.problem.message}}

    def text(self) -> str:
        if self.problem is None:
            return (f"audit trail of {self.env}: {self.events} events, chain intact (head "
                    f"{self.head[:16]}); {self.witnessed} written from this machine, all present "
                    "as written")
        return f"audit trail of {self.env}: TAMPERED: {self.problem.message}"


@dataclass(frozen=True)
class AuditShowResult:
    env: str
    events: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.env, "events": self.events}

    def text(self) -> str:
        lines = [f"audit trail of {self.env}: {len(self.events)} events"]
        for e in self.events:
            what = " ".join(x for x in (e.get("secret"), e.get("rotation_id"), e.get("step")) if x)
            lines.append(f"  #{e['seq']:<5} {e.get('at')}  {e.get('event'):<22} {what}")
            lines.append(f"         {e.get('summary')}  ({e.get('operator')})")
        return "\n".join(lines)


def show(trail: AuditTrail, rotation_id: str | None = None, last: int | None = None) -> AuditShowResult:
    events = [{"seq": link.seq, **{k: v for k, v in link.record.items() if k != "prev"},
               "hash": link.hash} for link in trail.links()
              if rotation_id is None or link.record.get("rotation_id") == rotation_id]
    return AuditShowResult(trail.env, events[-last:] if last else events)
