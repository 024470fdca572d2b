"""Keyset pages in, page results out, with a few pages in flight so reads, crypto and
writes overlap. Shared by reencrypt and verify.

On a store where every request costs (D1: the API budget), the pass reads its next page
in the request that commits the page before: the read waits in a Carrier until the
writer thread's next request takes it along (or sends it alone, when the page had
nothing to commit). One request per page instead of two.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from typing import Any, Iterator, Sequence

from keyrotate.dataplane.workers import CryptoRunner, PageResult
from keyrotate.db.base import (
    PAGE_BYTES,
    CasWrite,
    RowStore,
    Statement,
    Target,
    Value,
    bounded_scan_params,
    bounded_scan_sql,
    read_many,
)

Rows = list[tuple[Value, Value]]


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


def ends_table(rows: Rows, limit: int, max_bytes: int) -> bool:
    """A bounded page read (bounded_scan_sql) that reached the end of the table: fewer
    rows than the limit and no byte cut (a cut page holds at least `max_bytes`, as
    SQLite's length() counts them). Unsure (a number among the values): False."""
    if len(rows) >= limit:
        return False
    size = 0
    for _, value in rows:
        if isinstance(value, (str, bytes)):
            size += len(value)
        elif value is not None:
            return False
    return size < max_bytes


def page_results(store: RowStore, target: Target, runner: CryptoRunner, op: str,
                 batch_size: int, after: Value = None, first: bool = True,
                 page_bytes: int = PAGE_BYTES, first_rows: Rows | None = None,
                 carrier: Carrier | None = None) -> Iterator[PageResult]:
    """Yield one PageResult per keyset page, in key order. A page holds at most
    `batch_size` rows and about `page_bytes` of values (at least one row), so memory
    stays flat whatever the rows weigh. `first_rows`: the first page, already read.
    `carrier`: one that rides (D1): each next page is read by the write of the page
    before, so the caller must hand every page to a writer that ends it with page_done."""
    if carrier is not None and carrier.riding:
        yield from _carried(target, runner, op, batch_size, after, first, page_bytes,
                            first_rows, carrier, store)
        return
    inflight: deque[Any] = deque()
    exhausted = False
    while True:
        while not exhausted and len(inflight) < runner.depth:
            if first_rows is not None:
                rows, first_rows = first_rows, None
            else:
                rows = store.scan_page(target, after, first, batch_size, page_bytes)
            if not rows:
                exhausted = True
                break
            inflight.append((runner.submit(rows, op), after, first))
            first, after = False, rows[-1][0]
        if not inflight:
            return
        fut, page_after, page_first = inflight.popleft()
        yield _placed(fut.result(), page_after, page_first)


def _carried(target: Target, runner: CryptoRunner, op: str, batch_size: int, after: Value,
             first: bool, page_bytes: int, first_rows: Rows | None, carrier: Carrier,
             store: RowStore) -> Iterator[PageResult]:
    """One page at a time: its crypto, then its write carrying the next page's read. A
    page read that shows the end of the table is marked `last`: nothing rides on its
    write but what the caller adds (the census's first reads)."""
    rows = first_rows if first_rows is not None else store.scan_page(
        target, after, first, batch_size, page_bytes)
    while rows:
        page_after, page_first = after, first
        first, after = False, rows[-1][0]
        last = ends_table(rows, batch_size, page_bytes)
        ahead = None if last else carrier.read(
            scan_statement(target, after, False, batch_size, page_bytes))
        page = _placed(runner.submit(rows, op).result(), page_after, page_first)
        page.last = last
        yield page
        rows = ahead.result() if ahead is not None else []


def _placed(page: PageResult, after: Value, first: bool) -> PageResult:
    page.after, page.first = after, first
    return page
