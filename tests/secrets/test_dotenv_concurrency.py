"""Two keyrotate processes changing one .env at once (an operator's rotation and a
schedule's, each keeping the audit trail's head there): each change reads the file and
writes it whole, so without a lock the later write drops the earlier's line (review: 103
of 200 names left; a pending key vanished after its stage; a promote lost at --finish)."""

from __future__ import annotations

import subprocess
import sys

from keyrotate.secrets.dotenv import DotenvStore
from tests.support.helpers import ROOT

WRITER = """
import sys
from pathlib import Path
from keyrotate.secrets.dotenv import DotenvStore
path, who, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
store = DotenvStore(path)
print("ready", flush=True)
while not go.exists():
    pass
for i in range(n):
    store.write_new(f"K_{who}_{i}", "x" * 44)
    store.write_state("KEYROTATE_AUDIT_HEAD", f"{who}-{i}")
"""


def test_two_processes_changing_one_env_file_lose_nothing(tmp_path):
    path = tmp_path / ".env.staging"
    path.write_text("MASTER_KEY=" + "a" * 64 + "\n")
    path.chmod(0o600)
    go, n = tmp_path / "go", 60
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), who, str(n), str(go)],
                                cwd=ROOT, stdout=subprocess.PIPE)
               for who in ("A", "B")]
    for w in writers:   # both started and waiting: they change the file at the same moments
        assert w.stdout is not None and w.stdout.readline() == b"ready\n"
    go.touch()
    for w in writers:
        assert w.wait(timeout=300) == 0
    store = DotenvStore(str(path))
    names = set(store.names())
    missing = [f"K_{who}_{i}" for who in ("A", "B") for i in range(n) if f"K_{who}_{i}" not in names]
    assert not missing, f"{len(missing)} of {2 * n} writes lost, e.g. {missing[:5]}"
    assert store.read("MASTER_KEY") == "a" * 64


def test_a_stopped_holder_of_the_lock_is_waited_for_then_reported(tmp_path, monkeypatch):
    """Review: a keyrotate stopped (Ctrl-Z) while it held the .env's lock left every
    other command hanging, with no word. The wait is said, and given up after
    LOCK_PATIENCE with exit 3."""
    import fcntl
    import os

    from keyrotate import files
    from keyrotate.errors import SecretStoreUnavailable

    path = tmp_path / ".env.staging"
    path.write_text("MASTER_KEY=" + "a" * 64 + "\n")
    holder = os.open(tmp_path, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)   # what a stopped command holds
    monkeypatch.setattr(files, "LOCK_PATIENCE", 0.3)
    try:
        try:
            DotenvStore(str(path)).write_state("KEYROTATE_AUDIT_HEAD", "x")
        except SecretStoreUnavailable as e:
            assert e.exit_code == 3 and "stayed locked" in str(e)
        else:
            raise AssertionError("the change did not wait for the lock")
    finally:
        os.close(holder)
    DotenvStore(str(path)).write_state("KEYROTATE_AUDIT_HEAD", "x")   # free again: it goes
    assert DotenvStore(str(path)).read("KEYROTATE_AUDIT_HEAD") == "x"


def test_a_file_system_without_flock_is_a_clear_error(tmp_path, monkeypatch):
    """A network mount may refuse flock (ENOLCK): an error naming the file (exit 2), not a
    traceback, and the file unchanged."""
    import errno
    import fcntl

    from keyrotate.errors import SecretStoreError

    path = tmp_path / ".env.staging"
    path.write_text("MASTER_KEY=" + "a" * 64 + "\n")

    def refused(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refused)
    try:
        DotenvStore(str(path)).write_state("KEYROTATE_AUDIT_HEAD", "x")
    except SecretStoreError as e:
        assert e.exit_code == 2 and "cannot lock" in str(e) and "No locks available" in str(e)
    else:
        raise AssertionError("a refused lock was not reported")
    assert path.read_text() == "MASTER_KEY=" + "a" * 64 + "\n"
