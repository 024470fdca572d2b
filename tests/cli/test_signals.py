"""SIGTERM and SIGINT stop every command with exit 3 and "run the same command again", as
the `rotation.paused` event claims: keyrotate runs as a real process and is signalled once
the Cloudflare API stand-in holds its push (observed progress, never a sleep)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.support.cloudflare_project import with_overlap
from tests.support.helpers import NEW_SECRET, ROOT, last_json, run_cli

pytestmark = pytest.mark.slow


def _signal_while_the_api_holds_a_push(cf, sig, *args):
    """Run keyrotate with `args`; once Cloudflare is answering its first push slowly,
    send `sig`. Returns (exit code, stdout, stderr)."""
    cf.worker_delay = 30.0       # Cloudflare is slow to answer: keyrotate waits inside the push
    proc = psutil.Popen([sys.executable, "-m", "keyrotate.cli", *args],
                        env=dict(os.environ, PYTHONPATH=str(ROOT)),
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not cf.slow_requests and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cf.slow_requests, "the push never reached the API"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    cf.worker_delay = 0.0
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signalled_push_exits_3_and_says_to_run_it_again(project, sig):
    root, cf, _, store = project
    assert run_cli("secrets", "push", "--env", "staging").exit_code == 0
    store.write_pending("JWT_SECRET", NEW_SECRET)  # a master key alone is refused: rows
    store.promote("JWT_SECRET")                    # sit under the old one
    code, out, err = _signal_while_the_api_holds_a_push(
        cf, sig, "secrets", "push", "--env", "staging", "--only", "JWT_SECRET", "--json")
    assert code == 3, (out, err)
    assert "interrupted: run the same command again" in err and "Traceback" not in err
    assert last_json(out)["error"] == {"type": "Interrupted", "exit_code": 3,
                                       "message": "interrupted: run the same command again"}


def test_a_signalled_rotation_exits_3_as_its_paused_event_says(project):
    root, cf, _, store = project
    with_overlap(root)
    assert run_cli("secrets", "push", "--env", "staging").exit_code == 0
    code, out, err = _signal_while_the_api_holds_a_push(
        cf, signal.SIGTERM, "rotate", "MASTER_KEY", "--env", "staging")
    assert code == 3, (out, err)
    assert "interrupted: run the same command again" in err and "Traceback" not in err
    events = [json.loads(line) for line in (root / ".keyrotate" / "audit-staging.jsonl")
              .read_text().splitlines()]
    paused = [e for e in events if e.get("event") == "rotation.paused"]
    assert paused and paused[-1]["detail"]["exit_code"] == code
