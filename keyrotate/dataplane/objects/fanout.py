"""Keeping up to N requests in flight to a Worker endpoint, with ids sent again later
when an object asks for it (retry, conflict, stale key), and the database touched only
from the calling thread (row stores have one owner).

Objects that answer "retry" are overloaded (on Cloudflare, or a local runtime out of
room for live objects): when most of a batch comes back, fewer requests go out (halved,
down to one, then paced with growing pauses), and the limit grows back by one with
every batch that comes back clean. More requests would only be answered "retry" too."""

from __future__ import annotations

import heapq
import itertools
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, Iterable, Iterator, Sequence

from keyrotate.dataplane.objects.wire import ObjectResult

Send = Callable[[Sequence[str]], list[ObjectResult]]
# given the ids of a request and their results: (id, seconds from now) to send again
Handle = Callable[[Sequence[str], list[ObjectResult]], list[tuple[str, float]]]


def fan_out(batches: Iterable[list[str]], send: Send, handle: Handle, concurrency: int,
            batch_size: int, before_send: Callable[[Sequence[str]], None] = lambda ids: None) -> None:
    """Send every batch, at most `concurrency` at a time; ids `handle` gives back are sent
    again once their delay has passed, grouped into batches. Returns when nothing is left.
    An error from a request (after its own retries) stops everything and is raised."""
    fresh: Iterator[list[str]] = iter(batches)
    later: list[tuple[float, int, str]] = []   # (ready at, tie-breaker, id)
    order = itertools.count()
    inflight: dict[Future[list[ObjectResult]], Sequence[str]] = {}
    exhausted = False
    pace = _Pace(concurrency)
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="keyrotate-objects") as pool:
        try:
            while True:
                while len(inflight) < pace.limit and pace.ready():
                    batch = _ready(later, batch_size)
                    if not batch and not exhausted:
                        batch = next(fresh, None) or []
                        exhausted = not batch
                    if not batch:
                        break
                    before_send(batch)
                    inflight[pool.submit(send, batch)] = batch
                if not inflight:
                    if not later and exhausted:
                        return
                    due = later[0][0] - time.monotonic() if later else 0.01
                    time.sleep(min(1.0, max(pace.wait(), due, 0.0)))
                    continue
                timeout = max(0.01, later[0][0] - time.monotonic()) if later else None
                done, _ = wait(inflight, timeout=timeout, return_when=FIRST_COMPLETED)
                for future in done:
                    ids = inflight.pop(future)
                    again = handle(ids, future.result())
                    pace.observe(sum(1 for _, delay in again if delay > 0) / max(1, len(ids)))
                    for i, delay in again:
                        heapq.heappush(later, (time.monotonic() + delay, next(order), i))
        except BaseException:
            for future in inflight:
                future.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _ready(later: list[tuple[float, int, str]], batch_size: int) -> list[str]:
    now, batch = time.monotonic(), []
    while later and later[0][0] <= now and len(batch) < batch_size:
        batch.append(heapq.heappop(later)[2])
    return batch


class _Pace:
    """Additive increase, multiplicative decrease of the requests in flight."""

    def __init__(self, ceiling: int):
        self.ceiling = self.limit = ceiling
        self.pause, self.until = 0.0, 0.0

    def observe(self, busy: float) -> None:
        if busy >= 0.5:
            if self.limit > 1:
                self.limit //= 2
            else:
                self.pause = min(max(self.pause * 2, 0.25), 5.0)
                self.until = time.monotonic() + self.pause
        elif busy == 0:
            self.limit = min(self.ceiling, self.limit + 1)
            self.pause = 0.0

    def ready(self) -> bool:
        return time.monotonic() >= self.until

    def wait(self) -> float:
        return max(0.0, self.until - time.monotonic())
