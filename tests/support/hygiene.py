"""Scanning for leaked key material: every form a key could leak in, and a sampler of
every process's command line while work runs."""

from __future__ import annotations

import base64
import os
import threading
from pathlib import Path

from keyrotate.crypto.keys import derive_master_key


def key_forms(secret: str) -> list[bytes]:
    """Every form a leak could take: the string, the raw key, its hex and base64 forms."""
    raw = derive_master_key(secret)
    forms = [secret.encode(), raw, raw.hex().encode(), raw.hex().upper().encode(),
             base64.b64encode(raw), base64.urlsafe_b64encode(raw),
             base64.b64encode(raw).rstrip(b"="), base64.b64encode(secret.encode())]
    return forms


def assert_clean(blob: bytes, where: str, secrets: list[str]) -> None:
    for secret in secrets:
        for form in key_forms(secret):
            assert form not in blob, f"key material ({len(form)} bytes form) found in {where}"


class CmdlineSampler:
    """Reads /proc/*/cmdline of every process, over and over, while work runs."""

    def __init__(self) -> None:
        self.seen: set[bytes] = set()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        self.seen.add(Path(f"/proc/{pid}/cmdline").read_bytes())
                    except OSError:
                        pass
            self.samples += 1
            self._stop.wait(0.003)

    def __enter__(self) -> "CmdlineSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
