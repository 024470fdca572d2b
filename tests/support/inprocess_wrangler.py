"""The fake wrangler run inside the test process, in place of a child process.

Why: each wrangler command keyrotate runs is two Python start-ups under the fake
(keyrotate's guard in keyrotate/cloudflare/runner.py, then tests/support/fake_wrangler.py),
about 110 ms of the 125 ms a command takes here, and a control-plane test runs a hundred
of them. In process, the fake gets the same argv, stdin, environment and working folder,
and keyrotate gets the same exit code and (redacted) output back.

What this leaves out, and where it is still tested: the guard and the process tree (tests
marked `real_wrangler`, which run the real wrangler as a child: the command-line and /proc
hygiene scans, a push killed midway; `subprocess_wrangler`, which run the fake as a
child), and the tests that run keyrotate itself as `python -m keyrotate.cli` (the
canaries cut short by SIGTERM, tests/cli/test_signals.py), whose wrangler commands are
children as in production. tests/support/clocked_cli.py runs the fake in its own process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from keyrotate.cloudflare import wrangler as wrangler_module
from keyrotate.cloudflare.runner import Completed, redact
from tests.support import fake_wrangler

Runner = Callable[..., Completed]
FAKE_WRANGLER = [sys.executable, fake_wrangler.__file__]   # a manifest's `wrangler = [...]`


def in_process_runner(fake_argv: Sequence[str], child: Runner) -> Runner:
    """A runner for keyrotate's wrangler commands: those whose argv starts with fake_argv
    run in this process, any other goes to `child` (keyrotate's own runner)."""
    prefix = list(fake_argv)

    def run(argv: Sequence[str], *, cwd: Path | None = None, stdin_secret: str | None = None,
            env: dict[str, str] | None = None, timeout: float = 300,
            redact_values: Sequence[str] = ()) -> Completed:
        if list(argv[:len(prefix)]) != prefix:
            return child(argv, cwd=cwd, stdin_secret=stdin_secret, env=env, timeout=timeout,
                         redact_values=redact_values)
        code, out, err = fake_wrangler.run_in_process(
            list(argv[len(prefix):]), stdin_secret or "",
            {**os.environ, "WRANGLER_SEND_METRICS": "false", **(env or {})},
            Path(cwd) if cwd is not None else Path.cwd())
        secrets = [stdin_secret or "", *redact_values]
        return Completed(tuple(argv), code, redact(out, secrets), redact(err, secrets))

    return run


def run_fake_in_process(fake_argv: Sequence[str]) -> Callable[[], None]:
    """From now on the fake runs in this process, and keyrotate retries a transient
    wrangler failure after 0.05 s, not 2 s (the tests check that it retries and what it
    does when the retries run out, not how long it waits); call the result to undo both."""
    child, delay = wrangler_module.run, wrangler_module.RETRY_DELAY
    wrangler_module.run = in_process_runner(fake_argv, child)
    wrangler_module.RETRY_DELAY = 0.05

    def undo() -> None:
        wrangler_module.run, wrangler_module.RETRY_DELAY = child, delay

    return undo
