"""Census and rewrap of Durable Object targets: ids paged from D1 by keyset, N requests
in flight, each answer judged by the key id the object itself reports.

Trust only key ids: an object still running the code and secrets of the version it
started with answers `current` for an envelope still under the old key. So `current`
and `rewrapped` count only when their kid is the new key's id (from keyrotate's own
store); any other kid is *stale*: sent again later with backoff for up to `stale_wait`
seconds, then reported, and the run is incomplete (exit 3).
"""

from __future__ import annotations

import logging
import random
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

from keyrotate.dataplane.objects.fanout import fan_out
from keyrotate.dataplane.objects.ledger import Ledger
from keyrotate.dataplane.objects.wire import Endpoint, ObjectResult, Ping
from keyrotate.dataplane.outcome import OBJECTS, Outcome
from keyrotate.db.base import RowStore, Salt, new_salt, quote_ident, witness_sql, witness_sum
from keyrotate.db.table_shape import PagedColumn, resolve_id_column
from keyrotate.errors import (
    EXIT_FAILURES,
    EXIT_INCOMPLETE,
    EndpointError,
    Incomplete,
    Interrupted,
)
from keyrotate.progress import NoProgress, Progress

log = logging.getLogger("keyrotate.objects")
DEFAULT_BATCH, MAX_BATCH = 50, 1000
ID_PAGE = 1000
CONFLICT_TRIES, RETRY_TRIES = 5, 8
LISTED = 100


@dataclass(frozen=True)
class ObjectsOptions:
    concurrency: int = 4
    batch: int = DEFAULT_BATCH
    stale_wait: float = 120.0
    dry_run: bool = False


@dataclass(frozen=True)
class Keys:
    """The key ids a run trusts, computed from keyrotate's own store."""

    new: str
    old: str | None


_RESOLVED: "weakref.WeakKeyDictionary[RowStore, dict[IdSource, PagedColumn]]" = (
    weakref.WeakKeyDictionary())


@dataclass
class IdWalk:
    """What one pass over the ids visited: how many, and the witness sum of their rowids."""

    salt: Salt | None = None
    count: int = 0
    witness: int = 0


@dataclass(frozen=True)
class IdSource:
    """The D1 column listing the objects (keyset paged, never all in memory). It must be
    unique by a constraint, and is compared under that constraint's collation, or paging
    could skip ids (db/table_shape.py); NULL is no id."""

    table: str
    column: str

    def paged(self, db: RowStore) -> PagedColumn:
        """The column's paging facts, checked once per connection (each check costs D1
        requests)."""
        known = _RESOLVED.setdefault(db, {})
        if self not in known:
            known[self] = resolve_id_column(db, self.table, self.column)
        return known[self]

    def pages(self, db: RowStore, size: int | None = None,
              walk: IdWalk | None = None) -> Iterator[list[str]]:
        col = self.paged(db)
        size = size or ID_PAGE
        t, c = quote_ident(self.table), quote_ident(self.column)
        cc = c + (f" COLLATE {col.collation}" if col.collation else "")
        salt = walk.salt if walk is not None and col.rowid else None
        wit = f", {quote_ident(col.rowid)}" if salt is not None and col.rowid else ""   # witness
        after: Any = None
        while True:
            rows = db.query(f"SELECT {c}{wit} FROM {t} WHERE {c} IS NOT NULL"
                            + ("" if after is None else f" AND {cc} > ?")
                            + f" ORDER BY {cc} LIMIT ?",
                            (size,) if after is None else (after, size))
            if not rows:
                return
            after = rows[-1][0]
            if walk is not None:
                walk.count += len(rows)
                if salt is not None:
                    walk.witness += witness_sum((r[1] for r in rows), salt)
            yield [str(r[0]) for r in rows]

    def count(self, db: RowStore) -> int:
        t, c = quote_ident(self.table), quote_ident(self.column)
        return int(db.query(f"SELECT count(*) FROM {t} WHERE {c} IS NOT NULL")[0][0])

    def unlisted(self, db: RowStore, walk: IdWalk) -> int:
        """Ids the table holds now that the walk cannot account for (0: it listed every
        one): by the rowid witness, which counts cannot fool (an id paging skipped and an
        id deleted meanwhile cancel out in counts); by count for a WITHOUT ROWID table."""
        col = self.paged(db)
        where = f" WHERE {quote_ident(self.column)} IS NOT NULL"
        if walk.salt is not None and col.rowid:
            n, total = db.query(witness_sql(self.table, col.rowid, walk.salt, where))[0]
            if (int(n), int(total)) == (walk.count, walk.witness):
                return 0
            return max(1, int(n) - walk.count)
        return max(0, self.count(db) - walk.count)


