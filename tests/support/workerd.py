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
from tests.support.services import free_port

WRANGLER = ROOT / "node_modules" / ".bin" / "wrangler"
RESTARTING = (502, 503)  # what wrangler dev answers while workerd restarts
PATIENCE = 60.0  # seconds a control call waits out a restart


def control_call(request: urllib.request.Request, timeout: float, patience: float = PATIENCE) -> bytes:
    """The body of one of the test harness's own calls to wrangler dev (seeding, reading
    tokens, flags), sent again while wrangler dev answers 502/503 because workerd is
    restarting: a restart is not what those calls test. Any other status raises at once.
    Only the harness comes here: keyrotate's own requests never do, so they still meet
    every restart and every fault the Worker injects (its keyrotate route, which this
    harness never calls, answers 503 and 429 on purpose)."""
    deadline = time.monotonic() + patience
    pause = 0.05
    while True:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            if e.code not in RESTARTING or time.monotonic() + pause > deadline:
                raise
            e.close()
        time.sleep(pause)
        pause = min(pause * 2, 1.0)


class DevWorker:
    def __init__(self, folder: Path, port: int, persist: Path | None = None, env: str | None = None):
        if not WRANGLER.exists():
            raise RuntimeError("wrangler is not installed: run `npm ci` (setup-dev.sh)")
        self.folder, self.port = folder, port
        self.url = f"http://127.0.0.1:{port}"
        # the devtools inspector listens too (9229 unless told): two wrangler dev at once,
        # on two test workers, would fight over it
        argv = [str(WRANGLER), "dev", "--port", str(port), "--ip", "127.0.0.1", "--log-level",
                "warn", "--inspector-port", str(free_port())]
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
        raise RuntimeError("wrangler dev did not start: " + self.log_tail())

    def log_tail(self) -> str:
        return (self.folder / "wrangler-dev.log").read_text(errors="replace")[-2000:]

    def get(self, path: str) -> Any:
        """The JSON body of a GET, whatever the status (the Worker's errors are JSON)."""
        try:
            return json.loads(control_call(urllib.request.Request(f"{self.url}{path}"), timeout=30))
        except urllib.error.HTTPError as e:
            return json.loads(e.read() or b"{}")

    def post(self, path: str, body: dict, timeout: float = 120) -> Any:
        req = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"}, method="POST")
        return json.loads(control_call(req, timeout=timeout))

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
