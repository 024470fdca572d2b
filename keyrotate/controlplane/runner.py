"""The one place keyrotate runs subprocesses.

Secrets go to a child on stdin, never in argv or the environment; what is logged of a
command is its argv (which never holds a secret) and a redacted tail of its output.
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from keyrotate.errors import DeployError

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
    """Run argv; the secret (if any) travels on stdin. Output comes back redacted."""
    secrets = [stdin_secret or "", *redact_values]
    log.debug("run: %s (cwd=%s)", " ".join(argv), cwd)
    try:
        proc = subprocess.run(list(argv), cwd=cwd, input=(stdin_secret or "").encode(),
                              capture_output=True, timeout=timeout,
                              env={**os.environ, "WRANGLER_SEND_METRICS": "false", **(env or {})})
    except FileNotFoundError:
        raise DeployError(f"cannot run {argv[0]!r}: not found") from None
    except subprocess.TimeoutExpired:
        raise DeployError(f"{' '.join(argv[:4])} timed out after {timeout:.0f} s") from None
    return Completed(tuple(argv), proc.returncode,
                     redact(proc.stdout.decode(errors="replace"), secrets),
                     redact(proc.stderr.decode(errors="replace"), secrets))
