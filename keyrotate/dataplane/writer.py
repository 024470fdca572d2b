"""One background thread that commits pages in order, so the main thread can keep
scanning and dispatching while SQLite writes and fsyncs (sqlite3 releases the GIL there).

Pages are handled strictly in the order they were put, so checkpoints only move forward.
While `gather()` > 1, pages that are already waiting when the thread takes one are handed
over with it (up to `gather`), to be committed in one transaction: on a file every commit
waits for the disk, so a writer that falls behind catches up with fewer, larger commits.
Every page put is released once (`release`), handled or dropped, so a byte budget the
reader waits on is always given back.
An error in the thread stops it and is re-raised in the caller at the next put or at
finish; the page being committed when the caller stops is always finished or rolled back
by SQLite, never torn.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Generic, TypeVar

T = TypeVar("T")
_STOP = object()


class OrderedWriter(Generic[T]):
    def __init__(self, handle: Callable[[list[T]], None], depth: int = 2,
                 release: Callable[[T], None] = lambda item: None,
                 gather: Callable[[], int] = lambda: 1):
        self._handle, self._release, self._gather = handle, release, gather
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="keyrotate-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            items, stopping = [item], False
            gather = self._gather()
            while len(items) < gather and not stopping:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                stopping = more is _STOP
                if not stopping:
                    items.append(more)
            try:
                if self._error is None:
                    self._handle(items)  # type: ignore[arg-type]
            except BaseException as e:  # surfaced in the caller's thread
                self._error = e
            finally:
                for it in items:
                    self._release(it)  # type: ignore[arg-type]
                items = []
                item = None   # drop the pages now, not at the next get
            if stopping:
                return

    def put(self, item: T) -> None:
        """Queue a page; waits while the writer is `depth` pages behind."""
        while True:
            self._raise_if_failed()
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        """Wait until every queued page is committed; re-raise the writer's error."""
        self._stop()
        self._raise_if_failed()

    def abandon(self) -> None:
        """Stop after the page in hand (used when interrupted): queued pages are dropped."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                self._release(item)  # type: ignore[arg-type]
        self._stop()

    def _stop(self) -> None:
        while self._thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=0.2)
                break
            except queue.Full:
                continue
        self._thread.join()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error