def _backoff(n: int, cap: float = 10.0) -> float:
    base = min(0.5 * 2 ** n, cap)
    return base + random.uniform(0, base / 2)


@dataclass
class ObjectsCensus:
    target: str
    new_kid: str
    objects: int = 0
    current: int = 0
    missing: int = 0
    old: list[str] = field(default_factory=list)
    stale: dict[str, str | None] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    unanswered: set[str] = field(default_factory=set)   # kept answering retry / conflict
    unlisted: int = 0     # ids the table holds that paging did not list (or that came and
                          # went while it ran): the census cannot vouch for them
    by_kid: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    seconds: float = 0.0

    @property
    def behind(self) -> list[str]:
        """Ids that may still need the old key: old, stale, or never answered."""
        return sorted({*self.old, *self.stale, *self.unanswered})

    @property
    def clean(self) -> bool:
        return not (self.behind or self.failed or self.unlisted)

    @property
    def exit_code(self) -> int:
        """1 for objects behind or failing; 3 when the only doubt is ids it could not list."""
        if self.clean:
            return 0
        return EXIT_FAILURES if self.behind or self.failed else EXIT_INCOMPLETE

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "kid": self.new_kid, "objects": self.objects,
                "current": self.current, "old": len(self.old), "stale": len(self.stale),
                "missing": self.missing, "failed": len(self.failed),
                "unanswered": len(self.unanswered), "unlisted": self.unlisted,
                "clean": self.clean,
                "by_kid": self.by_kid, "requests": self.requests,
                "seconds": round(self.seconds, 3),
                "failures": [{"id": i, "reason": r} for i, r in sorted(self.failed.items())[:LISTED]],
                "old_ids": sorted(self.old)[:LISTED],
                "stale_ids": [{"id": i, "kid": k} for i, k in sorted(self.stale.items())[:LISTED]]}

    def text(self) -> str:
        d = self.as_dict()
        lines = [f"{self.target}: {'clean' if self.clean else 'NOT clean'}: {self.objects:,} objects, "
                 f"{self.current:,} current (kid {self.new_kid}), {d['old']:,} old, "
                 f"{d['stale']:,} stale, {self.missing:,} missing, {d['failed']:,} failed"]
        if self.unlisted:
            lines.append(f"  {self.unlisted:,} or more ids in {self.target}'s ids column were not "
                         "listed (or ids were added or removed meanwhile): run it again")
        lines += [f"  object {f['id']}: {f['reason']}" for f in d["failures"][:20]]
        return "\n".join(lines)

    def outcome(self) -> Outcome:
        return Outcome(self.target, OBJECTS, total=self.objects, current=self.current,
                       old=len(self.old), missing=self.missing, failed=len(self.failed),
                       stale=len(self.stale), unreached=len(self.unanswered) + self.unlisted,
                       requests=self.requests, by_kid=dict(self.by_kid),
                       failures=[{"id": i, "reason": r} for i, r in sorted(self.failed.items())],
                       behind=self.behind)


