"""Keyset pages in, page results out, with a few pages in flight so reads, crypto and
writes overlap. Shared by reencrypt and verify.

Memory is bounded by bytes as well as by rows: a page holds at most `batch_size` rows and
stops at about PAGE_BYTES of stored values (or one row, when a single row is larger), and
all pages between their read and the end of their life (their commit, or the census
counting them) hold at most BYTES_IN_FLIGHT of stored values together, across the reader,
the crypto workers and the writer (or one page alone, when it is larger). With ordinary
rows the budget never binds (five pages in flight hold a few MB); with heavy rows it keeps
one page in flight, and each process then holds a few copies of one page at most (the
value read, its new value, and their passage through a pipe).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Iterator

from keyrotate.dataplane.workers import CryptoRunner, PageResult
from keyrotate.db.base import PAGE_BYTES, RowStore, Salt, Target, Value, page_weight

BYTES_IN_FLIGHT = 8 << 20


class InFlight:
    """A byte budget shared by the reader (takes) and whoever ends a page's life (gives)."""

    def __init__(self, limit: int = BYTES_IN_FLIGHT):
        self.limit, self.used = limit, 0
        self._cond = threading.Condition()

    def room(self, n: int, wait: bool) -> bool:
        """Whether n more bytes fit now (anything fits when nothing is in flight); with
        `wait`, block until they do."""
        with self._cond:
            while self.used and self.used + n > self.limit:
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


def page_results(store: RowStore, target: Target, runner: CryptoRunner, op: str,
                 batch_size: int, after: Value = None, first: bool = True,
                 page_bytes: int = PAGE_BYTES, salt: Salt | None = None,
                 budget: InFlight | None = None) -> Iterator[PageResult]:
    """Yield one PageResult per keyset page, in key order. A page holds at most
    `batch_size` rows and about `page_bytes` of values (at least one row). With a
    budget, each page's stored bytes (`page.bytes`) are taken from it before the page goes
    to the workers: the consumer gives them back when it is done with the page.
    `salt`: the census's witness (rows carry rowids)."""
    inflight: deque[tuple[Any, int, Any]] = deque()
    exhausted = False
    largest = 0          # the heaviest page so far: what the next one may weigh
    while True:
        while not exhausted and len(inflight) < runner.depth:
            # room for another page like the heaviest so far, before reading it (with
            # pages in flight, yield them rather than wait; with none, wait for the consumer
            # to give bytes back), so the reader never holds a page the budget cannot take
            if budget is not None and not budget.room(largest, wait=not inflight):
                break
            rows = store.scan_page(target, after, first, batch_size, page_bytes)
            if not rows:
                exhausted = True
                break
            first, after = False, rows[-1][0]
            n = page_weight(rows)
            largest = max(largest, n)
            if budget is not None:
                budget.take(n)
            inflight.append((runner.submit(rows, op, salt), n, rows))
            del rows
        if not inflight:
            return
        future, n, rows = inflight.popleft()
        page = future.result().rejoined(rows)
        del future, rows
        page.bytes = n
        yield page
