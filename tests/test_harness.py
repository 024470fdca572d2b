"""The test harness itself: its calls to wrangler dev wait out a workerd restart (502/503)
and nothing else, so a restart never fails a test and a real error is never hidden; and the
fake wrangler run inside the test process answers exactly as the fake run as a child."""

from __future__ import annotations

import http.server
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from keyrotate.cloudflare import runner
from tests.support.inprocess_wrangler import FAKE_WRANGLER, in_process_runner
from tests.support.workerd import control_call


class Scripted(http.server.ThreadingHTTPServer):
    """Answers each request with the next status of its script, then 200."""

    def __init__(self, statuses: list[int]):
        self.statuses, self.seen = list(statuses), 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                server: Scripted = self.server  # type: ignore[assignment]
                self.rfile.read(int(self.headers["content-length"]))
                server.seen += 1
                status = server.statuses.pop(0) if server.statuses else 200
                body = b'{"ok": true}' if status == 200 else b"restarting"
                self.send_response(status)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def scripted() -> Iterator:
    servers: list[Scripted] = []

    def make(statuses: list[int]) -> tuple[Scripted, urllib.request.Request]:
        server = Scripted(statuses)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        url = f"http://127.0.0.1:{server.server_address[1]}/test/seed"
        return server, urllib.request.Request(url, data=b'{"ids": []}', method="POST")

    yield make
    for s in servers:
        s.shutdown()
        s.server_close()


def test_a_control_call_waits_out_a_workerd_restart(scripted):
    server, request = scripted([503, 502, 503])
    assert control_call(request, timeout=5) == b'{"ok": true}'
    assert server.seen == 4  # the same request, sent again after each 502/503


@pytest.mark.parametrize("status", [500, 429, 404])
def test_a_control_call_never_retries_other_errors(scripted, status):
    server, request = scripted([status])
    with pytest.raises(urllib.error.HTTPError) as raised:
        control_call(request, timeout=5)
    assert raised.value.code == status and server.seen == 1


def test_a_control_call_gives_up_when_workerd_never_comes_back(scripted):
    server, request = scripted([503] * 1000)
    with pytest.raises(urllib.error.HTTPError) as raised:
        control_call(request, timeout=5, patience=0.5)
    assert raised.value.code == 503 and 2 <= server.seen < 1000


def test_the_fake_wrangler_in_process_answers_as_the_child_does(project):
    """Same exit code, stdout and stderr (redacted the same way), and the same effect on
    Cloudflare, for reads, a secret on stdin, an API error and a command it refuses."""
    root, cf, _, _ = project
    child = runner.run
    in_process = in_process_runner(FAKE_WRANGLER, child)
    worker = "tminus-api-staging"
    for name, run in (("FROM_CHILD", child), ("IN_PROCESS", in_process)):
        put = run([*FAKE_WRANGLER, "secret", "put", name, "--name", worker], cwd=root,
                  stdin_secret=f"value-of-{name}")
        assert put.returncode == 0 and "value-of" not in put.stdout + put.stderr, put
    assert {"FROM_CHILD", "IN_PROCESS"} <= set(cf.script(worker).active.secrets)
    for args in (["secret", "list", "--name", worker, "--format", "json"],
                 ["deployments", "list", "--name", worker, "--json"],
                 ["versions", "list", "--name", worker, "--json"],
                 ["secret", "list", "--name", "no-such-worker", "--format", "json"],
                 ["versions", "deploy", "no-such-version@100%", "--name", worker, "--yes"],
                 ["whoami"]):
        a = child([*FAKE_WRANGLER, *args], cwd=root)
        b = in_process([*FAKE_WRANGLER, *args], cwd=root)
        assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr), args
