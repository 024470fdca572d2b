"""Where the crypto runs: inline for small jobs, or in worker processes for large ones.

AES-GCM and JSON work hold the GIL, so threads cannot overlap them with the database
writes; processes can. A worker takes a page of raw (key, value) rows and hands back a
summary whose `writes` are ready for executemany, so the main process does no per-row
Python work at all. Workers get the codec (which holds the keys) through the pool
initializer, over a pipe, never through argv or the environment.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

from keyrotate.crypto.codecs import Codec
from keyrotate.db.base import CasWrite, Salt, Value, witness_sum
from keyrotate.errors import InvalidEnvelope
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


def _judge(fn: Any, value: Value) -> Any:
    """The codec's answer, or (reason,) for hostile input; never raises."""
    try:
        return fn(value)
    except InvalidEnvelope as e:
        return (e.reason,)
    except (ValueError, TypeError, UnicodeError, OverflowError, MemoryError) as e:
        # e.g. a payload too large for the JSON parser: hostile input, not our bug
        return (f"unreadable value ({type(e).__name__})",)


def process_page(codec: Codec, op: str, rows: Rows, salt: Salt | None = None) -> PageResult:
    """Apply one codec operation ("rotate" or "census") to every row of a page. With a
    salt, rows carry their rowid third, and the page sums its witness hash."""
    res = PageResult(rows=len(rows), last_key=rows[-1][0] if rows else None)
    census = op == "census"
    fn = codec.census if census else codec.rotate
    by_kid = res.by_kid
    if salt is not None:
        res.witness = witness_sum((row[2] for row in rows), salt)
    for row in rows:
        key, value = row[0], row[1]
        if value is None:
            res.null += 1
            continue
        out = _judge(fn, value)
        if out is None:
            res.current += 1
        elif out.__class__ is not str:
            res.failures.append((key, out[0]))
        elif census:
            by_kid[out] = by_kid.get(out, 0) + 1
        else:
            res.writes.append((out, key, value))
    return res


_codec: Codec | None = None


def _init_worker(codec: Codec, parent_pid: int) -> None:
    global _codec
    _codec = codec
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    # forked workers hold both ends of the task pipe: they would never see EOF
    on_parent_death(parent_pid, signal.SIGKILL, exit_now)


def _work(op: str, rows: Rows, salt: Salt | None) -> PageResult:
    assert _codec is not None
    return process_page(_codec, op, rows, salt)


class CryptoRunner:
    """submit(rows, op) -> Future[PageResult]; inline when workers == 0."""

    def __init__(self, codec: Codec, workers: int):
        self.codec, self.workers = codec, workers
        self.pool: ProcessPoolExecutor | None = None
        if workers > 0:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self.pool = ProcessPoolExecutor(max_workers=workers,
                                            mp_context=multiprocessing.get_context(method),
                                            initializer=_init_worker,
                                            initargs=(codec, os.getpid()))

    @property
    def depth(self) -> int:
        """How many pages to keep in flight."""
        return 1 if self.pool is None else 2 * self.workers + 1

    def submit(self, rows: Rows, op: str, salt: Salt | None = None) -> "Future[PageResult]":
        if self.pool is not None:
            return self.pool.submit(_work, op, rows, salt)
        fut: Future[PageResult] = Future()
        fut.set_result(process_page(self.codec, op, rows, salt))
        return fut

    def close(self, cancel: bool = False) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=not cancel, cancel_futures=cancel)
            self.pool = None


def default_workers(total_rows: int) -> int:
    """No processes for small jobs (start-up costs more than it saves)."""
    if total_rows < 20_000:
        return 0
    return max(1, min(2, os.cpu_count() or 1))
