"""keyrotate rollover: the scheduled command, driven through whole rotation cycles by
keyrotate's clock (tests/support/clock.py), never by sleeping. Wrangler and the Cloudflare
API stand-in as in test_rotation.py."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta

import psutil
import pytest

from tests.support.clock import TestClock, set_ages, utc
from tests.support.cloudflare_project import JWT, _active, edit_manifest, with_overlap
from tests.support.helpers import OLD_SECRET, ROOT, last_json, open_value, rows_of, run_cli

# the age stamps say every secret was set on Sunday 2027-01-03 at 10:00 UTC
SET = utc("2027-01-03 10:00")
WINDOW = 'window = "Mon-Fri 09:00-16:00 UTC"'
MASTER_POLICY = f'\nmax_age = "90d"\nauto = true\nfinish_after = "7d"\n{WINDOW}'


@pytest.fixture
def clock(project):
    root, _, _, _ = project
    set_ages(root / ".env.staging", SET)
    c = TestClock(SET)
    c.install()
    yield c
    c.uninstall()


def rollover(*extra: str):
    res = run_cli("rollover", "--env", "staging", "--json", *extra)
    return res, last_json(res.output)


def entry(out, secret):
    return next(s for s in out["secrets"] if s["secret"] == secret)


def trail(root):
    path = root / ".keyrotate" / "audit-staging.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def rows_open_under(root, secret):
    return all(open_value(v.decode(), secret) is not None for v in rows_of(root / "staging.db").values() if v)


def test_a_due_secret_is_started_and_stops_awaiting_finish(project, clock):
    root, cf, _, store = project
    with_overlap(root, extra=MASTER_POLICY)
    clock.at(utc("2027-04-02 09:59"))   # 88 days 23 h 59 min: not yet due
    res, out = rollover()
    assert res.exit_code == 0, res.output
    assert entry(out, "MASTER_KEY")["outcome"] == "ok"
    assert entry(out, "MASTER_KEY")["next_at"] == "2027-04-05T09:00:00+00:00"  # Sat due -> Mon 9:00
    assert store.read("MASTER_KEY", "pending") is None

    clock.at(utc("2027-04-05 09:30"))   # Monday, 92 days old
    res, out = rollover()
    assert res.exit_code == 0, res.output
    mk = entry(out, "MASTER_KEY")
    assert (mk["action"], mk["outcome"]) == ("start", "started")
    assert mk["next_at"] == "2027-04-12T09:30:00+00:00"   # finish_after 7 days, in the window
    new = store.read("MASTER_KEY", "pending")
    assert new and store.read("MASTER_KEY") == OLD_SECRET
    for w in ("api", "oauth"):
        assert _active(cf, w)["MASTER_KEY"] == new and _active(cf, w)["MASTER_KEY_PREVIOUS"] == OLD_SECRET
    assert rows_open_under(root, new)
    events = trail(root)
    started = next(e for e in events if e["event"] == "rotation.started")
    assert started["detail"]["started_by"] == "rollover" and started["at"].startswith("2027-04-05")
    assert ("rotation.step", "awaiting-finish") in [(e["event"], e["step"]) for e in events]
    run = [e for e in events if e["event"] == "rollover.run"]
    assert len(run) == 1 and run[0]["detail"]["secrets"][0]["outcome"] == "started"


def pushes(cf):
    return sum(1 for m, p, _ in cf.log if m in ("PUT", "PATCH") and "/workers/scripts/" in p)


def test_the_window_is_respected(project, clock):
    root, cf, health, store = project
    with_overlap(root, extra=MASTER_POLICY)
    clock.at(utc("2027-04-03 03:00"))   # Saturday 3 a.m., 89 days 17 h: due at 10:00 today
    clock.at(utc("2027-04-03 11:00"))   # Saturday, due, the window closed
    res, out = rollover()
    assert res.exit_code == 0, res.output
    mk = entry(out, "MASTER_KEY")
    assert (mk["action"], mk["outcome"]) == ("wait", "waiting")
    assert "outside the window" in mk["note"] and mk["next_at"] == "2027-04-05T09:00:00+00:00"
    assert out["next_step_at"] == "2027-04-05T09:00:00+00:00"
    assert store.read("MASTER_KEY", "pending") is None and pushes(cf) == 0
    clock.at(utc("2027-04-05 08:59"))   # Monday, one minute early
    assert entry(rollover()[1], "MASTER_KEY")["outcome"] == "waiting" and pushes(cf) == 0

    # a step that paused inside the window waits for it too, and says so (exit 3: half done)
    clock.at(utc("2027-04-05 15:59"))
    health.answers["oauth"] = (500, {"ok": False})
    res, out = rollover()
    assert res.exit_code == 3 and entry(out, "MASTER_KEY")["outcome"] == "paused"
    health.answers.clear()
    before = pushes(cf)
    clock.at(utc("2027-04-05 16:00"))   # the window has closed
    res, out = rollover()
    mk = entry(out, "MASTER_KEY")
    assert res.exit_code == 3 and mk["outcome"] == "paused" and "resumes in the window" in mk["note"]
    assert "done: stage, introduce, switch" in mk["note"] and mk["next_at"] == "2027-04-06T09:00:00+00:00"
    assert pushes(cf) == before
    clock.at(utc("2027-04-06 09:00"))
    res, out = rollover()
    assert res.exit_code == 0 and entry(out, "MASTER_KEY")["outcome"] == "resumed"

    # the finish waits for the window as well: due Tuesday 09:00 a week later, run at 17:00
    clock.at(utc("2027-04-13 17:00"))
    res, out = rollover()
    mk = entry(out, "MASTER_KEY")
    assert res.exit_code == 0 and mk["outcome"] == "awaiting-finish" and "outside the window" in mk["note"]
    assert "MASTER_KEY_PREVIOUS" in _active(cf, "api")
    clock.at(utc("2027-04-14 09:00"))
    res, out = rollover()
    assert res.exit_code == 0 and entry(out, "MASTER_KEY")["outcome"] == "finished"


def test_finish_after_is_respected(project, clock):
    root, cf, _, store = project
    with_overlap(root, extra=MASTER_POLICY)
    clock.at(utc("2027-04-05 10:00"))
    assert rollover()[0].exit_code == 0
    new = store.read("MASTER_KEY", "pending")
    awaiting = next(e for e in trail(root) if e["step"] == "awaiting-finish")
    since = datetime.fromisoformat(awaiting["at"])
    clock.at(since + timedelta(days=7) - timedelta(seconds=1))
    res, out = rollover()
    mk = entry(out, "MASTER_KEY")
    assert res.exit_code == 0 and (mk["action"], mk["outcome"]) == ("wait", "awaiting-finish")
    assert mk["next_at"] == (since + timedelta(days=7)).isoformat(timespec="seconds")
    assert "MASTER_KEY_PREVIOUS" in _active(cf, "api") and store.read("MASTER_KEY") == OLD_SECRET
    plan = rollover("--dry-run")[1]
    assert entry(plan, "MASTER_KEY")["outcome"] == "awaiting-finish"

    clock.at(since + timedelta(days=7))
    plan = rollover("--dry-run")[1]
    assert entry(plan, "MASTER_KEY")["outcome"] == "would finish"
    assert [s.split(":")[0] for s in entry(plan, "MASTER_KEY")["steps"]] == \
        ["confirm-switch", "re-verify", "remove-previous", "promote"]
    assert "MASTER_KEY_PREVIOUS" in _active(cf, "api")      # the dry run changed nothing
    res, out = rollover()
    mk = entry(out, "MASTER_KEY")
    assert res.exit_code == 0 and (mk["action"], mk["outcome"]) == ("finish", "finished")
    for w in ("api", "oauth"):
        assert "MASTER_KEY_PREVIOUS" not in _active(cf, w) and _active(cf, w)["MASTER_KEY"] == new
    assert store.read("MASTER_KEY") == new and store.read("MASTER_KEY", "previous") == OLD_SECRET
    assert rows_open_under(root, new)
    # the new value's age starts now: due again in 90 days
    assert store.set_at("MASTER_KEY") == clock.t.replace(microsecond=0)
    res, out = rollover()
    mk = entry(out, "MASTER_KEY")
    assert mk["outcome"] == "ok" and "due at Sun 2027-07-11 10:00 UTC" in mk["note"]
    assert mk["next_at"] == "2027-07-12T09:00:00+00:00"          # the window's next opening


def test_a_paused_step_is_retried_by_the_next_run(project, clock):
    root, cf, health, store = project
    with_overlap(root, extra=MASTER_POLICY)
    clock.at(utc("2027-04-05 10:00"))
    health.answers["oauth"] = (500, {"ok": False})
    res, out = rollover()
    mk = entry(out, "MASTER_KEY")
    assert res.exit_code == 3, res.output
    assert (mk["action"], mk["outcome"]) == ("start", "paused") and mk["rotation_id"]
    assert "health check failed (oauth)" in mk["note"] and "next rollover retries" in mk["note"]
    assert "health check failed (oauth)" in res.output           # says why, in text too
    paused = [e for e in trail(root) if e["event"] == "rotation.paused"]
    assert len(paused) == 1 and paused[0]["step"] == "validate"   # notified and audited
    staged, pushed = store.read("MASTER_KEY", "pending"), pushes(cf)

    clock.advance(hours=1)
    res, out = rollover()                                         # the cause is still there
    assert res.exit_code == 3 and entry(out, "MASTER_KEY")["action"] == "resume"
    health.answers.clear()
    clock.advance(hours=1)
    res, out = rollover()
    mk = entry(out, "MASTER_KEY")
    assert res.exit_code == 0, res.output
    assert (mk["action"], mk["outcome"]) == ("resume", "resumed") and "awaits its finish" in mk["note"]
    assert store.read("MASTER_KEY", "pending") == staged and pushes(cf) == pushed  # nothing redone
    rotations = [e["rotation_id"] for e in trail(root) if e["event"] == "rotation.started"]
    assert len(rotations) == 1 and rotations[0] == mk["rotation_id"]
    assert rows_open_under(root, staged)


def test_a_failed_step_exits_1_and_the_next_run_resumes_once_fixed(project, clock):
    import sqlite3

    root, _, _, store = project
    with_overlap(root, extra=MASTER_POLICY)
    conn = sqlite3.connect(root / "staging.db")
    conn.execute("UPDATE accounts SET encrypted_tokens = '{\"iv\": \"broken' WHERE account_id = 'acc_00000004'")
    conn.commit()
    clock.at(utc("2027-04-05 10:00"))
    res, out = rollover()
    mk = entry(out, "MASTER_KEY")
    assert res.exit_code == 1 and mk["outcome"] == "failed" and "acc_00000004" in mk["note"]
    assert store.read("MASTER_KEY") == OLD_SECRET
    conn.execute("DELETE FROM accounts WHERE account_id = 'acc_00000004'")
    conn.commit()
    conn.close()
    clock.advance(hours=1)
    res, out = rollover()
    assert res.exit_code == 0 and entry(out, "MASTER_KEY")["outcome"] == "resumed"


def test_a_jwt_finish_is_refused_before_its_ttl(project, clock):
    root, cf, _, store = project
    jwt_policy = '\nmax_token_ttl = "1h"\nmax_age = "30d"\nauto = true\nfinish_after = "{}"'
    with_overlap(root, "JWT_SECRET", "jwt-hs256", extra=jwt_policy.format("30m"))
    res = run_cli("rollover", "--env", "staging")
    assert res.exit_code == 2 and "shorter than max_token_ttl" in res.output
    edit_manifest(root, 'finish_after = "30m"', 'finish_after = "1h"')

    clock.at(utc("2027-02-03 10:00"))   # 31 days old (a Wednesday; no window)
    res, out = rollover()
    assert res.exit_code == 0 and entry(out, "JWT_SECRET")["outcome"] == "started"
    assert _active(cf, "api")["JWT_SECRET_PREVIOUS"] == JWT
    clock.advance(minutes=59)
    res, out = rollover()
    assert entry(out, "JWT_SECRET")["outcome"] == "awaiting-finish"
    assert _active(cf, "api")["JWT_SECRET_PREVIOUS"] == JWT      # sessions signed before stay valid

    # the rotation's own guard, by the same clock: no unattended finish before the TTL
    from keyrotate.config.context import Context
    from keyrotate.errors import ConfigError
    from keyrotate.rotation.rotate import RotateOptions, rotate

    ctx = Context.load("staging")
    try:
        with pytest.raises(ConfigError, match="may live 3600 s"):
            rotate(ctx, "JWT_SECRET", RotateOptions(finish=True, started_by="rollover"), say=lambda _: None)
    finally:
        ctx.close()
    clock.advance(minutes=1)
    res, out = rollover()
    assert res.exit_code == 0 and entry(out, "JWT_SECRET")["outcome"] == "finished"
    assert "JWT_SECRET_PREVIOUS" not in _active(cf, "api")
    assert store.read("JWT_SECRET", "previous") == JWT


def test_auto_false_is_reported_only(project, clock):
    root, cf, _, store = project
    with_overlap(root, extra='\nmax_age = "90d"')                      # auto defaults to false
    edit_manifest(root, '[secrets.GOOGLE_CLIENT_SECRET]\nkind = "external"',
                  '[secrets.GOOGLE_CLIENT_SECRET]\nkind = "external"\nmax_age = "90d"\nauto = false')
    clock.at(utc("2027-04-13 10:00"))   # 100 days old
    res, out = rollover()
    assert res.exit_code == 0, res.output
    for name in ("MASTER_KEY", "GOOGLE_CLIENT_SECRET"):
        s = entry(out, name)
        assert (s["action"], s["outcome"]) == ("report", "due") and "rotate it by hand" in s["note"]
        assert store.read(name, "pending") is None
    assert "JWT_SECRET" not in [s["secret"] for s in out["secrets"]]   # no policy, not listed
    assert pushes(cf) == 0 and not [e for e in trail(root) if e["event"].startswith("rotation.")]
    assert "MASTER_KEY" in res.output and "due" in res.output
    # as `status --due` reports it
    status = last_json(run_cli("status", "--env", "staging", "--due", "90d", "--json").output)
    assert set(status["due"]) >= {"MASTER_KEY", "GOOGLE_CLIENT_SECRET"}


def test_a_rotation_a_person_started_is_left_to_them(project, clock):
    root, cf, _, store = project
    with_overlap(root, extra=MASTER_POLICY)
    clock.at(utc("2027-04-05 10:00"))
    assert run_cli("rotate", "MASTER_KEY", "--env", "staging").exit_code == 0   # a person
    started = next(e for e in trail(root) if e["event"] == "rotation.started")
    assert started["detail"]["started_by"] == "person"
    clock.advance(days=30)
    res, out = rollover()
    mk = entry(out, "MASTER_KEY")
    assert res.exit_code == 0 and (mk["action"], mk["outcome"]) == ("leave", "left")
    assert "started by a person" in mk["note"]
    assert "MASTER_KEY_PREVIOUS" in _active(cf, "api") and store.read("MASTER_KEY") == OLD_SECRET

    from keyrotate.config.context import Context
    from keyrotate.errors import ConfigError
    from keyrotate.rotation.rotate import RotateOptions, rotate

    ctx = Context.load("staging")
    try:
        with pytest.raises(ConfigError, match="started by a person"):
            rotate(ctx, "MASTER_KEY", RotateOptions(finish=True, started_by="rollover"), say=lambda _: None)
        with pytest.raises(ConfigError, match="compromise response is a person's decision"):
            rotate(ctx, "MASTER_KEY", RotateOptions(compromised=True, yes=True, started_by="rollover"),
                   say=lambda _: None)
    finally:
        ctx.close()
    assert "MASTER_KEY_PREVIOUS" in _active(cf, "api")
    # a person may always finish what rollover started, or their own
    assert run_cli("rotate", "MASTER_KEY", "--env", "staging", "--finish").exit_code == 0


@pytest.mark.parametrize("secret,policy,message", [
    ("GOOGLE_CLIENT_SECRET", 'max_age = "90d"\nauto = true', "cannot apply to an external secret"),
    ("MASTER_KEY", 'max_age = "90d"\nauto = true', 'needs previous = "MASTER_KEY_PREVIOUS"'),
    ("JWT_SECRET", 'max_age = "30d"\nauto = true', "logs every user out"),
    ("MASTER_KEY", 'previous = "MASTER_KEY_PREVIOUS"\nauto = true\nfinish_after = "7d"', "needs max_age"),
    ("MASTER_KEY", 'previous = "MASTER_KEY_PREVIOUS"\nmax_age = "90d"\nauto = true', "needs finish_after"),
    ("JWT_SECRET", 'previous = "JWT_SECRET_PREVIOUS"\nfinish_after = "1d"', "needs max_token_ttl"),
    ("MASTER_KEY", 'finish_after = "7d"', "remove finish_after"),
    ("MASTER_KEY", 'auto = "yes"', "auto must be true or false"),
    ("MASTER_KEY", 'max_age = "90 days"', "not a duration"),
    ("MASTER_KEY", 'window = "Mon-Fri 09:00-16:00"', "names no time zone"),
    ("MASTER_KEY", 'window = "Mon-Fri 9-16 UTC"', "is not a window"),
    ("MASTER_KEY", 'window = "Mon-Fry 09:00-16:00 UTC"', "'Mon-Fry' is not a day or a range of days"),
    ("MASTER_KEY", 'window = "Sat 22:00-02:00 UTC"', "must end after it starts"),
    ("MASTER_KEY", 'window = "daily 09:00-16:00 Mars/Olympus"', "unknown time zone 'Mars/Olympus'"),
    ("MASTER_KEY", 'finsh_after = "7d"', "did you mean 'finish_after'?"),
])
def test_a_policy_rollover_could_not_follow_is_refused_at_load(project, secret, policy, message):
    root = project[0]
    kind = {"MASTER_KEY": "master-key", "JWT_SECRET": "jwt-hs256", "GOOGLE_CLIENT_SECRET": "external"}[secret]
    edit_manifest(root, f'[secrets.{secret}]\nkind = "{kind}"', f'[secrets.{secret}]\nkind = "{kind}"\n{policy}')
    res = run_cli("rollover", "--env", "staging", "--json")
    assert res.exit_code == 2 and message in last_json(res.output)["error"]["message"], res.output
    assert "Traceback" not in res.output


def test_a_manifest_without_any_policy_is_a_configuration_error(project):
    res = run_cli("rollover", "--env", "staging")
    assert res.exit_code == 2 and "no secret has a max_age" in res.output


# -- rollover as a process of its own: the lease, and kill -9 between any two steps ----------

CLOCKED_CLI = ROOT / "tests" / "support" / "clocked_cli.py"


def clocked_rollover(root, at, stop_at=None, pause_file=None):
    """`keyrotate rollover` in a process of its own, its clock at `at`; with `stop_at`, it
    stops itself right after that point of the rotation's record (clocked_cli.py), or with
    `pause_file` waits there, alive, until SIGUSR1."""
    env = dict(os.environ, KR_TEST_NOW=at.isoformat(), PYTHONPATH=str(ROOT))
    if stop_at:
        env["KR_TEST_STOP_AT"] = stop_at
    if pause_file:
        env["KR_TEST_PAUSE_FILE"] = str(pause_file)
    out = open(root / f"rollover-{at:%Y%m%d%H%M}-{stop_at or 'end'}.log".replace(":", "_"), "wb")
    proc = psutil.Popen([sys.executable, str(CLOCKED_CLI), "rollover", "--env", "staging", "--json"],
                        env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    return proc


def wait_stopped(proc, log_dir):
    """Until the process has stopped itself (observed, never guessed); fails if it ends."""
    deadline = time.monotonic() + 300
    while proc.status() != psutil.STATUS_STOPPED:
        if proc.poll() is not None:
            logs = "".join(p.read_text() for p in log_dir.glob("rollover-*.log"))
            pytest.fail(f"rollover ended (exit {proc.returncode}) before its stop point:\n{logs[-3000:]}")
        assert time.monotonic() < deadline, "rollover never reached its stop point"
        time.sleep(0.02)


def query(root, sql):
    conn = sqlite3.connect(root / "staging.db")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def lease_holder(root):
    return query(root, "SELECT pid FROM keyrotate_leases WHERE target = 'rollover:staging'")


def rotations(root):
    return query(root, "SELECT rotation_id, state, steps_done FROM keyrotate_rotations")


def test_two_concurrent_rollover_runs_one_refuses(project, clock):
    root, cf, _, store = project
    with_overlap(root, extra=MASTER_POLICY)
    clock.at(utc("2027-04-05 10:00"))
    paused = root / "paused"
    first = clocked_rollover(root, clock.t, stop_at="step:switch", pause_file=paused)
    try:
        deadline = time.monotonic() + 300
        while not paused.exists():                # mid-rotation, holding the lease, alive
            assert first.poll() is None, "rollover ended before its pause point"
            assert time.monotonic() < deadline, "rollover never reached its pause point"
            time.sleep(0.02)
        assert lease_holder(root) == [(first.pid,)]
        second, out = rollover()
        assert second.exit_code == 2
        message = out["error"]["message"]
        assert "another keyrotate run holds rollover:staging" in message and f"pid {first.pid}" in message
        staged = store.read("MASTER_KEY", "pending")
        first.send_signal(signal.SIGUSR1)
        assert first.wait(timeout=300) == 0
    finally:
        if first.poll() is None:
            first.kill()
    assert lease_holder(root) == []               # released at the end
    assert len(rotations(root)) == 1 and store.read("MASTER_KEY", "pending") == staged
    res, out = rollover()                         # the overlap is open: nothing to start twice
    assert res.exit_code == 0 and entry(out, "MASTER_KEY")["outcome"] == "awaiting-finish"
    assert len(rotations(root)) == 1


START_POINTS = ["started", "step:stage", "step:introduce", "step:switch", "step:validate",
                "step:reencrypt", "step:verify", "ended:awaiting-finish"]
FINISH_POINTS = ["step:confirm-switch", "step:re-verify", "step:remove-previous", "step:promote",
                 "ended:finished"]


@pytest.mark.slow
def test_kill_9_between_any_two_steps_leaves_the_next_rollover_to_resume(project, clock):
    """Each run is killed (SIGKILL) right after one more point of the rotation's record;
    the next run must carry on from there: the same rotation, the same pending value, no
    step done twice, no push made twice, and at the end every row under the new key. The
    record of a step that only changes keyrotate's own records (REDONE_WHOLE) rides with
    the next append: killed there, it is lost, and the next run does that step again."""
    from keyrotate.rotation.state import REDONE_WHOLE

    root, cf, _, store = project
    with_overlap(root, extra=MASTER_POLICY)
    start, finish = utc("2027-04-05 10:00"), utc("2027-04-13 10:00")
    staged = None
    for i, point in enumerate(START_POINTS + FINISH_POINTS):
        at = (start if point in START_POINTS else finish) + timedelta(minutes=i)
        proc = clocked_rollover(root, at, stop_at=point)
        try:
            wait_stopped(proc, root)
            recorded = trail(root)[-1]              # committed, with its audit event
            kind, _, name = point.partition(":")
            expected = {"started": ("rotation.started", None), "step": ("rotation.step", name),
                        "ended": ("rotation.finished", None) if name == "finished"
                        else ("rotation.step", name)}[kind]
            deferred = kind == "step" and name in REDONE_WHOLE   # not committed yet
            if not deferred:
                assert (recorded["event"], recorded["step"]) == expected, (point, recorded)
        finally:
            proc.kill()                           # SIGKILL, between two steps
            proc.wait()
        # the database is read only once the run is dead: stopped, its lease's heartbeat
        # may have been frozen inside a commit, holding the file's lock
        assert lease_holder(root) == [(proc.pid,)]    # it died holding the lease
        (rot_id, state, steps), = rotations(root)     # one rotation, resumed every time
        steps = json.loads(steps)
        if deferred:                                  # lost in the kill: done again next run
            assert name not in steps, point
        assert len(steps) == len(set(steps)), steps   # no step done twice
        staged = staged or store.read("MASTER_KEY", "pending")
        if staged:                                    # never made again, never lost
            now_in = "current" if "promote" in steps else "pending"
            assert store.read("MASTER_KEY", now_in) == staged, point
    assert state == "finished"
    assert steps == ["stage", "introduce", "switch", "validate", "reencrypt", "verify",
                     "confirm-switch", "re-verify", "remove-previous", "promote"]
    clock.at(finish + timedelta(hours=1))
    res, out = rollover()                         # takes over the dead run's lease at once
    assert res.exit_code == 0 and entry(out, "MASTER_KEY")["outcome"] == "ok"
    assert lease_holder(root) == []
    assert store.read("MASTER_KEY") == staged and store.read("MASTER_KEY", "previous") == OLD_SECRET
    for w in ("api", "oauth"):
        assert _active(cf, w)["MASTER_KEY"] == staged and "MASTER_KEY_PREVIOUS" not in _active(cf, w)
    assert rows_open_under(root, staged)
    pushed = [e for e in trail(root) if e["event"] == "worker.secrets" and e["detail"]["state"] == "intent"]
    assert len(pushed) == 6, [e["summary"] for e in pushed]   # two Workers, three pushes each, once
    assert run_cli("audit", "verify", "--env", "staging").exit_code == 0


# -- a whole cycle, as the README shows it ----------------------------------------------------

CYCLE_POLICY = {
    "MASTER_KEY": ("master-key", f'\nmax_age = "90d"\nauto = true\nfinish_after = "7d"\n{WINDOW}'),
    "JWT_SECRET": ("jwt-hs256", f'\nmax_token_ttl = "1h"\nmax_age = "30d"\nauto = true\n'
                                f'finish_after = "1d"\n{WINDOW}'),
}


def _what(s, reported):
    """One secret's line in the README's table; None when there is nothing to tell."""
    name, outcome, note = s["secret"], s["outcome"], s["note"]
    key = name == "MASTER_KEY"
    if outcome == "due":
        if name in reported:
            return None
        reported.add(name)
        return f"`{name}` due, `auto = false`: reported (so is every run after)"
    if outcome == "paused":
        return f"`{name}` paused: {note.split(': ', 1)[1].split(';')[0]}"
    if outcome == "waiting" or (outcome == "awaiting-finish" and "outside the window" in note):
        return f"`{name}` {'due' if outcome == 'waiting' else 'finish due'}, outside the window: waits"
    return {"started": f"`{name}` started: new value staged, pushed beside the old one"
                       + (", rows rewrapped and verified" if key else "") + "; overlap open",
            "resumed": f"`{name}` resumed: validated"
                       + (", rows rewrapped and verified" if key else "") + "; overlap open",
            "finished": f"`{name}` finished: " + ("rows verified again, " if key else "")
                        + f"`{name}_PREVIOUS` removed, new value promoted",
            }.get(outcome)


def _cycle_table(runs):
    lines = ["| run (UTC) | day | what it did | exit | next step due |", "|---|---|---|---|---|"]
    reported: set[str] = set()
    for at, exit_code, out in runs:
        told = [w for s in out["secrets"] if (w := _what(s, reported))]
        if not told and exit_code == 0:
            continue
        day = (at - SET).days
        nxt = datetime.fromisoformat(out["next_step_at"])
        nxt = "the next run" if nxt <= at else f"{nxt:%a %m-%d %H:%M}"
        lines.append(f"| {at:%a %Y-%m-%d %H:%M} | {day} | {'; '.join(told)} | {exit_code} | {nxt} |")
    return "\n".join(lines)


@pytest.mark.slow
def test_a_90_day_cycle_as_the_readme_shows_it(project, clock):
    """A daily schedule at 10:00 UTC for 101 days: every run's outcome as the README's table
    "Scheduled rollover" shows it, generated here (the README must hold this very table)."""
    root, cf, health, store = project
    for secret, (kind, policy) in CYCLE_POLICY.items():
        with_overlap(root, secret, kind, extra=policy)
    edit_manifest(root, '[secrets.GOOGLE_CLIENT_SECRET]\nkind = "external"',
                  '[secrets.GOOGLE_CLIENT_SECRET]\nkind = "external"\nmax_age = "90d"')
    runs = []
    for day in range(102):
        at = clock.at(SET + timedelta(days=day))
        health.answers = {"oauth": (500, {"ok": False})} if at.date().isoformat() == "2027-04-05" else {}
        res, out = rollover()
        assert res.exit_code == out["exit_code"], res.output
        runs.append((at, res.exit_code, out))
    table = _cycle_table(runs)
    # the cycle itself: MASTER_KEY once, JWT_SECRET three times, each finished
    finished = [s["secret"] for _, _, out in runs for s in out["secrets"] if s["outcome"] == "finished"]
    assert finished.count("MASTER_KEY") == 1 and finished.count("JWT_SECRET") == 3
    assert [code for _, code, _ in runs].count(3) == 1 and {code for _, code, _ in runs} == {0, 3}
    assert rows_open_under(root, store.read("MASTER_KEY")) and store.read("MASTER_KEY") != OLD_SECRET
    assert not any("PREVIOUS" in k for w in ("api", "oauth") for k in _active(cf, w))
    assert run_cli("audit", "verify", "--env", "staging").exit_code == 0
    readme = (ROOT / "README.md").read_text()
    assert table in readme, "README.md's cycle table differs from this run's:\n" + table


def test_the_lease_lives_on_while_a_long_step_runs_and_is_released_after(project):
    """A reencrypt of millions of rows outlasts the lease's 2 minutes: the heartbeat renews
    it meanwhile, with no call from the step."""
    from keyrotate.config.context import Context
    from keyrotate.controlplane.held_lease import HeldLease

    root = project[0]

    def expiry():
        return query(root, "SELECT expires_at FROM keyrotate_leases WHERE target = 'rollover:staging'")

    ctx = Context.load("staging")
    try:
        with HeldLease(ctx, "rollover:staging"):
            first = expiry()
            assert len(first) == 1
            deadline = time.monotonic() + 60
            while expiry() == first:                  # renewed, observed
                assert time.monotonic() < deadline, "the lease was never renewed"
                time.sleep(0.01)
        assert expiry() == []
    finally:
        ctx.close()


def test_a_run_that_only_looks_costs_a_few_d1_requests(project, clock):
    """A schedule may run rollover every hour against D1 (1,200 API requests per 5 minutes
    for everything): a run with nothing to do reads the policy's inputs and the lease, no
    more (7 requests here: two to check keyrotate's schema, four for the lease, one for the
    open rotation)."""
    root, cf, _, _ = project
    edit_manifest(root, 'database = "file:staging.db"', 'database = "d1://acct/staging"')
    with_overlap(root, extra=MASTER_POLICY)
    clock.at(utc("2027-02-01 10:00"))
    assert rollover()[0].exit_code == 0           # the first run makes keyrotate's tables
    for at, outcome in (("2027-02-01 11:00", "ok"), ("2027-04-03 11:00", "waiting")):
        clock.at(utc(at))
        before = cf.d1_requests
        res, out = rollover()
        assert res.exit_code == 0 and entry(out, "MASTER_KEY")["outcome"] == outcome
        assert cf.d1_requests - before <= 8, (at, cf.d1_requests - before)


@pytest.mark.slow
def test_a_cutover_killed_inside_its_promote_finishes_on_the_next_run(project, clock):
    """Review: the records of the steps before the promote (validate, catch-up, verify)
    rode with the promote's record. Killed after the store's promote but before that
    record, the next run did those steps again, which need the pending value the promote
    had just removed: exit 2, for good. They are written before the store changes now."""
    root, cf, _, store = project
    at = utc("2027-04-05 10:00")
    env = dict(os.environ, KR_TEST_NOW=at.isoformat(), PYTHONPATH=str(ROOT),
               KR_TEST_STOP_AT="store:promote")
    with open(root / "rollover-cutover.log", "wb") as out:
        proc = psutil.Popen([sys.executable, str(CLOCKED_CLI), "rotate", "MASTER_KEY", "--env",
                             "staging", "--yes", "--json"], env=env, cwd=root, stdout=out,
                            stderr=subprocess.STDOUT)
    try:
        wait_stopped(proc, root)
        staged = store.read("MASTER_KEY")       # promoted: the new value is current
    finally:
        proc.kill()                             # SIGKILL inside the promote step
        proc.wait()
    assert store.read("MASTER_KEY", "pending") is None and staged != OLD_SECRET
    again = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--yes", "--json")
    assert again.exit_code == 0, again.output
    assert last_json(again.output)["state"] == "finished"
    assert store.read("MASTER_KEY") == staged
    assert run_cli("audit", "verify", "--env", "staging").exit_code == 0
