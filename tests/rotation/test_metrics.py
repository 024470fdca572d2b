"""`status --format openmetrics` and `--metrics-file`, read back with prometheus-client's
OpenMetrics parser (the format's reference implementation), not by string matching."""

from __future__ import annotations

import sqlite3

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from tests.support.cloudflare_project import with_overlap
from tests.support.helpers import OLD_SECRET, run_cli
from tests.support.hygiene import assert_clean

pytestmark = pytest.mark.slow


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "env")))] = s.value
    return out


def _rows(samples, key):
    return samples[("keyrotate_rows", (("key", key), ("secret", "MASTER_KEY"),
                                       ("target", "accounts.encrypted_tokens")))]


def test_metrics_follow_a_rotation(project):
    root, _, _, store = project
    with_overlap(root)
    before = run_cli("status", "--env", "staging", "--format", "openmetrics")
    assert before.exit_code == 0, before.output
    m = _samples(before.stdout)   # logs (a new audit key) go to stderr
    assert m[("keyrotate_secret_age_seconds", (("kind", "master-key"), ("secret", "MASTER_KEY")))] < 3600
    assert m[("keyrotate_secret_due", (("secret", "MASTER_KEY"),))] == 0
    assert m[("keyrotate_rotation_in_progress", (("secret", "MASTER_KEY"),))] == 0
    assert (_rows(m, "current"), _rows(m, "old"), _rows(m, "failed")) == (50, 0, 0)
    assert not any(name == "keyrotate_secret_last_rotation_timestamp_seconds" for name, _ in m)

    assert run_cli("rotate", "MASTER_KEY", "--env", "staging").exit_code == 0
    conn = sqlite3.connect(root / "staging.db")
    conn.execute("UPDATE accounts SET encrypted_tokens = 'garbage' WHERE account_id = 'acc_00000007'")
    conn.commit()
    conn.close()
    m = _samples(run_cli("status", "--env", "staging", "--format", "openmetrics").output)
    assert m[("keyrotate_rotation_in_progress", (("secret", "MASTER_KEY"),))] == 1
    info = [labels for name, labels in m if name == "keyrotate_rotation_info"]
    assert dict(info[0])["state"] == "awaiting-finish" and dict(info[0])["step"] == "verify"
    # rows are on the pending key: that is `current` for the rotation under way
    assert (_rows(m, "current"), _rows(m, "old"), _rows(m, "failed")) == (49, 0, 1)

    conn = sqlite3.connect(root / "staging.db")
    conn.execute("DELETE FROM accounts WHERE account_id = 'acc_00000007'")
    conn.commit()
    conn.close()
    assert run_cli("rotate", "MASTER_KEY", "--env", "staging", "--finish").exit_code == 0
    path = root / "metrics" / "keyrotate.prom"
    path.parent.mkdir()
    res = run_cli("status", "--env", "staging", "--due", "90d", "--metrics-file", str(path))
    assert res.exit_code == 0, res.output
    text = path.read_text()
    assert text.endswith("# EOF\n") and path.stat().st_mode & 0o777 == 0o644
    m = _samples(text)
    assert m[("keyrotate_rotation_in_progress", (("secret", "MASTER_KEY"),))] == 0
    assert m[("keyrotate_secret_last_rotation_timestamp_seconds", (("secret", "MASTER_KEY"),))] > 1.7e9
    assert (_rows(m, "current"), _rows(m, "old"), _rows(m, "failed")) == (49, 0, 0)
    assert_clean(text.encode(), "metrics", [OLD_SECRET, store.read("MASTER_KEY")])
    assert not list(path.parent.glob(".keyrotate-*"))   # no temp file left behind


def test_metrics_are_printed_even_when_a_secret_is_due(project):
    root = project[0]
    env = root / ".env.staging"
    env.write_text(env.read_text().replace("JWT_SECRET set 20", "JWT_SECRET set 19", 1))
    res = run_cli("status", "--env", "staging", "--due", "90d", "--format", "openmetrics")
    assert res.exit_code == 1
    assert _samples(res.stdout)[("keyrotate_secret_due", (("secret", "JWT_SECRET"),))] == 1


def test_the_metrics_file_is_replaced_not_followed_and_always_0644(tmp_path):
    """A symlink planted at the metrics path must not make keyrotate overwrite the file it
    points to; an existing 0600 file becomes 0644 (node_exporter reads it as another user)."""
    from keyrotate.rotation.openmetrics import write_metrics_file
    from keyrotate.rotation.status import StatusResult

    result = StatusResult("staging", [], "2026-11-29T00:00:00+00:00")
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o600)
    link = tmp_path / "keyrotate.prom"
    link.symlink_to(victim)
    write_metrics_file(result, str(link))
    assert victim.read_text() == "precious\n" and victim.stat().st_mode & 0o777 == 0o600
    assert not link.is_symlink() and link.read_text().endswith("# EOF\n")
    assert link.stat().st_mode & 0o777 == 0o644

    link.chmod(0o600)
    write_metrics_file(result, str(link))
    assert link.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keyrotate.prom", "victim"]
