"""Keyset pages in, page results out, with a few pages in flight so reads, crypto and
writes overlap. Shared by reencrypt and verify."""

from __future__ import annotations

from collections import deque
from typing import Any, Iterator

from keyrotate.dataplane.workers import CryptoRunner, PageResult
from keyrotate.db.base import PAGE_BYTES, RowStore, Salt, Target, Value


def page_size(store: RowStore, requested: int | None) -> int:
    """The page size asked for, else the store's preference (remote stores want fuller pages)."""
    return requested or store.preferred_batch_size


def page_results(store: RowStore, target: Target, runner: CryptoRunner, op: str,
                 batch_size: int, after: Value = None, first: bool = True,
                 page_bytes: int = PAGE_BYTES, salt: Salt | None = None) -> Iterator[PageResult]:
    """Yield one PageResult per keyset page, in key order. A page holds at most
    `batch_size` rows and about `page_bytes` of values (at least one row), so memory
    stays flat whatever the rows weigh. `salt`: the census's witness (rows carry rowids)."""
    inflight: deque[Any] = deque()
    exhausted = False
    while True:
        while not exhausted and len(inflight) < runner.depth:
            rows = store.scan_page(target, after, first, batch_size, page_bytes)
            if not rows:
                exhausted = True
                break
            first, after = False, rows[-1][0]
            inflight.append(runner.submit(rows, op, salt))
        if not inflight:
            return
        yield inflight.popleft().result()
