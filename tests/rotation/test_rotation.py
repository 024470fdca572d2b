"""keyrotate rotate: MASTER_KEY with and without overlap, JWT, external secrets,
--compromised, resume after a failure, status. Wrangler (the fake, see tests/support/cloudflare_project.py) against the stand-in."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from tests.support.cloudflare_project import GOOGLE, JWT, _active, edit_manifest, with_overlap
from tests.support.helpers import OLD_SECRET, last_json, open_value, rows_of, run_cli
from tests.support.hygiene import assert_clean


def _rows_open_under(db, secret):
    return all(open_value(v.decode(), secret) is not None for v in rows_of(db).values() if v)


def test_master_key_with_overlap_then_finish(project):
    root, cf, _, store = project
    with_overlap(root)
    assert run_cli("secrets", "push", "--env", "staging").exit_code == 0
    plan = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--dry-run", "--json")
    assert [s["step"] for s in last_json(plan.output)["steps"]] == \
        ["stage", "introduce", "switch", "validate", "reencrypt", "verify"]
    assert store.read("MASTER_KEY", "pending") is None  # the dry run changed nothing

    res = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--json")
    assert res.exit_code == 0, res.output
    out = last_json(res.output)
    assert out["state"] == "awaiting-finish"
    new = store.read("MASTER_KEY", "pending")
    assert store.read("MASTER_KEY") == OLD_SECRET and new and new != OLD_SECRET
    for w in ("api", "oauth"):
        assert _active(cf, w)["MASTER_KEY"] == new and _active(cf, w)["MASTER_KEY_PREVIOUS"] == OLD_SECRET
    assert _rows_open_under(root / "staging.db", new)
    assert out["detail"]["verify"]["accounts.encrypted_tokens"]["old"] == 0

    waiting = run_cli("rotate", "MASTER_KEY", "--env", "staging")
    assert waiting.exit_code == 0 and "waiting for --finish" in waiting.output
    # flags asking for two things at once are refused, and change nothing
    for flags, said in ((("--abort", "--canary"), "--abort puts the old one back"),
                        (("--abort", "--compromised"), "compromise response of its own"),
                        (("--finish", "--compromised"), "compromise response of its own"),
                        (("--finish", "--abort"), "go opposite ways")):
        mixed = run_cli("rotate", "MASTER_KEY", "--env", "staging", *flags)
        assert mixed.exit_code == 2 and said in mixed.output, (flags, mixed.output)
        assert _active(cf, "api")["MASTER_KEY_PREVIOUS"] == OLD_SECRET

    # the version before the push has only the old key: rows are under the new one now
    refused = run_cli("rollback", "--env", "staging", "--only", "oauth", "--yes")
    assert refused.exit_code == 2 and "across a secret rotation" in refused.output

    done = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--finish", "--json")
    assert done.exit_code == 0 and last_json(done.output)["state"] == "finished"
    for w in ("api", "oauth"):
        assert "MASTER_KEY_PREVIOUS" not in _active(cf, w) and _active(cf, w)["MASTER_KEY"] == new
    assert store.read("MASTER_KEY") == new and store.read("MASTER_KEY", "previous") == OLD_SECRET

    audit = (root / ".keyrotate" / "audit-staging.jsonl").read_bytes()
    events = [(e["event"], e["step"]) for e in map(json.loads, audit.splitlines())]
    rotation = [e for e in events if e[0].startswith("rotation.")]
    assert rotation[0][0] == "rotation.started" and ("rotation.step", "verify") in rotation
    assert rotation[-1][0] == "rotation.finished"
    # every push the rotation made is in the same trail: intent, then done
    pushes = [e for e in map(json.loads, audit.splitlines()) if e["event"] == "worker.secrets"]
    assert {p["detail"]["state"] for p in pushes} == {"intent", "done"}
    assert {p["detail"]["worker"] for p in pushes} >= {"tminus-api-staging", "tminus-oauth-staging"}
    for blob, where in ((audit, "audit log"), (res.output.encode() + done.output.encode(), "output")):
        assert_clean(blob, where, [OLD_SECRET, new])


def test_a_failed_validate_resumes_without_repeating_steps(project):
    root, cf, health, store = project
    with_overlap(root)
    health.answers["oauth"] = (500, {"ok": False})
    failed = run_cli("rotate", "MASTER_KEY", "--env", "staging")
    assert failed.exit_code == 3 and "health check failed" in failed.output  # incomplete: run again
    staged = store.read("MASTER_KEY", "pending")
    pushes = sum(1 for m, p, _ in cf.log if m in ("PUT", "PATCH") and "/workers/scripts/" in p)
    assert staged and pushes == 4   # introduce and switch, on api and oauth

    health.answers.clear()
    resumed = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--json")
    assert resumed.exit_code == 0, resumed.output
    assert last_json(resumed.output)["state"] == "awaiting-finish"
    assert store.read("MASTER_KEY", "pending") == staged  # not generated again
    assert sum(1 for m, p, _ in cf.log if m in ("PUT", "PATCH") and "/workers/scripts/" in p) == pushes
    assert _rows_open_under(root / "staging.db", staged)


def test_jwt_without_previous_refuses_without_yes(project):
    _, cf, _, store = project
    refused = run_cli("rotate", "JWT_SECRET", "--env", "staging")
    assert refused.exit_code == 2 and "logs every user out" in refused.output
    assert store.read("JWT_SECRET", "pending") is None and not any(m == "PUT" for m, _, _ in cf.log)
    res = run_cli("rotate", "JWT_SECRET", "--env", "staging", "--yes", "--json")
    assert res.exit_code == 0, res.output
    new = store.read("JWT_SECRET")
    assert new != JWT and store.read("JWT_SECRET", "previous") == JWT
    assert _active(cf, "api")["JWT_SECRET"] == _active(cf, "oauth")["JWT_SECRET"] == new


def test_jwt_overlap_finish_waits_for_the_token_ttl(project):
    root, cf, _, store = project
    with_overlap(root, "JWT_SECRET", "jwt-hs256", extra="\nmax_token_ttl = \"1h\"")
    assert run_cli("rotate", "JWT_SECRET", "--env", "staging").exit_code == 0
    assert _active(cf, "api")["JWT_SECRET_PREVIOUS"] == JWT
    early = run_cli("rotate", "JWT_SECRET", "--env", "staging", "--finish")
    assert early.exit_code == 2 and "may live" in early.output
    forced = run_cli("rotate", "JWT_SECRET", "--env", "staging", "--finish", "--force", "--json")
    assert forced.exit_code == 0 and last_json(forced.output)["state"] == "finished"
    assert "JWT_SECRET_PREVIOUS" not in _active(cf, "api")


def test_external_secret_comes_from_stdin(project):
    from click.testing import CliRunner

    from keyrotate.cli import main

    _, cf, _, store = project
    # an obviously weak value is refused before it is stored or pushed
    weak = CliRunner().invoke(main, ["rotate", "GOOGLE_CLIENT_SECRET", "--env", "staging"],
                              input="acme42\n")
    assert weak.exit_code == 2 and "obviously weak" in weak.output and "acme42" not in weak.output
    assert store.read("GOOGLE_CLIENT_SECRET", "pending") is None
    assert _active(cf, "oauth").get("GOOGLE_CLIENT_SECRET") != "acme42"
    res = CliRunner().invoke(main, ["rotate", "GOOGLE_CLIENT_SECRET", "--env", "staging"],
                             input="new-google-secret-from-console\n")
    assert res.exit_code == 0, res.output
    assert "may be weak" in res.output    # about 100 bits: said, not refused
    assert "[ ] In the provider's console" in res.output
    assert "new-google-secret-from-console" not in res.output
    assert store.read("GOOGLE_CLIENT_SECRET") == "new-google-secret-from-console"
    assert store.read("GOOGLE_CLIENT_SECRET", "previous") == GOOGLE
    for w in ("oauth", "webhook"):
        assert _active(cf, w)["GOOGLE_CLIENT_SECRET"] == "new-google-secret-from-console"


def test_compromised_master_key(project):
    root, cf, _, store = project
    with_overlap(root)  # even with overlap configured, a compromise has none
    assert run_cli("secrets", "push", "--env", "staging").exit_code == 0
    before = {k: json.loads(v) for k, v in rows_of(root / "staging.db").items() if v}
    res = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--compromised", "--yes", "--json")
    assert res.exit_code == 0, res.output
    out = last_json(res.output)
    new = store.read("MASTER_KEY")
    assert out["state"] == "finished" and out["plan"] == "cutover" and new != OLD_SECRET
    after = {k: json.loads(v) for k, v in rows_of(root / "staging.db").items() if v}
    assert all(after[k]["iv"] != before[k]["iv"] for k in before)  # fresh DEKs and IVs
    assert _rows_open_under(root / "staging.db", new)
    for w in ("api", "oauth"):
        assert _active(cf, w)["MASTER_KEY"] == new and "MASTER_KEY_PREVIOUS" not in _active(cf, w)
    reports = sorted((root / ".keyrotate" / "incidents").iterdir())
    assert [p.suffix for p in reports] == [".json", ".md"]
    text = reports[1].read_text()
    assert "Time Travel" in text and "30 days" in text and out["old_fingerprint"] in text
    for p in reports:
        assert_clean(p.read_bytes(), p.name, [OLD_SECRET, new])
        assert p.stat().st_mode & 0o777 == 0o600


def test_status_ages_and_rows_per_key(project):
    root, _, _, store = project
    res = run_cli("status", "--env", "staging", "--due", "90d", "--json")
    assert res.exit_code == 0, res.output
    out = last_json(res.output)
    mk = next(s for s in out["secrets"] if s["secret"] == "MASTER_KEY")
    assert mk["rows"]["accounts.encrypted_tokens"]["current"] == 50 and mk["age_days"] < 1
    env = root / ".env.staging"
    env.write_text(env.read_text().replace(f"JWT_SECRET set {datetime.now(timezone.utc).year}",
                                           "JWT_SECRET set 2020", 1))
    due = run_cli("status", "--env", "staging", "--due", "90d", "--json")
    assert due.exit_code == 1 and last_json(due.output)["due"] == ["JWT_SECRET"]


def test_master_key_cutover_without_previous(project):
    root, cf, _, store = project
    assert run_cli("secrets", "push", "--env", "staging").exit_code == 0
    refused = run_cli("rotate", "MASTER_KEY", "--env", "staging")
    assert refused.exit_code == 2 and "maintenance cutover" in refused.output
    assert store.read("MASTER_KEY", "pending") is None
    res = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--yes", "--json")
    assert res.exit_code == 0, res.output
    out = last_json(res.output)
    assert out["state"] == "finished" and out["steps_done"] == \
        ["stage", "reencrypt", "push", "validate", "catch-up", "verify", "promote"]
    new = store.read("MASTER_KEY")
    assert store.read("MASTER_KEY", "previous") == OLD_SECRET
    assert _active(cf, "api")["MASTER_KEY"] == _active(cf, "oauth")["MASTER_KEY"] == new
    assert _rows_open_under(root / "staging.db", new)


def test_verify_sweeps_rows_the_workers_wrote_under_the_old_key(project, monkeypatch):
    import sqlite3

    from keyrotate.crypto.envelope import seal
    from keyrotate.crypto.keys import MasterKey
    from keyrotate.rotation.steps import Reencrypt

    root, _, _, store = project
    with_overlap(root)
    real = Reencrypt.run

    def reencrypt_then_a_stale_worker_writes(self, job):
        real(self, job)
        if self.name == "reencrypt":  # an old Worker instance still writes with the old key
            conn = sqlite3.connect(root / "staging.db")
            conn.execute("UPDATE accounts SET encrypted_tokens = ? WHERE account_id = 'acc_00000007'",
                         (seal(b'{"late":true}', MasterKey.from_secret(OLD_SECRET), with_kid=False),))
            conn.commit()
            conn.close()

    monkeypatch.setattr(Reencrypt, "run", reencrypt_then_a_stale_worker_writes)
    res = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--json")
    assert res.exit_code == 0, res.output
    out = last_json(res.output)
    assert out["detail"]["sweep"]["accounts.encrypted_tokens"]["rewritten"] == 1
    assert out["detail"]["verify"]["accounts.encrypted_tokens"]["old"] == 0
    new = store.read("MASTER_KEY", "pending")
    assert open_value(rows_of(root / "staging.db")["acc_00000007"].decode(), new) == b'{"late":true}'


def test_finish_sweeps_rows_that_came_back_under_the_old_key(project):
    """Between the pause and --finish (days, maybe), rows can return under the old key: a
    D1 Time Travel restore, a stale Worker. Removing PREVIOUS then would strand them."""
    import sqlite3

    from keyrotate.crypto.envelope import seal
    from keyrotate.crypto.keys import MasterKey

    root, cf, _, store = project
    with_overlap(root)
    assert run_cli("rotate", "MASTER_KEY", "--env", "staging").exit_code == 0
    new = store.read("MASTER_KEY", "pending")
    conn = sqlite3.connect(root / "staging.db")
    conn.execute("UPDATE accounts SET encrypted_tokens = ? WHERE account_id = 'acc_00000003'",
                 (seal(b'{"restored":true}', MasterKey.from_secret(OLD_SECRET), with_kid=False),))
    conn.commit()
    conn.close()
    done = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--finish", "--json")
    assert done.exit_code == 0, done.output
    out = last_json(done.output)
    assert out["steps_done"][-3:] == ["re-verify", "remove-previous", "promote"]
    assert out["detail"]["sweep"]["accounts.encrypted_tokens"]["rewritten"] == 1
    assert open_value(rows_of(root / "staging.db")["acc_00000003"].decode(), new) == b'{"restored":true}'
    assert "MASTER_KEY_PREVIOUS" not in _active(cf, "api")


def test_a_rotation_over_d1_checks_keyrotates_tables_once_per_command(project):
    """One connection per command: every open-and-check of keyrotate's own tables (and
    of a target's shape) costs D1 API requests, so a command opens the database once and
    checks once; a table is read in full only as often as the proof needs; and the whole
    rotation of a small table, keyrotate's tables created on the way, stays within 23
    requests (59 before the fixed costs were batched)."""
    root, cf, _, store = project
    edit_manifest(root, 'database = "file:staging.db"', 'database = "d1://acct/staging"')
    with_overlap(root)

    def reads(since: int, what: bytes) -> int:
        return sum(1 for _, path, body in cf.log[since:] if path.endswith("/query") and what in body)

    # the 50-row table is one page: rotate probes with the store's values before its first
    # push and with the rotation's keys before writing, passes once (the pass's read of a
    # page that shows the end of the table reads nothing after it) and takes one census
    # (the page alone: on D1 a page that shows the end of the table ends the scan, and the
    # census's rowid witness checks that nothing was missed; the reencrypt step leaves the
    # census to the verify step); --finish probes and takes one census; status one census
    for args, pages, budget in ((["rotate", "MASTER_KEY", "--env", "staging"], 2 + 1 + 1, 23),
                                (["rotate", "MASTER_KEY", "--env", "staging", "--finish"], 1 + 1, 14),
                                (["status", "--env", "staging"], 1, 8)):
        since, requests = len(cf.log), cf.d1_requests
        res = run_cli(*args)
        assert res.exit_code == 0, res.output
        assert reads(since, b"FROM keyrotate_migrations") == 1, args   # the ledger, once
        assert reads(since, b"PRAGMA index_list") == 1, args  # the target's shape, checked once
        assert reads(since, b"WITH page AS") == pages, args
        # one connection, one census per step (the lease, the journal and the audit trail
        # included): 59 for each command before issue 22; now 44 for rotate (keyrotate's
        # tables created in one batch, the target's shape in two reads, the pass's reads
        # riding on its writes, the end of the table read once, the lease's claim and its
        # check in one request, and given back with the run's end), 23 for --finish and
        # 10 for status. Issue 22 alone made rotate 15 by also deferring the rotation's step
        # records and opening no row in the census that the pass proved; both were dropped
        # in the merge with issue 21's trail and issue 20's census witness. Then 40 / 21 / 9:
        # an uncontended lease claimed in one request (two leases in rotate), the probe's
        # sample and the table's count in one, a census's count taken once, no read of the
        # run's failures when it counted none. Then 25 / 15 / 9: a push's confirmation and
        # a step's record ride with the next append of the trail (the next push's intent,
        # the restore point, the end), keyrotate 0.1's table that the migrations still make
        # goes with the first append, and the data plane's lease claim carries the run's
        # plan and the probe. Then 20 / 11 / 8: the rotation lease's claim reads the
        # trail's head and the open rotation, and the rotation's end gives it back; a run's
        # start reads its first page; the census's witness rides with its last page, and
        # the verify step's census takes the rows the pass just saw as its hint instead of
        # counting. Then 21 / 13: a step that pushes or changes the store is recorded at
        # once (killed before its record, it would push again, or lose what it dropped:
        # hostile review and test_rollover's kill between any two steps). The leases'
        # heartbeats (every 10 s on d1://) add one or two on a loaded machine: 23 for
        # rotate, 14 for --finish
        assert cf.d1_requests - requests <= budget, (args, cf.d1_requests - requests)
    assert _rows_open_under(root / "staging.db", store.read("MASTER_KEY"))


def test_records_that_ride_with_a_failed_append_are_kept_and_the_lease_is_given_back(project):
    """Step records and push confirmations ride with the trail's next append, and the
    rotation's end gives its lease back in its own transaction. When that append fails,
    nothing it carried may be lost (the failure's own record carries it), the lease must
    still be given back, and the same command again must finish the job."""
    import sqlite3

    root, _, _, store = project
    with_overlap(root)
    assert run_cli("status", "--env", "staging").exit_code == 0   # keyrotate's tables
    conn = sqlite3.connect(root / "staging.db")
    conn.execute("CREATE TRIGGER refuse_end BEFORE INSERT ON keyrotate_audit WHEN "
                 "json_extract(NEW.record, '$.step') = 'awaiting-finish' "
                 "BEGIN SELECT RAISE(ABORT, 'the end is refused'); END")
    conn.commit()
    res = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--json")
    assert res.exit_code != 0, res.output
    steps = [json.loads(r[0]).get("step") for r in conn.execute(
        "SELECT record FROM keyrotate_audit WHERE event = 'rotation.step' ORDER BY seq")]
    assert {"stage", "introduce", "switch", "validate", "reencrypt", "verify"} <= set(steps)
    pushes = [json.loads(r[0])["detail"]["state"] for r in conn.execute(
        "SELECT record FROM keyrotate_audit WHERE event = 'worker.secrets' ORDER BY seq")]
    assert pushes.count("intent") == pushes.count("done") == 4, pushes
    assert conn.execute("SELECT count(*) FROM keyrotate_leases").fetchone()[0] == 0
    conn.execute("DROP TRIGGER refuse_end")
    conn.commit()
    conn.close()
    again = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--json")
    assert again.exit_code == 0, again.output
    assert last_json(again.output)["state"] == "awaiting-finish"
    assert run_cli("audit", "verify", "--env", "staging").exit_code == 0
    assert _rows_open_under(root / "staging.db", store.read("MASTER_KEY", "pending"))


def test_rotate_is_not_verified_while_rows_open_under_no_key(project):
    import sqlite3

    root, cf, _, store = project
    with_overlap(root)
    conn = sqlite3.connect(root / "staging.db")
    conn.execute("UPDATE accounts SET encrypted_tokens = '{\"iv\": \"broken' WHERE account_id = 'acc_00000004'")
    conn.commit()
    conn.close()
    res = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--json")
    assert res.exit_code == 1, res.output
    err = last_json(res.output)["error"]
    assert "not verified" in err["message"] and "acc_00000004" in err["message"]
    assert store.read("MASTER_KEY") == OLD_SECRET  # the old key is kept
    assert "rotated and verified" not in res.output
    conn = sqlite3.connect(root / "staging.db")
    conn.execute("DELETE FROM accounts WHERE account_id = 'acc_00000004'")  # the fix
    conn.commit()
    conn.close()
    again = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--json")
    assert again.exit_code == 0, again.output
    assert last_json(again.output)["state"] == "awaiting-finish"


def test_status_during_the_overlap_counts_rows_per_slot(project):
    root, _, _, store = project
    with_overlap(root)
    assert run_cli("rotate", "MASTER_KEY", "--env", "staging").exit_code == 0
    out = last_json(run_cli("status", "--env", "staging", "--json").output)
    rows = next(s for s in out["secrets"] if s["secret"] == "MASTER_KEY")["rows"]
    assert rows["accounts.encrypted_tokens"] == {"current": 0, "pending": 50, "previous": 0,
                                                 "null": 0, "other": 0}
    assert run_cli("rotate", "MASTER_KEY", "--env", "staging", "--finish").exit_code == 0
    out = last_json(run_cli("status", "--env", "staging", "--json").output)
    rows = next(s for s in out["secrets"] if s["secret"] == "MASTER_KEY")["rows"]
    assert rows["accounts.encrypted_tokens"]["current"] == 50


def test_a_compromise_takes_over_an_open_overlap_rotation(project):
    root, cf, _, store = project
    with_overlap(root)
    assert run_cli("secrets", "push", "--env", "staging").exit_code == 0
    assert run_cli("rotate", "MASTER_KEY", "--env", "staging").exit_code == 0
    routine = store.read("MASTER_KEY", "pending")
    refused = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--compromised")
    assert refused.exit_code == 2 and "takes it over" in refused.output
    assert store.read("MASTER_KEY", "pending") == routine  # nothing changed without --yes

    res = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--compromised", "--yes", "--json")
    assert res.exit_code == 0, res.output
    out = last_json(res.output)
    fresh = store.read("MASTER_KEY")
    assert out["compromised"] and out["state"] == "finished" and out["detail"]["took_over"]
    assert fresh not in (OLD_SECRET, routine)
    assert _rows_open_under(root / "staging.db", fresh)
    for w in ("api", "oauth"):
        assert _active(cf, w)["MASTER_KEY"] == fresh and "MASTER_KEY_PREVIOUS" not in _active(cf, w)
    reports = sorted((root / ".keyrotate" / "incidents").glob("*.json"))
    assert len(reports) == 1
    audit = [json.loads(x) for x in (root / ".keyrotate" / "audit-staging.jsonl").read_text().splitlines()]
    assert any(e["event"] == "rotation.superseded" and e["rotation_id"] != out["rotation_id"] for e in audit)
    assert run_cli("rotate", "MASTER_KEY", "--env", "staging", "--finish").exit_code == 2  # none open


def test_a_compromise_on_d1_keeps_the_restore_point_taken_before_any_row_write(project):
    root, cf, _, store = project
    edit_manifest(root, 'database = "file:staging.db"', 'database = "d1://acct/staging"')
    cf.d1_names["staging"] = "tminus-staging"
    res = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--compromised", "--yes", "--json")
    assert res.exit_code == 0, res.output
    tt = last_json(res.output)["detail"]["time_travel"]
    asked = next(i for i, (_, path, _) in enumerate(cf.log) if path.endswith("/time_travel/bookmark"))
    first_write = next(i for i, (_, path, body) in enumerate(cf.log)
                       if path.endswith("/query") and b'UPDATE \\"accounts\\"' in body)
    assert asked < first_write
    assert tt["restore_command"] == f"wrangler d1 time-travel restore tminus-staging --bookmark={tt['bookmark']}"
    taken, expires = (datetime.fromisoformat(tt[k]) for k in ("taken_at", "expires_at"))
    assert (expires - taken).days == 30

    report = json.loads(sorted((root / ".keyrotate" / "incidents").glob("*.json"))[0].read_text())
    point = report["restore_point"]
    assert point["bookmark"] == tt["bookmark"]
    assert "brings back rows under the compromised key" in point["warning"]
    assert point["compromised_restore_points_until"] in point["warning"]
    markdown = sorted((root / ".keyrotate" / "incidents").glob("*.md"))[0].read_text()
    assert tt["bookmark"] in markdown and tt["restore_command"] in markdown
    trail = last_json(run_cli("audit", "show", "--env", "staging", "--json").output)["events"]
    marks = [e for e in trail if e["event"] == "time-travel.bookmark"]
    assert len(marks) == 1 and marks[0]["detail"]["bookmark"] == tt["bookmark"]
    assert [e["event"] for e in trail].count("incident.report") == 1


def _killed_after(root, stop_at, *args):
    """A rotate in a process of its own (tests/support/clocked_cli.py), stopped right after
    `stop_at` and killed there with SIGKILL: observed, never timed."""
    import os
    import subprocess
    import sys
    import time

    import psutil

    from tests.support.helpers import ROOT

    log = open(root / "killed.log", "wb")
    proc = psutil.Popen([sys.executable, str(ROOT / "tests" / "support" / "clocked_cli.py"),
                         "rotate", *args], cwd=root, stdout=log, stderr=subprocess.STDOUT,
                        env=dict(os.environ, KR_TEST_STOP_AT=stop_at, PYTHONPATH=str(ROOT)))
    log.close()
    try:
        while proc.status() != psutil.STATUS_STOPPED:
            assert proc.poll() is None, (root / "killed.log").read_text()[-3000:]
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("then", ["abort", "compromised"])
def test_a_cutover_killed_after_its_reencrypt_keeps_the_key_its_rows_are_under(project, then):
    """Hostile review: a cutover stages and reencrypts before it pushes, and those two
    steps' records ride with the next append. Killed after the reencrypt, nothing said
    rows had moved: `--abort` discarded the key every row was under (exit 0), and a
    compromise response taking over did too. Before its first row write a rotation records
    that rows may be under the new value (write-ahead), and both keep it."""
    root, _, _, store = project
    _killed_after(root, "step:reencrypt", "MASTER_KEY", "--env", "staging", "--yes")
    pending = store.read("MASTER_KEY", "pending")
    assert pending and _rows_open_under(root / "staging.db", pending)
    if then == "abort":
        res = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--abort", "--json")
        assert res.exit_code == 2, res.output
        assert "cutover" in last_json(res.output)["error"]["message"]
        assert store.read("MASTER_KEY", "pending") == pending
    else:
        res = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--compromised", "--yes",
                      "--json")
        assert res.exit_code == 0, res.output
        assert store.read("MASTER_KEY", "previous") == pending   # kept as an old key
        assert _rows_open_under(root / "staging.db", store.read("MASTER_KEY"))
    assert _rows_open_under(root / "staging.db", pending) or then == "compromised"
    assert run_cli("audit", "verify", "--env", "staging").exit_code == 0


def test_the_end_of_a_rotation_whose_lease_was_taken_over_is_not_recorded(project, monkeypatch):
    """The rotation's end gives its lease back in its own transaction, and the heartbeat
    stops before it: a commit slow enough (429, retries) could let another run take the
    lease over meanwhile. The end then carries the lease's guard: it is not recorded (the
    other run is in charge), the other run's lease stays, and the command says so."""
    import sqlite3

    from keyrotate.controlplane.held_lease import HeldLease

    root, _, _, store = project
    with_overlap(root)
    real = HeldLease.give_back_with

    def taken_over_meanwhile(self):
        statements = real(self)
        conn = sqlite3.connect(root / "staging.db")
        conn.execute("UPDATE keyrotate_leases SET holder = 'another-run' WHERE target = ?",
                     (self.name,))
        conn.commit()
        conn.close()
        return statements

    monkeypatch.setattr(HeldLease, "give_back_with", taken_over_meanwhile)
    res = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--json")
    assert res.exit_code == 3, res.output
    assert "took over" in last_json(res.output)["error"]["message"]
    conn = sqlite3.connect(root / "staging.db")
    assert conn.execute("SELECT state FROM keyrotate_rotations").fetchall() == [("in-progress",)]
    assert conn.execute("SELECT holder FROM keyrotate_leases WHERE target = "
                        "'rotate:staging:MASTER_KEY'").fetchall() == [("another-run",)]
    conn.close()


