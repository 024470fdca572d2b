"""A run whose end cannot commit because another run took its lease over (it stood still
past its heartbeats) must not report that other run's end as its own: the other run's
census proved the table at its own moment, not at this one's."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

from keyrotate.crypto.envelope import seal
from keyrotate.crypto.keys import MasterKey
from keyrotate.dataplane.journal import Journal
from tests.support.helpers import OLD_SECRET, big_reference_db, last_json, run_cli

TARGET = "accounts.encrypted_tokens"


def _reencrypt_argv(db) -> list[str]:
    return ["reencrypt", "--db", f"file:{db}", "--target", TARGET, "--old-key", "env:KR_OLD",
            "--new-key", "env:KR_NEW", "--workers", "0", "--json"]


def test_an_end_another_run_made_after_taking_the_lease_over_is_not_this_run_s(
        tmp_path, monkeypatch):
    db, _, env = big_reference_db(tmp_path, 300, "app.db")
    for name in ("KR_OLD", "KR_NEW"):
        monkeypatch.setenv(name, env[name])
    finish = Journal.finish
    other: list[subprocess.CompletedProcess] = []

    def stalled_at_its_end(*args, **kwargs):
        """This run has stopped its heartbeat and is about to commit its end: it stalls
        there until another run takes the lease over (it watches the heartbeat stand still)
        and finishes the same run; then the application writes a row under the old key."""
        if not other:
            other.append(subprocess.run([sys.executable, "-m", "keyrotate.cli",
                                         *_reencrypt_argv(db)], env=env, capture_output=True,
                                        timeout=300))
            conn = sqlite3.connect(db)
            (key,), = conn.execute("SELECT account_id FROM accounts ORDER BY account_id LIMIT 1")
            conn.execute("UPDATE accounts SET encrypted_tokens = ? WHERE account_id = ?",
                         (seal(b'{"access_token":"late"}', MasterKey.from_secret(OLD_SECRET),
                               with_kid=False), key))
            conn.commit()
            conn.close()
        return finish(*args, **kwargs)

    monkeypatch.setattr(Journal, "finish", staticmethod(stalled_at_its_end))
    res = run_cli(*_reencrypt_argv(db))
    assert other and other[0].returncode == 0, other[0].stderr.decode()[-2000:]
    assert last_json(other[0].stdout.decode())["status"] == "completed"
    # the row written after the other run's census is under the old key: this run proved
    # nothing about it, and says so (exit 3), rather than "completed"
    assert res.exit_code == 3, res.output
    assert last_json(res.output)["error"]["type"] == "LeaseLost"
