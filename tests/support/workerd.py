"""The real Workers runtime for tests: `wrangler dev` (workerd, local Durable Objects and
local D1), in its own process group, stopped by group (npx would leave orphans)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.helpers import ROOT

WRANGLER = ROOT / "node_modules" / ".bin" / "wrangler"


class DevWorker:
    def __init__(self, folder: Path, port: int, persist: Path | None = None, env: str | None = None):
        if not WRANGLER.exists():
            raise RuntimeError("wrangler is not installed: run `npm ci` (setup-dev.sh)")
        self.folder, self.port = folder, port
        self.url = f"http://127.0.0.1:{port}"
        argv = [str(WRANGLER), "dev", "--port", str(port), "--ip", "127.0.0.1", "--log-level", "warn"]
        if persist is not None:
            argv += ["--persist-to", str(persist)]
        if env is not None:
            argv += ["--env", env]
        self.log = open(folder / "wrangler-dev.log", "ab")
        self.proc = subprocess.Popen(
            argv, cwd=folder, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "WRANGLER_SEND_METRICS": "false", "CI": "true"})
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2)
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("wrangler dev did not start: " + (folder / "wrangler-dev.log").read_text()[-2000:])

    def get(self, path: str) -> Any:
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            return json.loads(e.read() or b"{}")

    def post(self, path: str, body: dict, timeout: float = 120) -> Any:
        req = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()


def dev_vars(folder: Path, **values: str) -> None:
    """The secrets a dev Worker reads (what a push gives the deployed one), file 0600."""
    from keyrotate.files import atomic_write_secret

    atomic_write_secret(str(folder / ".dev.vars"), "".join(f"{k}={v}\n" for k, v in values.items()))
