"""The one place keyrotate runs subprocesses.

Secrets go to a child on stdin, never in argv or the environment; what is logged of a
command is its argv (which never holds a secret) and a redacted tail of its output.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from keyrotate.errors import DeployError, DeployUnavailable
from keyrotate.orphans import on_parent_death

log = logging.getLogger("keyrotate.run")


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def redact(text: str, secrets: Sequence[str]) -> str:
    """Remove every secret value from text before it is logged or shown."""
    for s in secrets:
        if s:
            text = text.replace(s, "[redacted]")
    return text


def run(argv: Sequence[str], *, cwd: Path | None = None, stdin_secret: str | None = None,
        env: dict[str, str] | None = None, timeout: float = 300,
        redact_values: Sequence[str] = ()) -> Completed:
    """Run argv; the secret (if any) travels on stdin. Output comes back redacted.

    The command runs under a guard (this module, run as a program) that dies with
    keyrotate and then takes the command's whole process group down: `npx wrangler` is
    node under npm, and a push left running after keyrotate was killed could finish
    unseen."""
    if shutil.which(argv[0]) is None and not os.path.exists(argv[0]):
        raise DeployError(f"cannot run {argv[0]!r}: not found")
    secrets = [stdin_secret or "", *redact_values]
    log.debug("run: %s (cwd=%s)", " ".join(argv), cwd)
    guarded = [sys.executable, "-m", "keyrotate.cloudflare.runner", str(os.getpid()), *argv]
    proc = subprocess.Popen(guarded, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            env={**os.environ, "WRANGLER_SEND_METRICS": "false", **(env or {})})
    try:
        out, err = proc.communicate((stdin_secret or "").encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the guard takes the command's group down with it
        proc.communicate()
        raise DeployUnavailable(f"{' '.join(argv[:4])} timed out after {timeout:.0f} s") from None
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    return Completed(tuple(argv), proc.returncode, redact(out.decode(errors="replace"), secrets),
                     redact(err.decode(errors="replace"), secrets))


def _guard(parent_pid: int, argv: list[str]) -> int:
    """The guard: argv in a process group of its own, and the whole group killed when
    keyrotate dies (the kernel's parent-death signal; a watchdog where there is none)."""
    child = subprocess.Popen(argv, start_new_session=True)

    def stop(*_: object) -> None:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os._exit(1)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    on_parent_death(parent_pid, signal.SIGTERM, stop)
    return child.wait()


if __name__ == "__main__":
    sys.exit(_guard(int(sys.argv[1]), sys.argv[2:]))
