"""Where the crypto runs: inline for small jobs, or in worker processes for large ones.

AES-GCM and JSON work hold the GIL, so threads cannot overlap them with the database
writes; processes can. A worker takes a page of raw (key, value) rows and hands back a
summary whose `writes` are ready for executemany, so the main process does no per-row
Python work at all. Workers get the codec (which holds the keys) through the pool
initializer, over a pipe, never through argv or the environment.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Sequence

from keyrotate.crypto.codecs import Codec
from keyrotate.dataplane.vouch import Vouch, Window, page_digests
from keyrotate.db.base import CasWrite, Salt, Value, witness_sum
from keyrotate.errors import InvalidEnvelope, WorkerLost
from keyrotate.orphans import exit_now, on_parent_death

Rows = Sequence[tuple[Value, ...]]   # (key, value[, rowid])


@dataclass
class PageResult:
    """What one page of rows came to. rotate: writes/current; census: by_kid."""

    rows: int = 0
    null: int = 0
    writes: list[CasWrite] = field(default_factory=list)
    current: int = 0
    by_kid: dict[str, int] = field(default_factory=dict)  # census: rows per opening key
    failures: list[tuple[Value, str]] = field(default_factory=list)
    last_key: Value = None
    bytes: int = 0
    witness: int = 0      # census: sum of the witness hash of the rows' rowids
    last: bool = False    # the read showed the end of the table (riding stores)
    # writes sent back from a worker process without their old value: (index in writes,
    # index in the page's rows); the reader, which still has the rows, puts it back
    # (rejoin), so a value crosses the pipe once, not twice (half the bytes back)
    rejoin: list[tuple[int, int]] = field(default_factory=list)
    # rotate, with a vouch key: the keyed digest of each row's value as the pass leaves it
    # when it opens under the new key (dataplane/vouch.py); census: rows taken on it
    # (counted in the reader: pipeline._census_vouched)
    vouched: bytes = b""
    trusted: int = 0

    def add(self, other: "PageResult") -> None:
        """Another part of the same page (rows a census took on the pass's word)."""
        self.rows += other.rows
        self.null += other.null
        self.trusted += other.trusted
        self.witness += other.witness
        self.failures += other.failures
        for kid, n in other.by_kid.items():
            self.by_kid[kid] = self.by_kid.get(kid, 0) + n

    def rejoined(self, rows: Rows) -> "PageResult":
        for w, r in self.rejoin:
            new, key, _ = self.writes[w]
            self.writes[w] = (new, key, rows[r][1])
        self.rejoin = []
        return self




def _judge(fn: Any, value: Value) -> Any:
    """The codec's answer, or (reason,) for hostile input; never raises."""
    try:
        return fn(value)
    except InvalidEnvelope as e:
        return (e.reason,)
    except (ValueError, TypeError, UnicodeError, OverflowError, MemoryError) as e:
        # e.g. a payload too large for the JSON parser: hostile input, not our bug
        return (f"unreadable value ({type(e).__name__})",)


def process_page(codec: Codec, op: str, rows: Rows, salt: Salt | None = None,
                 piped: bool = False, vouch: Vouch | None = None) -> PageResult:
    """Apply one codec operation ("rotate" or "census") to every row of a page. With a
    salt, rows carry their rowid third, and the page sums its witness hash. `piped`: the
    result goes back through a pipe, old values left for the reader to rejoin. `vouch`:
    rotate records the digest of every value it leaves opening under the new key (the
    census checks them in the reader: pipeline._census_vouched)."""
    res = PageResult(rows=len(rows), last_key=rows[-1][0] if rows else None)
    census = op == "census"
    fn = codec.census if census else codec.rotate
    by_kid = res.by_kid
    left: list[Value] | None = [] if vouch is not None and not census else None
    if salt is not None:
        res.witness = witness_sum((row[2] for row in rows), salt)
    for i, row in enumerate(rows):
        key, value = row[0], row[1]
        if value is None:
            res.null += 1
            if left is not None:
                left.append(None)
            continue
        out = _judge(fn, value)
        if out is None:
            res.current += 1
        elif out.__class__ is not str:
            res.failures.append((key, out[0]))
            if left is not None:   # nobody vouches for a row that fails
                left.append(None)
            continue
        elif census:
            by_kid[out] = by_kid.get(out, 0) + 1
        elif piped:   # the reader still has the old value: it need not come back
            res.rejoin.append((len(res.writes), i))
            res.writes.append((out, key, None))
        else:
            res.writes.append((out, key, value))
        if left is not None:   # what the row holds once the pass is done: it opens
            left.append(value if out is None else out)
    if left is not None and vouch is not None:
        res.vouched = page_digests(vouch[0], left)
    return res


def vouched_part(new_kid: str, rows: Rows, salt: Salt | None,
                 vouch: Vouch) -> tuple[PageResult, list[tuple[Value, ...]]]:
    """A census page against what the pass vouched for: the rows holding a value it
    verified, counted under the new key unopened (and witnessed), and the rest, to open."""
    trusted = Window(vouch).vouched([row[1] for row in rows])
    rest = [row for row, ok in zip(rows, trusted) if not ok]
    mine = PageResult(rows=len(rows) - len(rest), last_key=rows[-1][0] if rows else None)
    mine.trusted = mine.rows
    if mine.trusted:
        mine.by_kid[new_kid] = mine.trusted
    if salt is not None:
        mine.witness = witness_sum((row[2] for row, ok in zip(rows, trusted) if ok), salt)
    return mine, rest


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3   # glibc's mallopt parameters
MMAP_FROM = 1 << 20     # blocks this large get their own mapping, returned when freed
TRIM_FROM = 4 << 20     # free memory at the top of the heap kept for reuse, at most


def return_large_blocks_to_the_os() -> None:
    """glibc raises its mmap threshold each time it frees a large mmapped block (up to 32
    MB): from then on, blocks of that size come from the heap, which keeps them resident
    after they are freed, so every heavy page grew the process. A fixed threshold keeps
    blocks of 1 MB and more mmapped, each going back to the OS when freed. Fixing it also
    fixes the heap's trim threshold, at 128 KB: trimming that eagerly costs a system call
    and fresh page faults for every page of ordinary rows, so it is set to 4 MB. (glibc
    only; elsewhere nothing changes.)"""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_FROM)
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_FROM)
    except (OSError, AttributeError):
        pass


