"""The audit trail: append-only, in the environment's database (keyrotate_audit), each
event authenticated by the environment's audit key (a MAC chain, evidence/chain.py), with
a copy in this machine's witness file beside the manifest.

Living in the database, it is one history for every operator and machine that works on
the environment: two appends that race for the same place in the chain cannot both land
(UNIQUE (environment, prev_hash), and a trigger refusing INSERT OR REPLACE); the loser
reads the new head and appends after it. At the end of a command that appended, the
head's MAC is saved in the environment's store too: a trail cut short at its end, which
no MAC can show, then no longer holds the head the store remembers.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from keyrotate.db.base import ReadAhead, RowStore, Statement
from keyrotate.errors import ConfigError, KeyrotateError, StoreError, StoreUnavailable
from keyrotate.evidence.chain import COLUMNS, GENESIS, KEYED, Link, canonical
from keyrotate.evidence.event import ChainHead, Event, operator
from keyrotate.evidence.witness import WitnessFile, witness_id
from keyrotate.secrets.audit_key import AuditKey, head_name
from keyrotate.secrets.base import SecretStore

log = logging.getLogger("keyrotate.audit")
CONFLICT_TRIES = 20
PAGE = 500
_INSERT = ("INSERT INTO keyrotate_audit (environment, at, event, rotation_id, secret, record, "
           "prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
# the audit key: to write (made on first need), or to read (None if the store has none)
KeySource = Callable[[bool], "AuditKey | None"]


_UNSURE = ("audit trail on {}: an append failed and whether it landed could not be read; "
           "nothing more is appended in this command (it could record an event twice): run "
           "the same command again")


def _lost_race(e: StoreError) -> bool:
    """SQLite's words for a taken place in the chain, the same from a file, libSQL and D1:
    the UNIQUE constraint, or the trigger that refuses a replace (migration 0007)."""
    return "UNIQUE constraint failed" in str(e) or "place in the chain is taken" in str(e)


class StoreHead:
    """The MAC of the trail's head as the environment's store last saw it. Someone who can
    write the database but not the store cannot make the trail end before it unseen."""

    def __init__(self, store: SecretStore, env: str):
        self.store, self.name = store, head_name(env)

    @property
    def ref(self) -> str:
        return self.store.ref(self.name)

    def read(self) -> str | None:
        raw = self.store.read(self.name)
        return raw if raw is not None and len(raw) == 64 else None

    def advance(self, mac: str) -> None:
        if self.read() != mac:
            self.store.write_state(self.name, mac)


class AuditTrail:
    def __init__(self, db: RowStore, env: str, local_file: Path,
                 key: AuditKey | KeySource, store_head: StoreHead | None = None):
        self.db, self.env, self.local_file = db, env, local_file
        self.who = operator()
        self.witness_id = witness_id(self.who, local_file)
        self._key: KeySource = (lambda create: key) if isinstance(key, AuditKey) else key
        self.store_head = store_head
        self._head: str | None = None
        self._head_key: str | None = None               # the audit key id the head names
        self._last: tuple[str, str] | None = None     # (prev, mac) of this command's last append
        self._queued: list[Event] = []                # recorded with the next append
        self._queued_statements: list[Statement] = []  # committed with them
        self.holds_push_outcomes = False              # a queued event settles a push
        self._ahead = ReadAhead()
        self._unsure = False   # an append failed and whether it landed could not be read

    def witness(self) -> WitnessFile:
        return WitnessFile(self.local_file, self.db.display_url, self.env)

    def queue(self, event: Event) -> None:
        """Record `event` with the next append (in its transaction), or when the command ends."""
        self._queued.append(event)

    def defer(self, event: Event, with_statements: Sequence[Statement] = (),
              before: Sequence[Event] = (), settles_push: bool = False) -> None:
        """Append `event` (after `before`) and commit `with_statements` in the transaction of
        the next append, not in one of their own: on D1 every request counts. Only for
        records whose loss in a kill is safe: a step then done again, a push left "possibly
        applied". Reading the trail first records them, so no reader misses them."""
        self._queued += [*before, event]
        self._queued_statements += with_statements
        self.holds_push_outcomes = self.holds_push_outcomes or settles_push

    def settle(self) -> None:
        """Before a command tells its result: every deferred record written, or an error
        (a push confirmed nowhere must not end in exit 0)."""
        self.flush()

    def flush(self) -> None:
        """Record what is deferred now."""
        if not self._queued:
            return
        last = self._queued.pop()
        try:
            self.append(last)
        except BaseException:
            self._queued.append(last)
            raise

    def append(self, event: Event, with_statements: Sequence[Statement] = (),
               before: Sequence[Event] = ()) -> str:
        """Append one event, after `before` (and any queued), and commit `with_statements`
        in the same transaction, so a rotation's state and its audit events land together.
        Returns the MAC of `event`."""
        key = self._key(True)
        assert key is not None
        if self._unsure:
            raise StoreUnavailable(_UNSURE.format(self.db.display_url))
        events = [*self._queued, *before, event]
        statements = [*self._queued_statements, *with_statements]
        for _ in range(CONFLICT_TRIES):
            prev = self._head if self._head is not None else self._read_head()
            self._check_key(key)
            links, inserts, link = [], [], prev
            for e in events:
                record = {**e.record(link, self.who), KEYED: key.id, "witness": self.witness_id}
                mac = key.mac(link, canonical(record))
                inserts.append(Statement(_INSERT, (self.env, e.at, e.event, e.rotation_id, e.secret,
                                                   json.dumps(record, sort_keys=True), link, mac)))
                links.append((record, link, mac))
                link = mac
            witness = self.witness()
            for record, _, mac in links:   # before it is sent: a kill may come after it landed
                witness.write(record, mac, confirmed=False)
            try:
                self.db.apply([], None, [*statements, *inserts])
            except BaseException as e:   # a failed request, or an interrupt during it
                self._head = None
                self._unsure = True   # until the look below says (a second Ctrl-C in it)
                landed = self._landed(links[-1][1], link)
                if landed:   # only the answer was lost (D1 sent it again: the replay met a
                    self._unsure = False             # guard or its own place), or Ctrl-C
                    self._appended(key, links)       # came after the commit
                    if isinstance(e, StoreError):
                        return link
                    raise
                # refused by the database (a lost race, a trigger, a guard): it did not land
                # and will not. Given up on the way (an interrupt, a request the client gave
                # up on) it may still commit after this look: appending again could then
                # record it twice
                refused = isinstance(e, StoreError) and not isinstance(e, StoreUnavailable)
                if landed is None or not refused:
                    if isinstance(e, StoreError):
                        raise StoreUnavailable(_UNSURE.format(self.db.display_url)) from None
                    raise
                self._unsure = False
                if not _lost_race(e):
                    raise
                continue
            self._appended(key, links)
            return link
        raise StoreUnavailable(f"audit trail on {self.db.display_url}: other appends kept "
                               "taking its head")

    def _appended(self, key: AuditKey, links: list[tuple[dict, str, str]]) -> None:
        """An append landed: the head moves, the queue empties, this machine's copy grows."""
        self._head, self._head_key = links[-1][2], key.id
        self._last, self._queued = (links[-1][1], links[-1][2]), []
        self._queued_statements, self.holds_push_outcomes = [], False
        witness = self.witness()
        for record, _, mac in links:
            witness.write(record, mac)

    def _landed(self, prev: str, last: str) -> bool | None:
        """Whether an append whose request failed committed all the same: the place after
        `prev` holds its last record's MAC (which covers that place and the record; the
        rest of its transaction landed with it), whatever others appended after it. The
        last record, not the first: a batch built again after an interrupt starts with the
        same records. None: that could not be read."""
        try:
            rows = self.db.query("SELECT hash FROM keyrotate_audit WHERE environment = ? AND "
                                 "prev_hash = ?", (self.env, prev))
        except KeyrotateError:
            return None
        return bool(rows) and rows[0][0] == last

    def head_read(self) -> Statement:
        """How the head is read: for a caller that reads it ahead (`answered`)."""
        return Statement("SELECT hash, record FROM keyrotate_audit WHERE environment = ? "
                         "ORDER BY seq DESC LIMIT 1", (self.env,))

    def answered(self, ahead: ReadAhead) -> None:
        """Reads made ahead (in a lease's claim): the first head read takes its answer
        from them, if this trail has not read its head yet. Only that first read: a head
        read later (after an append lost its place) must be the database's, not the
        claim's."""
        if self._head is None:
            self._ahead = ahead

    def _read_head(self) -> str:
        """The MAC of the environment's last event, and the audit key it names (kept for
        the next append, which then needs no query of its own)."""
        read = self.head_read()
        ahead, self._ahead = self._ahead, ReadAhead()
        rows = ahead.query(self.db, read.sql, read.params)
        if not rows:
            self._head, self._head_key = GENESIS, None
            return GENESIS
        try:
            named = json.loads(rows[0][1]).get(KEYED)
        except (TypeError, ValueError, AttributeError):
            named = None
        self._head, self._head_key = str(rows[0][0]), named if isinstance(named, str) else None
        return self._head

    def _check_key(self, key: AuditKey) -> None:
        """Never append after an event authenticated with another audit key: the chain
        would verify for no one."""
        if self._head_key is not None and self._head_key != key.id:
            raise ConfigError(f"the audit trail of {self.env} is authenticated with audit key "
                              f"{self._head_key}, but the environment's store holds audit key "
                              f"{key.id}: every operator of an environment must use its one audit "
                              "key (KEYROTATE_AUDIT_KEY); nothing was recorded")

    def head(self, key: AuditKey | None = None) -> str:
        """The MAC of the environment's last event (with `key`: checked to be its key)."""
        mac = self._read_head()
        if key is not None:
            self._check_key(key)
        return mac

    def head_key(self) -> str | None:
        """The audit key id the trail's last event names (None: no event, or unkeyed)."""
        if self._head is None:
            self._read_head()
        return self._head_key

    def last_head(self) -> ChainHead | None:
        """The place of this command's last append (None if it made none)."""
        if self._last is None:
            return None
        rows = self.db.query("SELECT seq FROM keyrotate_audit WHERE environment = ? AND "
                             "prev_hash = ?", (self.env, self._last[0]))
        return ChainHead(int(rows[0][0]), self._last[1]) if rows else None

    def records(self, event: str) -> list[dict[str, Any]]:
        """The records of one kind of event, in the order they were stored."""
        if any(e.event == event for e in self._queued):
            self.flush()
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
        self.flush()
        out: list[Link] = []
        after = -1
        while True:
            rows = self.db.query("SELECT seq, record, prev_hash, hash, "
                                 f"{', '.join(column for column, _ in COLUMNS)} FROM keyrotate_audit "
                                 "WHERE environment = ? AND seq > ? ORDER BY seq LIMIT ?",
                                 (self.env, after, PAGE))
            for seq, record, prev, h, *plain in rows:
                try:
                    parsed = json.loads(record)
                except (TypeError, ValueError):
                    parsed = {"unparseable": True}
                out.append(Link(int(seq), parsed if isinstance(parsed, dict) else {}, str(prev),
                                str(h), dict(zip((column for column, _ in COLUMNS), plain)),
                                record if isinstance(record, str) else None))
            if len(rows) < PAGE:
                return out
            after = int(rows[-1][0])

    def close(self) -> None:
        """Record what is queued (a command that succeeded did already: Context.settle),
        then save the head in the store, once per command that appended. A store this
        operator cannot write is only warned about: the trail itself is written."""
        try:
            self.flush()
        except KeyrotateError as e:
            log.warning("the audit trail of %s could not record its last events: %s",
                        self.env, e)
        try:
            if self.store_head is not None and self._last is not None:
                self.store_head.advance(self._last[1])
        except KeyrotateError as e:
            log.warning("could not record the end of the audit trail in %s: %s",
                        self.store_head.ref if self.store_head else self.db.display_url, e)
        self._last = None


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
