"""Keyset pages in, page results out, with a few pages in flight so reads, crypto and
writes overlap. Shared by reencrypt and verify.

Memory is bounded by bytes as well as by rows: a page holds at most `batch_size` rows and
stops at about PAGE_BYTES of stored values (or one row, when a single row is larger), and
all pages between their read and the end of their life (their commit, or the census
counting them) hold at most BYTES_IN_FLIGHT of stored values together, across the reader,
the crypto workers and the writer; a page heavier than ALONE_ABOVE (a row larger than a
page's budget) travels alone. With ordinary rows the budget lets every worker and the
writer hold pages at once (8 MB held four 2 MB pages and left a worker idle while the
writer held two); with heavy rows one page is in flight, and each process then holds a
few copies of it at most (the value read, its new value, and their passage through a
pipe).

On a store where every request costs (D1: the API budget), the pass reads its next page
in the request that commits the page before: the read waits in a Carrier until the
writer thread's next request takes it along (or sends it alone, when the page had
nothing to commit). One request per page instead of two.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from keyrotate.dataplane.vouch import Vouch, Vouched
from keyrotate.dataplane.workers import CryptoRunner, PageResult, vouched_part
from keyrotate.db.base import (
    PAGE_BYTES,
    CasWrite,
    ReadAhead,
    RowStore,
    Salt,
    Statement,
    Target,
    Value,
    bounded_scan_params,
    bounded_scan_sql,
    page_weight,
    read_many,
)

Rows = list[tuple[Value, Value]]

BYTES_IN_FLIGHT = 16 << 20
ALONE_ABOVE = 2 * PAGE_BYTES   # a page past this is mostly one heavy row: it travels alone


class InFlight:
    """A byte budget shared by the reader (takes) and whoever ends a page's life (gives)."""

    def __init__(self, limit: int = BYTES_IN_FLIGHT):
        self.limit, self.used = limit, 0
        self._cond = threading.Condition()

    def room(self, n: int, wait: bool) -> bool:
        """Whether n more bytes fit now (anything fits when nothing is in flight, and a
        page heavier than ALONE_ABOVE only then); with `wait`, block until they do."""
        with self._cond:
            while self.used and (self.used + n > self.limit or n > ALONE_ABOVE):
                if not wait:
                    return False
                self._cond.wait(0.5)
            return True

    def take(self, n: int) -> None:
        with self._cond:
            self.used += n

    def give(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()


def page_size(store: RowStore, requested: int | None) -> int:
    """The page size asked for, else the store's preference (remote stores want fuller pages)."""
    return requested or store.preferred_batch_size


def scan_statement(target: Target, after: Value, first: bool, limit: int,
                   max_bytes: int) -> Statement:
    """The keyset page read as one statement (what `scan_page` reads on stores that answer
    whole results)."""
    return Statement(bounded_scan_sql(target, first),
                     bounded_scan_params(after, first, limit, max_bytes))


class Carrier:
    """Reads that ride on the next write of the writer thread, on stores that carry reads
    (`carries_reads`; elsewhere a read is made at once by whoever asks).

    The writer thread sends writes with `apply`, which takes every waiting read along,
    and ends each page with `page_done`, which sends reads still waiting on their own and
    only then hands out the rows: so a read asked for after the writer started a page
    rides on the next page's write, never on a lone request of its own."""

    def __init__(self, store: RowStore):
        self.store = store
        self.riding = bool(getattr(store, "carries_reads", False))
        self._lock = threading.Lock()
        self._waiting: list[tuple[list[Statement], Future[Any], bool]] = []
        self._ready: list[tuple[Future[Any], Any]] = []

    def read(self, st: Statement) -> "Future[Rows]":
        return self._ask([st], True)

    def read_all(self, statements: list[Statement]) -> "Future[list[list[tuple[Value, ...]]]]":
        """Several reads, answered together (each a list of row tuples)."""
        return self._ask(statements, False)

    def _ask(self, statements: list[Statement], one: bool) -> "Future[Any]":
        fut: Future[Any] = Future()
        if not self.riding:
            fut.set_result(_answer(read_many(self.store, statements), one))
            return fut
        with self._lock:
            self._waiting.append((statements, fut, one))
        return fut

    def _take(self) -> list[tuple[list[Statement], Future[Any], bool]]:
        with self._lock:
            taken, self._waiting = self._waiting, []
        return taken

    def _hold(self, taken: list[tuple[list[Statement], Future[Any], bool]],
              answers: list[list[tuple[Value, ...]]]) -> None:
        for statements, fut, one in taken:
            mine, answers = answers[:len(statements)], answers[len(statements):]
            self._ready.append((fut, _answer(mine, one)))

    def apply(self, writes: Sequence[CasWrite], target: Target | None,
              statements: Sequence[Statement]) -> list[bool]:
        """The store's apply, carrying the reads that wait."""
        taken = self._take() if self.riding else []
        if not taken:
            return self.store.apply(writes, target, statements)
        try:
            hits, answers = self.store.exchange(  # type: ignore[attr-defined]
                writes, target, statements, [st for sts, _, _ in taken for st in sts])
        except BaseException:
            with self._lock:
                self._waiting[:0] = taken   # not sent: they wait on
            raise
        self._hold(taken, answers)
        return hits  # type: ignore[no-any-return]

    def page_done(self) -> None:
        """End of the writer's page: reads still waiting go alone, then all are answered."""
        taken = self._take()
        if taken:
            self._hold(taken, read_many(self.store, [st for sts, _, _ in taken for st in sts]))
        ready, self._ready = self._ready, []
        for fut, answer in ready:
            fut.set_result(answer)

    def fail(self, error: BaseException) -> None:
        """The writer stopped: nobody will carry what waits."""
        ready, self._ready = self._ready, []
        for fut in [*(f for _, f, _ in self._take()), *(f for f, _ in ready)]:
            if not fut.done():
                fut.set_exception(error)


def _answer(answers: list[list[tuple[Value, ...]]], one: bool) -> Any:
    return [(r[0], r[1]) for r in answers[0]] if one else answers


@dataclass
class Tail:
    """A read to make just after a scan's last page read. Where every request costs (D1)
    it rides in the request of a page read likely to end the scan, after that read (one
    transaction, in order): the census's witness without a request of its own. `rows`:
    how many rows the table is expected to hold. `answer`: its rows when the read that
    carried it was the scan's last; every later read drops it (None: the caller reads it
    itself)."""

    statement: Statement
    rows: int
    answer: list[tuple[Value, ...]] | None = None

    def scan(self, store: RowStore, target: Target, after: Value, first: bool, limit: int,
             max_bytes: int, seen: int, seen_bytes: int) -> Rows:
        """`store.scan_page`, carrying the tail when the rows still expected fit the page:
        fewer than `limit`, and under `max_bytes` at the bytes per row read so far (a page
        cut by either is not the last, and each carried tail costs an aggregate over the
        whole table)."""
        left, self.answer = self.rows - seen, None
        if not (0 <= left < limit and left * seen_bytes < max_bytes * max(seen, 1)):
            return store.scan_page(target, after, first, limit, max_bytes)
        page, self.answer = read_many(store, [scan_statement(target, after, first, limit,
                                                             max_bytes), self.statement])
        return [tuple(r) for r in page]


def ends_table(rows: Rows, limit: int, max_bytes: int) -> bool:
    """A bounded page read (bounded_scan_sql) that reached the end of the table: fewer
    rows than the limit and no byte cut (a cut page holds at least `max_bytes`, as
    SQLite's length() counts them). Unsure (a number among the values): False."""
    if len(rows) >= limit:
        return False
    size = 0
    for row in rows:
        value = row[1]
        if isinstance(value, (str, bytes)):
            size += len(value)
        elif value is not None:
            return False
    return size < max_bytes


def page_results(store: RowStore, target: Target, runner: CryptoRunner, op: str,
                 batch_size: int, after: Value = None, first: bool = True,
                 page_bytes: int = PAGE_BYTES, salt: Salt | None = None,
                 budget: InFlight | None = None, carrier: Carrier | None = None,
                 vouched: Vouched | None = None, tail: Tail | None = None,
                 ahead: ReadAhead = ReadAhead()) -> Iterator[PageResult]:
    """Yield one PageResult per keyset page, in key order. A page holds at most
    `batch_size` rows and about `page_bytes` of values (at least one row). With a
    budget, each page's stored bytes (`page.bytes`) are taken from it before the page goes
    to the workers: the consumer gives them back when it is done with the page.
    `salt`: the census's witness (rows carry rowids). `carrier`: one that rides (D1):
    each next page is read by the write of the page before, so the caller must hand every
    page to a writer that ends it with page_done. `vouched`: rotate adds each page's
    digests to it, in order; the census checks each page against them (vouch.py). `tail`:
    every page read goes through it (the census's witness, on D1), so its answer is one
    taken with the scan's last read or None. `ahead`: the first page, if it was read with
    the request before (the run's start, on D1)."""
    if carrier is not None and carrier.riding and salt is None:
        yield from _carried(store, target, runner, op, batch_size, after, first, page_bytes,
                            budget, carrier, vouched, ahead)
        return
    ordinal = 0          # the census's rows read so far: where in the pass's order it is
    inflight: deque[tuple[Any, int, Any]] = deque()
    exhausted = False
    stops_at_end = bool(getattr(store, "carries_reads", False))
    largest = 0          # the heaviest page so far: what the next one may weigh
    weighed = 0          # the bytes of every page read so far
    while True:
        while not exhausted and len(inflight) < runner.depth:
            # room for another page like the heaviest so far, before reading it (with
            # pages in flight, yield them rather than wait; with none, wait for the consumer
            # to give bytes back), so the reader never holds a page the budget cannot take
            if budget is not None and not budget.room(largest, wait=not inflight):
                break
            rows = (store.scan_page(target, after, first, batch_size, page_bytes) if tail is None
                    else tail.scan(store, target, after, first, batch_size, page_bytes,
                                   ordinal, weighed))
            if not rows:
                exhausted = True
                break
            first, after = False, rows[-1][0]
            # a page that shows the end of the table ends the scan without another read
            # where each read is a request (D1); a census's witness still checks it
            exhausted = stops_at_end and ends_table(rows, batch_size, page_bytes)
            n = page_weight(rows)
            largest, weighed = max(largest, n), weighed + n
            if budget is not None:
                budget.take(n)
            if op == "census" and vouched is not None:
                future = _census_vouched(runner, rows, salt, vouched.window(ordinal, len(rows)))
            else:
                future = runner.submit(rows, op, salt, _vouch(vouched))
            inflight.append((future, n, rows))
            ordinal += len(rows)
            del rows
        if not inflight:
            return
        future, n, rows = inflight.popleft()
        page = runner.wait(future).rejoined(rows)
        del future, rows
        page.bytes = n
        _record(vouched, page)
        yield page


def _carried(store: RowStore, target: Target, runner: CryptoRunner, op: str, batch_size: int,
             after: Value, first: bool, page_bytes: int, budget: InFlight | None,
             carrier: Carrier, vouched: Vouched | None, ahead: ReadAhead) -> Iterator[PageResult]:
    """One page at a time: its crypto, then its write carrying the next page's read. A
    page read that shows the end of the table is marked `last`, and nothing reads past
    it. The byte budget holds: the next page rides on this one's write only when another
    page like the heaviest so far fits beside the pages the writer holds; otherwise it
    is read on its own once they are given back."""
    rows = ahead.take(scan_statement(target, after, first, batch_size, page_bytes))
    if rows is None:
        rows = store.scan_page(target, after, first, batch_size, page_bytes)
    largest = 0
    while rows:
        first, after = False, rows[-1][0]
        n = page_weight(rows)
        largest = max(largest, n)
        if budget is not None:
            budget.take(n)
        last = ends_table(rows, batch_size, page_bytes)
        ahead = None
        if not last and (budget is None or budget.room(largest, wait=False)):
            ahead = carrier.read(scan_statement(target, after, False, batch_size, page_bytes))
        page = runner.wait(runner.submit(rows, op, None, _vouch(vouched))).rejoined(rows)
        page.bytes, page.last = n, last
        _record(vouched, page)
        del rows
        yield page
        del page
        if last:
            return
        if ahead is not None:
            rows = ahead.result()
        else:
            if budget is not None:
                budget.room(largest, wait=True)
            rows = store.scan_page(target, after, first, batch_size, page_bytes)


def _vouch(vouched: Vouched | None) -> Vouch | None:
    """What a page of the pass takes to its worker: the key its digests are made with."""
    return None if vouched is None else (vouched.key, b"", 0)


def _census_vouched(runner: CryptoRunner, rows: list[tuple[Value, ...]], salt: Salt | None,
                    vouch: Vouch) -> "Future[PageResult]":
    """A census page checked against what the pass vouched for, here in the reader (a
    digest costs less than the trip to a worker and back); only the rows it does not
    vouch for go to the workers to be opened. The witness covers every row."""
    mine, rest = vouched_part(runner.codec.new_kid, rows, salt, vouch)
    if not rest:
        done: Future[PageResult] = Future()
        done.set_result(mine)
        return done
    return _joined(runner.submit(rest, "census", salt), mine)


def _joined(future: "Future[PageResult]", mine: PageResult) -> "Future[PageResult]":
    """The worker's result for the rows it opened, with the rows vouched for added."""
    out: Future[PageResult] = Future()

    def join(done: "Future[PageResult]") -> None:
        try:
            page = done.result()
        except BaseException as e:
            out.set_exception(e)
            return
        page.add(mine)
        page.last_key = mine.last_key
        out.set_result(page)

    future.add_done_callback(join)
    return out


def _record(vouched: Vouched | None, page: PageResult) -> None:
    """A rotated page's digests, kept in the pass's order (pages come back in order)."""
    if vouched is not None and page.vouched:
        vouched.add(page.vouched)
        page.vouched = b""