@dataclass
class ObjectsRewrap:
    """What `objects rewrap` did (SPEC field names)."""

    run_id: str
    target: str
    dry_run: bool = False
    scanned: int = 0
    rewrapped: int = 0
    already_current: int = 0
    missing: int = 0
    conflicted: int = 0
    stale: dict[str, str | None] = field(default_factory=dict)     # id -> kid it answered
    failed: dict[str, str] = field(default_factory=dict)           # id -> reason
    unfinished: set[str] = field(default_factory=set)              # retry / conflict gave up
    requests: int = 0
    seconds: float = 0.0
    swept: int = 0                        # ids the final census found behind, sent again
    census: ObjectsCensus | None = None   # the proof, for a standalone rewrap

    @property
    def status(self) -> str:
        if self.dry_run:
            return "dry-run"
        if self.stale or self.unfinished or (self.census is not None and (
                self.census.behind or self.census.unlisted)):
            return "incomplete"
        return "completed_with_failures" if self._failures() else "completed"

    @property
    def exit_code(self) -> int:
        if self.status == "incomplete":
            return EXIT_INCOMPLETE
        return EXIT_FAILURES if self._failures() else 0

    def _failures(self) -> dict[str, str]:
        return {**self.failed, **(self.census.failed if self.census is not None else {})}

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "status": self.status, "target": self.target,
                "dry_run": self.dry_run, "objects_scanned": self.scanned,
                "objects_rewrapped": self.rewrapped,
                "objects_already_current": self.already_current,
                "objects_missing": self.missing, "objects_conflicted": self.conflicted,
                "objects_stale": len(self.stale), "objects_failed": len(self.failed),
                "objects_unfinished": len(self.unfinished), "objects_swept": self.swept,
                "requests": self.requests, "seconds": round(self.seconds, 3),
                "failed": [{"id": i, "reason": r}
                           for i, r in sorted(self._failures().items())[:LISTED]],
                "stale": [{"id": i, "kid": k} for i, k in sorted(self.stale.items())[:LISTED]],
                "census": None if self.census is None else {
                    k: v for k, v in self.census.as_dict().items()
                    if k not in ("failures", "target", "requests", "seconds")}}

    def text(self) -> str:
        d = self.as_dict()
        lines = [f"{'dry run: ' if self.dry_run else ''}{self.target}: {d['status']} "
                 f"(rotation id {self.run_id})",
                 f"  objects {d['objects_scanned']:,}  rewrapped {d['objects_rewrapped']:,}  "
                 f"already current {d['objects_already_current']:,}  missing {d['objects_missing']:,}  "
                 f"conflicts {d['objects_conflicted']:,}  stale {d['objects_stale']:,}  "
                 f"failed {d['objects_failed']:,}",
                 f"  {d['requests']:,} requests, {d['seconds']:.2f} s"]
        lines += [f"  object {f['id']}: {f['reason']}" for f in d["failed"][:20]]
        lines += [f"  object {s['id']}: still answers with key {s['kid']} (old version?)"
                  for s in d["stale"][:20]]
        if d["status"] == "incomplete":
            lines.append("  incomplete: run the same command again")
        return "\n".join(lines)

    def outcome(self) -> Outcome:
        return Outcome(self.target, OBJECTS, run_id=self.run_id, status=self.status,
                       scanned=self.scanned, rewritten=self.rewrapped,
                       already_current=self.already_current, missing=self.missing,
                       failed=len(self._failures()), conflicted=self.conflicted,
                       stale=len(self.stale), unreached=len(self.unfinished),
                       requests=self.requests,
                       failures=[{"id": i, "reason": r} for i, r in sorted(self._failures().items())],
                       behind=sorted({*self.stale, *self.unfinished}))


def _batches(pages: Iterable[list[str]], size: int) -> Iterator[list[str]]:
    for page in pages:
        for i in range(0, len(page), size):
            yield page[i:i + size]


class _Attempts:
    def __init__(self) -> None:
        self.tries: dict[str, int] = {}
        self.first_stale: dict[str, float] = {}

    def again(self, i: str, limit: int) -> bool:
        self.tries[i] = self.tries.get(i, 0) + 1
        return self.tries[i] < limit