def _ready() -> None:
    """A no-op: submitted once so the pool forks its workers while this process is small."""


_codec: Codec | None = None


def _init_worker(codec: Codec, parent_pid: int) -> None:
    global _codec
    _codec = codec
    return_large_blocks_to_the_os()   # inherited across fork; not across spawn
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    # the CLI's SIGTERM handler (KeyboardInterrupt) is inherited across fork: a worker the
    # pool terminates (another worker died) would print a traceback; it just ends
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # forked workers hold both ends of the task pipe: they would never see EOF
    on_parent_death(parent_pid, signal.SIGKILL, exit_now)


def _work(op: str, rows: Rows, salt: Salt | None, vouch: Vouch | None) -> PageResult:
    assert _codec is not None
    return process_page(_codec, op, rows, salt, piped=True, vouch=vouch)


def worker_codec() -> Codec:
    """The codec of this worker process (given by the pool's initializer)."""
    assert _codec is not None
    return _codec


WATCH_SECONDS = 1.0   # how often a wait for a page looks whether a worker died
_ABANDONED: list[ProcessPoolExecutor] = []


class CryptoRunner:
    """submit(rows, op) -> Future[PageResult]; inline when workers == 0."""

    def __init__(self, codec: Codec, workers: int):
        self.codec, self.workers = codec, workers
        self.pool: ProcessPoolExecutor | None = None
        self.broken = False     # a worker died: the pool is abandoned, never waited for
        return_large_blocks_to_the_os()
        if workers > 0:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self.pool = ProcessPoolExecutor(max_workers=workers,
                                            mp_context=multiprocessing.get_context(method),
                                            initializer=_init_worker,
                                            initargs=(codec, os.getpid()))
            self.wait(_lost_as_resumable(self.pool.submit(_ready), self))  # fork now, before any page is read

    @property
    def depth(self) -> int:
        """How many pages to keep in flight."""
        return 1 if self.pool is None else 2 * self.workers + 1

    def submit(self, rows: Rows, op: str, salt: Salt | None = None,
               vouch: Vouch | None = None) -> "Future[PageResult]":
        if self.pool is not None:
            return self.call(_work, op, rows, salt, vouch)
        fut: Future[PageResult] = Future()
        fut.set_result(process_page(self.codec, op, rows, salt, vouch=vouch))
        return fut

    def call(self, fn: Any, *args: Any) -> "Future[Any]":
        """fn(*args) in a worker (a module-level function, its arguments picklable)."""
        assert self.pool is not None
        try:
            return _lost_as_resumable(self.pool.submit(fn, *args), self)
        except BrokenProcessPool:
            self.broken = True
            raise WorkerLost() from None

    def wait(self, future: "Future[Any]") -> Any:
        """future.result(), watching the workers: one that died while writing its answer
        leaves the pool's result pipe half written, and CPython's pool then neither
        resolves a future nor notices (its reader blocks on the rest): WorkerLost."""
        while True:
            try:
                return future.result(timeout=WATCH_SECONDS)
            except FutureTimeout:
                if self._a_worker_died():
                    self.broken = True
                    raise WorkerLost() from None

    def _a_worker_died(self) -> bool:
        processes = getattr(self.pool, "_processes", None) or {}   # CPython's: pid -> Process
        return any(p.exitcode is not None for p in list(processes.values()))

    def close(self, cancel: bool = False) -> None:
        if self.pool is not None:
            if self.broken or self._a_worker_died():
                _abandon(self.pool)
            else:
                self.pool.shutdown(wait=not cancel, cancel_futures=cancel)
            self.pool = None


def _abandon(pool: ProcessPoolExecutor) -> None:
    """A pool a dead worker broke: the workers left are killed and its threads not waited
    for (they may be stuck on a pipe the dead worker left half written, or one nobody reads
    any more); the program leaves without joining them (cli.run)."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    _ABANDONED.append(pool)


def pools_abandoned() -> bool:
    """Whether this process left a broken pool's threads behind (then it must leave with
    os._exit: the interpreter would wait for them at exit, forever)."""
    return bool(_ABANDONED)


def _lost_as_resumable(inner: "Future[Any]", runner: CryptoRunner) -> "Future[Any]":
    """The pool's future, with a dead worker (BrokenProcessPool, a traceback and exit 1)
    turned into WorkerLost: exit 3, run the same command again."""
    outer: Future[Any] = Future()

    def settle(done: "Future[Any]") -> None:
        if done.cancelled():
            outer.cancel()
            return
        error = done.exception()
        if isinstance(error, BrokenProcessPool):
            runner.broken = True
            outer.set_exception(WorkerLost())
        elif error is not None:
            outer.set_exception(error)
        else:
            outer.set_result(done.result())

    inner.add_done_callback(settle)
    return outer


def default_workers(total_rows: int) -> int:
    """No processes for small jobs (start-up costs more than it saves)."""
    if total_rows < 20_000:
        return 0
    return max(1, min(2, os.cpu_count() or 1))
