"""The demo's next steps run as printed, from a shell where keyrotate is not on PATH (the
README installs it into a virtualenv), and each shows what the demo says it will: a
rotation that does something, to a fresh key."""

from __future__ import annotations

import os
import subprocess

from tests.support.helpers import ROOT

SCRIPT = ROOT / ".venv" / "bin" / "keyrotate"
BARE_PATH = "/usr/local/bin:/usr/bin:/bin"


def _steps(text: str) -> list[tuple[str, str]]:
    lines = text.splitlines()
    commands = [ln.strip() for ln in lines if ln.startswith("       ")]
    shows = [ln.split("it shows: ", 1)[1] for ln in lines if ln.startswith("     it shows: ")]
    assert len(commands) == len(shows) == 4, text
    return list(zip(commands, shows))


def _sh(command: str, cwd) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True,
                          env={**env, "PATH": BARE_PATH}, timeout=300)


def test_the_next_steps_run_as_printed_and_show_what_they_say(tmp_path):
    # as the README has it: .venv/bin/keyrotate demo, typed from where the venv is
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "keyrotate").symlink_to(SCRIPT)
    (venv / "activate").write_text("# stand-in for the venv's activate script\n")
    demo = _sh(".venv/bin/keyrotate demo --rows 120", tmp_path)
    assert demo.returncode == 0, demo.stderr
    assert "not on your PATH" in demo.stdout and "source .venv/bin/activate" in demo.stdout
    steps = _steps(demo.stdout)
    assert all(c.startswith(".venv/bin/keyrotate ") for c, _ in steps)
    for command, shows in steps:
        res = _sh(command, tmp_path)
        assert res.returncode == 0, (command, res.stdout, res.stderr)
        assert shows in res.stdout + res.stderr, (command, shows, res.stdout, res.stderr)
    assert "rewritten 120" in [s for _, s in steps]
    assert _sh(steps[3][0], tmp_path).stdout.count("completed") == 2   # the demo's run and yours


def test_on_path_the_steps_say_plain_keyrotate(tmp_path):
    demo = subprocess.run([str(SCRIPT), "demo", "--rows", "10", "--dir", "d"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": f"{SCRIPT.parent}:{BARE_PATH}"})
    assert demo.returncode == 0, demo.stderr
    assert all(c.startswith("keyrotate ") for c, _ in _steps(demo.stdout))
    assert "not on your PATH" not in demo.stdout