def census(db: RowStore, endpoint: Endpoint, ids: IdSource, target: str, new_kid: str,
           options: ObjectsOptions, progress: Progress | None = None,
           only: Sequence[str] | None = None) -> ObjectsCensus:
    """Ask every object (or `only` these) which key opens its envelope. Every one is
    asked, even one that answered this run's rewrap with the new key's id: an instance
    still on an older version can write under the old key after that answer."""
    progress = progress or NoProgress()
    started, before = time.monotonic(), endpoint.requests
    result = ObjectsCensus(target, new_kid)
    attempts = _Attempts()
    progress.start(len(only) if only is not None else ids.count(db))

    def handle(batch: Sequence[str], results: list[ObjectResult]) -> list[tuple[str, float]]:
        again = []
        for r in results:
            if r.status in ("retry", "conflict"):
                if attempts.again(r.id, RETRY_TRIES):
                    again.append((r.id, _backoff(attempts.tries[r.id])))
                else:
                    result.unanswered.add(r.id)
                continue
            result.objects += 1
            progress.advance(1)
            if r.kid:
                result.by_kid[r.kid] = result.by_kid.get(r.kid, 0) + 1
            if r.status == "missing":
                result.missing += 1
            elif r.status == "failed":
                result.failed[r.id] = r.reason or "failed"
            elif r.status == "old":
                result.old.append(r.id)
            elif r.kid == new_kid:   # current (or rewrapped): only the new key's id counts
                result.current += 1
            else:
                result.stale[r.id] = r.kid
        return again

    walk = IdWalk(new_salt())
    source = ([list(only[i:i + options.batch]) for i in range(0, len(only), options.batch)]
              if only is not None else _batches(ids.pages(db, walk=walk), options.batch))
    try:
        fan_out(source, lambda b: endpoint.census(b), handle, options.concurrency, options.batch)
        if only is None:
            result.unlisted = ids.unlisted(db, walk)
    except KeyboardInterrupt:
        raise Interrupted("census interrupted; nothing was written") from None
    finally:
        progress.close()
    result.requests, result.seconds = endpoint.requests - before, time.monotonic() - started
    return result


def await_keys(endpoint: Endpoint, keys: Keys, wait_s: float) -> Ping:
    """Before any rewrap: the route must hold the new key as MASTER_KEY and the old one as
    MASTER_KEY_PREVIOUS. A route still on the old key gets `wait_s` to catch up."""
    deadline, n = time.monotonic() + wait_s, 0
    while True:
        ping = endpoint.ping()
        if ping.kid == keys.new and ping.previous_kid == keys.old:
            return ping
        if ping.kid == keys.new and ping.previous_kid is None:
            raise EndpointError(f"{endpoint.url} holds the new key but no MASTER_KEY_PREVIOUS: "
                                "push both (the rotation's push step does) before a rewrap")
        if ping.kid not in (keys.new, keys.old) or (ping.kid == keys.new and ping.previous_kid != keys.old):
            raise EndpointError(f"{endpoint.url} holds MASTER_KEY kid {ping.kid} and "
                                f"MASTER_KEY_PREVIOUS kid {ping.previous_kid}, not the new key "
                                f"(kid {keys.new}) and the old one (kid {keys.old}): the wrong "
                                "environment or store?")
        if time.monotonic() > deadline:
            raise Incomplete(f"{endpoint.url} still holds the old key as MASTER_KEY (kid "
                             f"{ping.kid}): the push has not reached it yet. Run the same command "
                             "again in a minute.")
        n += 1
        log.info("%s still answers with the old key (kid %s); waiting for the new version",
                 endpoint.url, ping.kid)
        time.sleep(_backoff(n))


