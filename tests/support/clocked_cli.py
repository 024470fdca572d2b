"""keyrotate's command line in a process of its own, for kill -9 tests:

- KR_TEST_NOW (ISO 8601): keyrotate's clock stands at that time for the whole process;
- KR_TEST_STOP_AT: a point of a rotation's record, `started`, `step:NAME` or `ended:STATE`
  (or `store:promote`: right after a .env store's promote, before its step is recorded):
  right after that point is recorded, the process stops itself (SIGSTOP); committed with
  its audit event, except a step of REDONE_WHOLE, whose record rides with the next append. The test sees it stopped, checks the record, and kills it with SIGKILL there:
  between two steps, by observed progress, whatever the machine's speed.
- KR_TEST_PAUSE_FILE: instead of stopping, the main thread waits there, with every other
  thread (the lease's heartbeat) going on, and writes this file to say so; SIGUSR1 lets it
  go on. A stopped process's heartbeat stands still, and the next run takes its lease
  over; a paused one is a live holder.

The fake wrangler (tests/support/fake_wrangler.py) runs inside this process, as in the
tests' own (tests/support/inprocess_wrangler.py); a real wrangler is still a child. Leases
on a local file beat every 0.25 s here, not every second: a run after a kill -9 watches the
dead holder's lease stand still for three beats (and one second more), once per lease it
takes over. A watcher in the tests' own process keeps 1 s beats and watches longer, which
judges these holders the same.

    python tests/support/clocked_cli.py rollover --env staging
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from keyrotate import timeutil  # noqa: E402
from keyrotate.rotation.state import Recorder  # noqa: E402


def _pause(marker: str) -> None:
    go_on = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: go_on.set())
    Path(marker).write_text(str(os.getpid()))
    while not go_on.wait(0.05):   # the handler runs on this thread, between waits
        pass


def _stop_after(method: str, point: Callable[..., str], stop_at: str) -> None:
    real = getattr(Recorder, method)
    marker = os.environ.get("KR_TEST_PAUSE_FILE")

    def recorded_then_stop(self: Recorder, *args: Any, **kwargs: Any) -> None:
        real(self, *args, **kwargs)
        if point(*args) == stop_at:
            if marker:
                _pause(marker)
            else:
                os.kill(os.getpid(), signal.SIGSTOP)

    setattr(Recorder, method, recorded_then_stop)


def main() -> None:
    from keyrotate.dataplane import lease

    lease.BEAT_LOCAL = 0.25
    if os.environ.get("KR_TEST_NOW"):
        frozen = datetime.fromisoformat(os.environ["KR_TEST_NOW"])
        timeutil.use_clock(lambda: frozen)
    stop_at = os.environ.get("KR_TEST_STOP_AT")
    if stop_at == "store:promote":
        from keyrotate.secrets.dotenv import DotenvStore

        promote = DotenvStore.promote

        def promoted_then_stop(self: DotenvStore, name: str) -> None:
            promote(self, name)
            os.kill(os.getpid(), signal.SIGSTOP)

        DotenvStore.promote = promoted_then_stop  # type: ignore[method-assign]
    elif stop_at:
        _stop_after("started", lambda rot: "started", stop_at)
        _stop_after("step_done", lambda rot, step: f"step:{step}", stop_at)
        _stop_after("ended", lambda rot, state, **_: f"ended:{state}", stop_at)
    from keyrotate.cli import run as cli
    from tests.support.inprocess_wrangler import FAKE_WRANGLER, run_fake_in_process

    run_fake_in_process(FAKE_WRANGLER)

    cli()


if __name__ == "__main__":
    main()
