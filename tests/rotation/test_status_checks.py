"""`status` is a scheduled check: what it could not read (a missing store, a secret with no
recorded age, a table it could not count) is a finding, never a silent pass. Exit 1, each
one named, no age metric for it, `keyrotate_status_errors` above 0, and a
`secret.unchecked` event to the sinks."""

from __future__ import annotations

import re
import sqlite3

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from keyrotate.demo.build import build_reference_db
from keyrotate.secrets.dotenv import DotenvStore
from tests.support.helpers import OLD_SECRET, last_json, run_cli
from tests.support.webhook_receiver import Receiver

SIGNING = "whsec-status-test-signing-secret-0123"


@pytest.fixture
def app(tmp_path, monkeypatch):
    """A scratch project: one database, a .env store named by the manifest but not yet
    written (as after `keyrotate init` with the store path mistyped or not created)."""
    build_reference_db(str(tmp_path / "staging.db"), 20, OLD_SECRET)
    (tmp_path / "keyrotate.toml").write_text('''
[project]
name = "app"
worker_name = "app-{worker}-{env}"
deploy_order = ["api"]

[environments.staging]
database = "file:staging.db"
secrets = "dotenv:.env.staging"

[secrets.MASTER_KEY]
kind = "master-key"
workers = ["api"]

[secrets.JWT_SECRET]
kind = "jwt-hs256"
workers = ["api"]

[[encrypted]]
secret = "MASTER_KEY"
table = "accounts"
column = "encrypted_tokens"
''')
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _fill_store(root):
    store = DotenvStore(str(root / ".env.staging"))
    for name, value in (("MASTER_KEY", OLD_SECRET), ("JWT_SECRET", "jwt-secret-for-status-0123456789")):
        store.write_pending(name, value)
        store.promote(name)