def test_a_lost_answer_on_the_rotation_s_end_is_the_end_it_recorded(project):
    """On D1 the rotation's end (its state, its event, the lease given back) committed and
    the answer was lost; the client sent it again and the replay met the lease already
    given back. That is this rotation's own end: exit 0, recorded once."""
    root, cf, _, store = project
    edit_manifest(root, 'database = "file:staging.db"', 'database = "d1://acct/staging"')
    with_overlap(root)
    cf.matching_faults.append(("commit-drop", b'0,"awaiting-finish"'))   # the state, saved
    res = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--json")
    assert not cf.matching_faults, "the lost answer was met"
    assert res.exit_code == 0, res.output
    assert last_json(res.output)["state"] == "awaiting-finish"
    audit = run_cli("audit", "verify", "--env", "staging", "--json")
    assert audit.exit_code == 0, audit.output
    events = last_json(run_cli("audit", "show", "--env", "staging", "--json").output)["events"]
    assert sum(1 for e in events if e["step"] == "awaiting-finish") == 1, events
    done = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--finish", "--json")
    assert done.exit_code == 0 and last_json(done.output)["state"] == "finished", done.output


def test_a_promote_the_store_did_not_keep_does_not_finish(project, monkeypatch):
    """Review: a promote lost to another program rewriting the .env meanwhile ended
    --finish in exit 0, with the old value current and every row under the value left
    pending. The store is read back: exit 3, and the same command then finishes."""
    from keyrotate.secrets.dotenv import DotenvStore

    root, cf, _, store = project
    with_overlap(root)
    assert run_cli("rotate", "MASTER_KEY", "--env", "staging").exit_code == 0
    new = store.read("MASTER_KEY", "pending")
    promote = DotenvStore.promote
    monkeypatch.setattr(DotenvStore, "promote", lambda self, name: None)   # the write lost
    lost = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--finish", "--json")
    assert lost.exit_code == 3, lost.output
    assert "does not hold the new value after the promote" in last_json(lost.output)["error"]["message"]
    monkeypatch.setattr(DotenvStore, "promote", promote)
    done = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--finish", "--json")
    assert done.exit_code == 0 and last_json(done.output)["state"] == "finished", done.output
    assert store.read("MASTER_KEY") == new and store.read("MASTER_KEY", "pending") is None