class Rewrapper:
    """One `rewrap` pass over a target's objects: ids paged from D1, the ledger skipping
    completed ones (unless `only`: a sweep sends these ids again, completed or not), each
    answer judged by the kid the object reports."""

    def __init__(self, db: RowStore, endpoint: Endpoint, ids: IdSource, ledger_table: str,
                 target: str, rotation_id: str, keys: Keys, options: ObjectsOptions,
                 progress: Progress | None = None, only: Sequence[str] | None = None):
        self.db, self.endpoint, self.ids, self.keys = db, endpoint, ids, keys
        self.options, self.only = options, only
        self.progress = progress or NoProgress()
        self.rotation_id = rotation_id
        self.ledger = Ledger(db, ledger_table, rotation_id)
        self.attempts = _Attempts()
        self.result = ObjectsRewrap(rotation_id, target, dry_run=options.dry_run)

    def run(self) -> ObjectsRewrap:
        started, before = time.monotonic(), self.endpoint.requests
        result, options = self.result, self.options
        if options.dry_run:  # the same pipeline, asking instead of writing
            c = census(self.db, self.endpoint, self.ids, result.target, self.keys.new, options,
                       self.progress, self.only)
            result.scanned, result.already_current, result.missing = c.objects, c.current, c.missing
            result.failed, result.stale = c.failed, c.stale
        else:
            await_keys(self.endpoint, self.keys, options.stale_wait)
            self.progress.start(len(self.only) if self.only is not None else self.ids.count(self.db))
            try:
                fan_out(self._batches(), lambda b: self.endpoint.rewrap(b, self.rotation_id),
                        self._handle, options.concurrency, options.batch, self._before_send)
            except KeyboardInterrupt:
                raise Interrupted("interrupted; the ledger records every confirmed object: run "
                                  "the same command again to resume") from None
            finally:
                self.progress.close()
        result.requests = self.endpoint.requests - before
        result.seconds = time.monotonic() - started
        return result

    def _batches(self) -> Iterator[list[str]]:
        size = self.options.batch
        if self.only is not None:
            yield from (list(self.only[i:i + size]) for i in range(0, len(self.only), size))
            return
        for page in self.ids.pages(self.db):
            done = self.ledger.completed(page)
            self.progress.advance(len(done))
            todo = [i for i in page if i not in done]
            for i in range(0, len(todo), size):
                yield todo[i:i + size]

    def _before_send(self, batch: Sequence[str]) -> None:
        self.db.apply([], None, self.ledger.started(batch, again=self.only is not None))

    def _counted(self) -> None:
        self.result.scanned += 1
        self.progress.advance(1)

    def _handle(self, batch: Sequence[str], results: list[ObjectResult]) -> list[tuple[str, float]]:
        """Judge each answer; the ids to send again, with their delays."""
        result, attempts, stale_wait = self.result, self.attempts, self.options.stale_wait
        completed, failed, again = [], {}, []
        now = time.monotonic()
        for r in results:
            if r.status in ("rewrapped", "current") and r.kid != self.keys.new:
                first = attempts.first_stale.setdefault(r.id, now)
                if now - first < stale_wait:
                    attempts.tries[r.id] = attempts.tries.get(r.id, 0) + 1
                    again.append((r.id, min(_backoff(attempts.tries[r.id]), stale_wait)))
                else:
                    result.stale[r.id] = r.kid
                    self._counted()
                continue
            if r.status in ("conflict", "retry"):
                result.conflicted += r.status == "conflict"
                limit = CONFLICT_TRIES if r.status == "conflict" else RETRY_TRIES
                if attempts.again(r.id, limit):
                    delay = 0.0 if r.status == "conflict" else _backoff(attempts.tries[r.id])
                    again.append((r.id, delay))
                else:
                    result.unfinished.add(r.id)
                    self._counted()
                continue
            self._counted()
            result.stale.pop(r.id, None)
            if r.status == "rewrapped":
                result.rewrapped += 1
                completed.append(r.id)
            elif r.status == "current":
                result.already_current += 1
                completed.append(r.id)
            elif r.status == "missing":
                result.missing += 1
                completed.append(r.id)
            else:  # failed, or `old`, which a rewrap never answers
                failed[r.id] = r.reason or ("answered 'old' to a rewrap" if r.status == "old"
                                            else "failed")
        result.failed.update(failed)
        if completed or failed:
            self.db.apply([], None, self.ledger.outcome(completed, failed))
        return again


def rewrap(db: RowStore, endpoint: Endpoint, ids: IdSource, ledger_table: str, target: str,
           rotation_id: str, keys: Keys, options: ObjectsOptions,
           progress: Progress | None = None, only: Sequence[str] | None = None) -> ObjectsRewrap:
    """Rewrap every object not yet completed in the ledger (or `only` these, completed or
    not: a sweep after a census found them under the old key)."""
    return Rewrapper(db, endpoint, ids, ledger_table, target, rotation_id, keys, options,
                     progress, only).run()
