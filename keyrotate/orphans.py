"""No process keyrotate starts outlives it, even when keyrotate is killed with SIGKILL
(a crypto worker would linger forever; a `wrangler secret bulk` left running could finish
a push keyrotate never learns of)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time
from typing import Callable

_PR_SET_PDEATHSIG = 1


def on_parent_death(parent_pid: int, sig: int, then: Callable[[], None]) -> None:
    """Ask the kernel for `sig` when the parent dies (Linux), and watch for it too (any
    system, and the moment between fork and this call): `then` runs if it has died."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig)
    except (OSError, AttributeError):
        pass

    def watchdog() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        then()

    if os.getppid() != parent_pid:
        then()
    threading.Thread(target=watchdog, name="keyrotate-parent-watchdog", daemon=True).start()


def exit_now() -> None:
    os._exit(1)

