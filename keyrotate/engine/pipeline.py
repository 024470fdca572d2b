"""Keyset pages in, crypto outcomes out, with a few pages in flight so reads, crypto and
writes overlap. Shared by reencrypt and verify."""

from __future__ import annotations

from collections import deque
from typing import Any, Iterator

from keyrotate.engine.workers import CryptoRunner, Outcome
from keyrotate.store.base import RowStore, Target, Value, scan

Rows = list[tuple[Value, Value]]


def non_null_values(rows: Rows) -> list[Value]:
    return [v for _, v in rows if v is not None]


def pages_with_outcomes(store: RowStore, target: Target, runner: CryptoRunner, batch_size: int,
                        after: Value = None, first: bool = True) -> Iterator[tuple[Rows, list[Outcome]]]:
    """Yield (rows, outcomes) in key order; outcomes align with the rows' non-NULL values."""
    inflight: deque[tuple[Rows, Any]] = deque()
    exhausted = False
    while True:
        while not exhausted and len(inflight) < runner.depth:
            rows = scan(store, target, after, batch_size, first)
            if not rows:
                exhausted = True
                break
            first, after = False, rows[-1][0]
            inflight.append((rows, runner.submit(non_null_values(rows))))
        if not inflight:
            return
        rows, fut = inflight.popleft()
        yield rows, fut.result()
