"""Where the crypto runs: inline for small jobs, or in worker processes for large ones.

AES-GCM and JSON work hold the GIL, so threads cannot overlap them with the database
writes; processes can. Workers get the codec (which holds the keys) through the pool
initializer, which travels over a pipe, never through argv or the environment.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Sequence

from keyrotate.crypto.codecs import Codec
from keyrotate.errors import InvalidEnvelope

Outcome = Any  # rotate: str (new value) | None (already current) | (reason,) ; census: "ok" | "old" | (reason,)

_codec: Codec | None = None
_PR_SET_PDEATHSIG = 1


def process_values(codec: Codec, op: str, values: Sequence[Any]) -> list[Outcome]:
    """Apply one codec operation to each value; a bad value becomes (reason,), never raises."""
    fn = codec.rotate if op == "rotate" else codec.census
    out: list[Outcome] = []
    for value in values:
        try:
            out.append(fn(value))
        except InvalidEnvelope as e:
            out.append((e.reason,))
        except (ValueError, TypeError, UnicodeError, OverflowError, MemoryError) as e:
            # e.g. a payload too large for the JSON parser: hostile input, not our bug
            out.append((f"unreadable value ({type(e).__name__})",))
    return out


def _die_with_parent(parent_pid: int) -> None:
    """A worker must not outlive a parent killed with SIGKILL: forked workers hold both
    ends of the task pipe, so they would never see EOF and would linger forever."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the watchdog below still works

    def watchdog() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=watchdog, name="keyrotate-parent-watchdog", daemon=True).start()


def _init_worker(codec: Codec, parent_pid: int) -> None:
    global _codec
    _codec = codec
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    _die_with_parent(parent_pid)


def _work(op: str, values: Sequence[Any]) -> list[Outcome]:
    assert _codec is not None
    return process_values(_codec, op, values)


class CryptoRunner:
    """submit(values) -> Future[list[Outcome]]; inline when workers == 0."""

    def __init__(self, codec: Codec, op: str, workers: int):
        self.codec, self.op, self.workers = codec, op, workers
        self.pool: ProcessPoolExecutor | None = None
        if workers > 0:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self.pool = ProcessPoolExecutor(max_workers=workers,
                                            mp_context=multiprocessing.get_context(method),
                                            initializer=_init_worker,
                                            initargs=(codec, os.getpid()))

    @property
    def depth(self) -> int:
        """How many batches to keep in flight."""
        return 1 if self.pool is None else 2 * self.workers + 1

    def submit(self, values: Sequence[Any]) -> "Future[list[Outcome]]":
        if self.pool is not None:
            return self.pool.submit(_work, self.op, values)
        fut: Future[list[Outcome]] = Future()
        fut.set_result(process_values(self.codec, self.op, values))
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