def _metrics(text):
    return {(s.name, s.labels.get("secret"), s.labels.get("key")): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_missing_store_fails_the_check_and_names_what_could_not_be_read(app):
    res = run_cli("status", "--env", "staging", "--due", "90d")
    assert res.exit_code == 1, res.output
    assert "MASTER_KEY" in res.output and "NOT CHECKED" in res.output
    assert re.search(r"no value at dotenv:\S*\.env\.staging#MASTER_KEY", res.output)
    assert re.search(r"dotenv:\S*\.env\.staging holds no secrets", res.output)

    out = last_json(run_cli("status", "--env", "staging", "--due", "90d", "--json").output)
    assert out["unchecked"] == ["MASTER_KEY", "JWT_SECRET"] and out["due"] == []
    assert {e["secret"] for e in out["errors"]} == {"MASTER_KEY", "JWT_SECRET"}

    om = run_cli("status", "--env", "staging", "--due", "90d", "--format", "openmetrics")
    assert om.exit_code == 1
    m = _metrics(om.output)
    assert m[("keyrotate_status_errors", "MASTER_KEY", None)] >= 1
    assert not any(name in ("keyrotate_secret_age_seconds", "keyrotate_secret_due", "keyrotate_rows")
                   for name, _, _ in m)


def test_a_clean_status_has_no_errors_and_exits_0(app):
    _fill_store(app)
    res = run_cli("status", "--env", "staging", "--due", "90d", "--format", "openmetrics")
    assert res.exit_code == 0, res.output
    m = _metrics(res.output)
    assert m[("keyrotate_status_errors", "MASTER_KEY", None)] == 0
    assert m[("keyrotate_rows", "MASTER_KEY", "current")] == 20
    assert ("keyrotate_secret_age_seconds", "MASTER_KEY", None) in m


def test_a_secret_with_no_recorded_age_is_not_checked(app):
    (app / ".env.staging").write_text(f"MASTER_KEY={OLD_SECRET}\nJWT_SECRET=jwt-secret-by-hand-0123456789\n")
    res = run_cli("status", "--env", "staging", "--due", "90d", "--json")
    assert res.exit_code == 1
    out = last_json(res.output)
    assert out["unchecked"] == ["MASTER_KEY", "JWT_SECRET"]
    assert "no record of when it was set" in out["errors"][0]["message"]
    # the rows were still counted: what could be read is reported
    assert out["secrets"][0]["rows"]["accounts.encrypted_tokens"]["current"] == 20


def test_rows_that_cannot_be_counted_are_named_and_fail_the_check(app):
    _fill_store(app)
    conn = sqlite3.connect(app / "staging.db")
    conn.execute("ALTER TABLE accounts RENAME TO accounts_old")
    conn.commit()
    conn.close()
    res = run_cli("status", "--env", "staging", "--format", "openmetrics")
    assert res.exit_code == 1
    m = _metrics(res.output)
    assert m[("keyrotate_status_errors", "MASTER_KEY", None)] == 1
    assert m[("keyrotate_status_errors", "JWT_SECRET", None)] == 0
    assert not any(name == "keyrotate_rows" for name, _, _ in m)
    text = run_cli("status", "--env", "staging").output
    assert "accounts.encrypted_tokens not counted" in text


def test_notify_tells_the_sinks_what_could_not_be_checked(app, monkeypatch):
    hook = Receiver(SIGNING)
    try:
        monkeypatch.setenv("HOOK_URL", hook.url)
        monkeypatch.setenv("HOOK_SECRET", SIGNING)
        with (app / "keyrotate.toml").open("a") as f:
            f.write('\n[notify]\nsinks = [{ url = "env:HOOK_URL", format = "json", '
                    'secret = "env:HOOK_SECRET" }]\n')
        res = run_cli("status", "--env", "staging", "--due", "90d", "--notify", "--json")
        assert res.exit_code == 1, res.output
        events = [(b["event"], b["secret"]) for b in hook.accepted]
        assert events == [("secret.unchecked", "MASTER_KEY"), ("secret.unchecked", "JWT_SECRET")]
        assert re.search(r"no value at dotenv:\S*#MASTER_KEY", hook.accepted[0]["summary"])
        assert all(n["ok"] for n in last_json(res.output)["notified"])
    finally:
        hook.stop()


def test_rows_a_census_did_not_reach_are_named_once_and_leave_the_target_uncounted(app, monkeypatch):
    """Objects that never answered (or rows paging did not reach) are one finding, "could
    not be counted", not also rows that "open under no value"; and a target half counted
    gets no keyrotate_rows, like a target not counted at all."""
    from keyrotate.targets import secret_targets

    _fill_store(app)
    real = secret_targets._census_by_slot

    def three_unreached(*args, **kwargs):
        out = real(*args, **kwargs)
        for census, _ in out:
            census.unreached = 3
            census.by_kid = {k: n - 3 for k, n in census.by_kid.items()}
        return out

    monkeypatch.setattr(secret_targets, "_census_by_slot", three_unreached)
    out = last_json(run_cli("status", "--env", "staging", "--json").output)
    errors = [e["message"] for e in out["errors"] if e["secret"] == "MASTER_KEY"]
    assert len(errors) == 1 and "3 rows could not be counted" in errors[0], errors
    assert "accounts.encrypted_tokens" not in (out["secrets"][0]["rows"] or {})
    m = _metrics(run_cli("status", "--env", "staging", "--format", "openmetrics").output)
    assert not any(name == "keyrotate_rows" for name, _, _ in m)


def test_a_pending_value_with_no_rotation_open_is_a_finding(app):
    """Review: a promote lost to a concurrent rewrite of the .env left MASTER_KEY_PENDING
    (every row under it) with no rotation open, and status said nothing (exit 0)."""
    _fill_store(app)
    DotenvStore(str(app / ".env.staging")).write_pending("MASTER_KEY", "b" * 64)
    res = run_cli("status", "--env", "staging", "--json")
    assert res.exit_code == 1, res.output
    errors = [e["message"] for e in last_json(res.output)["errors"] if e["secret"] == "MASTER_KEY"]
    assert any("no rotation of MASTER_KEY is open" in m for m in errors), errors


def test_a_value_held_in_two_slots_counts_once(app):
    """Review: a keyring promote stopped midway holds the new value as current and as
    pending (or the old one as current and previous). The two slots gave the census the
    same key twice and the store's rows could not be counted, so the resumed rotation's
    preflight said no row opened under any value of the secret (exit 2, for good)."""
    _fill_store(app)
    DotenvStore(str(app / ".env.staging")).write_pending("MASTER_KEY", OLD_SECRET)
    out = last_json(run_cli("status", "--env", "staging", "--json").output)
    master = next(s for s in out["secrets"] if s["secret"] == "MASTER_KEY")
    assert master["rows"]["accounts.encrypted_tokens"]["current"] == 20, master
    assert not any("not counted" in m for m in master["errors"]), master["errors"]
