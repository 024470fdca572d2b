"""Serving keys: at every moment, every Worker version that serves traffic opens every row
(issue 19). Each test reproduces a way the app lost rows or its key before, against the
versioned stand-in, and checks the invariant from the stand-in's ground truth: the secrets
each deployed version really holds (tests/support/serving.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest

from keyrotate.crypto.keys import MasterKey
from tests.support.cloudflare_project import JWT, _active, with_key_routes, with_overlap
from tests.support.helpers import OLD_SECRET, ROOT, last_json, run_cli
from tests.support.serving import App, problems, serving_keys

HOLDERS = ["api", "oauth"]


def _setup(project, routes=True, canary=False):
    root, cf, health, store = project
    with_overlap(root)
    if routes:
        with_key_routes(root, cf, store)
    if canary:
        for w in HOLDERS:
            text = (root / "keyrotate.toml").read_text()
            (root / "keyrotate.toml").write_text(
                text.replace(f'{w} = "{health.url(w)}"', f'{w} = "{cf.health_url(f"tminus-{w}-staging")}"'))
    assert run_cli("secrets", "push", "--env", "staging").exit_code == 0
    return root, cf, store


def _known(store, *more):
    return {v for v in (store.read("MASTER_KEY"), store.read("MASTER_KEY", "pending"),
                        store.read("MASTER_KEY", "previous"), OLD_SECRET, *more) if v}


def _check(project, known):
    root, cf, _, store = project
    found = problems(cf, root / "staging.db", store, HOLDERS, known)
    assert found == [], found


@pytest.mark.parametrize("routes", [True, False], ids=["asked", "by-records"])
def test_abort_after_a_refused_switch_goes_back_and_moves_the_apps_rows_back(project, routes):
    """Case 1: oauth's API refuses the switch after api took it; the app seals under the
    new key on api. --abort must not drop that key: it puts api back on the old key (both
    read both), moves the app's rows back, and only then retires the new value."""
    root, cf, store = _setup(project, routes)
    app = App(cf, root / "staging.db")

    def refuse_oauth_once_api_switched(script, version):
        if script.name == "tminus-api-staging" and version.secrets.get("MASTER_KEY") not in (None, OLD_SECRET):
            cf.workers.refusing.add("tminus-oauth-staging")

    cf.workers.on_version.append(refuse_oauth_once_api_switched)
    res = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--json")
    assert res.exit_code == 1, res.output
    new = store.read("MASTER_KEY", "pending")
    assert _active(cf, "api")["MASTER_KEY"] == new        # api switched, oauth refused
    assert _active(cf, "oauth")["MASTER_KEY_PREVIOUS"] == new   # but oauth reads it (introduced)
    assert app.seal_as("api") == new
    _check(project, _known(store))

    cf.workers.on_version.clear()
    cf.workers.refusing.clear()
    res = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--abort", "--json")
    assert res.exit_code == 0, res.output
    assert last_json(res.output)["state"] == "aborted"
    for w in HOLDERS:
        assert _active(cf, w)["MASTER_KEY"] == OLD_SECRET and "MASTER_KEY_PREVIOUS" not in _active(cf, w)
    assert store.read("MASTER_KEY", "pending") is None and store.read("MASTER_KEY") == OLD_SECRET
    _check(project, _known(store, new))   # the app's rows open under the old key again
    verify = run_cli("verify", "--db", f"file:{root / 'staging.db'}", "--target",
                     "accounts.encrypted_tokens", "--key", f"dotenv:{root / '.env.staging'}#MASTER_KEY",
                     "--json")
    assert verify.exit_code == 0 and last_json(verify.output)["old"] == 0

    # and a rotation can start afresh
    again = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--json")
    assert again.exit_code == 0 and last_json(again.output)["state"] == "awaiting-finish", again.output
    _check(project, _known(store, new))


def test_abort_keeps_the_new_key_until_no_row_needs_it(project):
    """An abort that cannot finish (a Worker refuses the restore) keeps the new value in
    the store, exits non-zero, and resumes when run again."""
    root, cf, store = _setup(project)
    app = App(cf, root / "staging.db")
    assert run_cli("rotate", "MASTER_KEY", "--env", "staging").exit_code == 0
    new = store.read("MASTER_KEY", "pending")
    app.seal_as("oauth")
    cf.workers.refusing.add("tminus-oauth-staging")
    stuck = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--abort", "--json")
    assert stuck.exit_code in (1, 3), stuck.output
    assert store.read("MASTER_KEY", "pending") == new          # kept: rows are under it
    _check(project, _known(store))
    cf.workers.refusing.clear()
    done = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--abort", "--json")
    assert done.exit_code == 0, done.output
    assert store.read("MASTER_KEY", "pending") is None
    _check(project, _known(store, new))


def test_a_master_key_canary_introduces_first_so_every_share_reads_both_keys(project):
    """Case 2: at 10% and 50% the new version seals under the new key; the previous
    version must read it. Every deployment the rotation makes is checked as it happens."""
    root, cf, store = _setup(project, canary=True)
    app = App(cf, root / "staging.db")
    seen: list[list[str]] = []

    def at_every_deployment(script):
        if script.name in (f"tminus-{w}-staging" for w in HOLDERS):
            found = problems(cf, root / "staging.db", store, HOLDERS, _known(store))
            seen.append(found)
            if not found:   # the app writes through whatever serves now
                app.seal_as(script.name.split("-")[1], 1)

    cf.workers.on_deploy.append(at_every_deployment)
    res = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--canary", "--json")
    assert res.exit_code == 0, res.output
    assert len(seen) >= 2 * 5 and all(found == [] for found in seen), seen
    api = cf.script("tminus-api-staging")
    shares = [[v["percentage"] for v in d["versions"]] for d in reversed(api.deployments[:5])]
    assert shares == [[100.0, 0.0], [10.0, 90.0], [50.0, 50.0], [100.0, 0.0], [100.0]]
    _check(project, _known(store))


@pytest.mark.parametrize("fault", ["5xx", "sigterm"])
def test_a_canary_cut_short_goes_back_to_the_previous_version_and_resumes(project, fault):
    """Case 3: a Cloudflare 5xx at the 50% step, or SIGTERM during the ramp, takes the abort
    path: the previous version at 100% again, exit 3, and the same command resumes."""
    root, cf, store = _setup(project, canary=True)
    if fault == "5xx":
        cf.workers.fail_once += [lambda m, sub, body: m == "POST" and sub == "deployments"
                                 and b'"percentage": 50' in body.replace(b'"percentage":50', b'"percentage": 50')] * 4
        res = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--canary", "--json")
        code = res.exit_code
    else:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen([sys.executable, "-m", "keyrotate.cli", "rotate", "MASTER_KEY",
                                 "--env", "staging", "--canary", "--json"], cwd=root, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        cf.workers.on_deploy.append(lambda s: proc.send_signal(signal.SIGTERM) if any(
            v["percentage"] == 10.0 for v in s.deployments[0]["versions"]) else None)
        proc.communicate(timeout=300)
        code = proc.returncode
    assert code == 3
    api = cf.script("tminus-api-staging")
    assert [v["percentage"] for v in api.deployments[0]["versions"]] == [100.0]   # not split
    assert serving_keys(cf, ["api"])[0][1] == OLD_SECRET
    _check(project, _known(store))
    cf.workers.on_deploy.clear()
    resumed = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--canary", "--json")
    assert resumed.exit_code == 0, resumed.output
    assert last_json(resumed.output)["state"] == "awaiting-finish"
    _check(project, _known(store))


def test_rollback_force_after_an_unconfirmed_push_keeps_the_key_the_rows_are_under(project):
    """Case 4: keyrotate is killed after Cloudflare applied the switch on api but before it
    heard so; the app seals under the new key. `rollback --force` must keep that key."""
    root, cf, store = _setup(project, routes=False)
    app = App(cf, root / "staging.db")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "keyrotate.cli", "rotate", "MASTER_KEY",
                             "--env", "staging"], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def kill_once_switched(script, version):
        if script.name == "tminus-api-staging" and version.secrets.get("MASTER_KEY_PREVIOUS") == OLD_SECRET:
            proc.kill()   # Cloudflare applied it; keyrotate never hears the answer

    cf.workers.on_version.append(kill_once_switched)
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    new = store.read("MASTER_KEY", "pending")
    assert _active(cf, "api")["MASTER_KEY"] == new
    app.seal_as("api")
    res = run_cli("rollback", "--env", "staging", "--only", "api", "--yes", "--force", "--json")
    assert res.exit_code == 0, res.output
    assert _active(cf, "api")["MASTER_KEY"] == new and _active(cf, "api")["MASTER_KEY_PREVIOUS"] == OLD_SECRET
    _check(project, _known(store))


def test_the_rollback_guard_compares_versions_by_number_not_by_clock(project):
    """Case 5: with Cloudflare's clock 10 minutes ahead, a plain rollback across the
    MASTER_KEY switch must still be refused (no key route: keyrotate's records decide)."""
    root, cf, store = _setup(project, routes=False)
    cf.workers.clock_skew = timedelta(minutes=10)
    assert run_cli("rotate", "MASTER_KEY", "--env", "staging").exit_code == 0
    before = [dict(s) for s, _ in cf.deployed("tminus-oauth-staging")]
    res = run_cli("rollback", "--env", "staging", "--only", "oauth", "--yes", "--json")
    assert res.exit_code == 2 and "across a secret rotation" in res.output, res.output
    assert [dict(s) for s, _ in cf.deployed("tminus-oauth-staging")] == before   # nothing moved
    _check(project, _known(store))


def test_a_rollback_target_is_asked_at_0_percent_before_any_traffic_moves(project):
    """Proof from the Workers' side: the target answers which keys it holds while it serves
    no traffic. A target whose keys cover the rows may serve even though its secrets
    differ; one whose keys miss them is refused (exit 2) and no traffic moves."""
    root, cf, store = _setup(project)
    assert run_cli("rotate", "MASTER_KEY", "--env", "staging").exit_code == 0   # rows under new
    shares: list[list[float]] = []
    cf.workers.on_deploy.append(lambda s: shares.append(
        [v["percentage"] for v in s.deployments[0]["versions"]]) if s.name == "tminus-oauth-staging" else None)
    pings = cf.workers.pings
    # one back: the introduce version holds (old, new): it reads every row: allowed
    ok = run_cli("rollback", "--env", "staging", "--only", "oauth", "--yes", "--json")
    assert ok.exit_code == 0, ok.output
    assert [100.0, 0.0] in shares and cf.workers.pings > pings
    _check(project, _known(store))
    # someone had oauth's pre-rotation version (the old key only) serve for a while, then
    # put the switch back: the last deployment before this one is that old version
    oauth = cf.script("tminus-oauth-staging")
    pre = next(v for v in oauth.versions if v.secrets.get("MASTER_KEY") == OLD_SECRET
               and "MASTER_KEY_PREVIOUS" not in v.secrets)
    switched = next(v for v in reversed(oauth.versions)
                    if v.secrets.get("MASTER_KEY_PREVIOUS") == OLD_SECRET)
    with cf.lock:
        oauth.deploy([(pre.id, 100.0)], "dashboard")
        oauth.deploy([(switched.id, 100.0)], "dashboard")
    active = cf.script("tminus-oauth-staging").active.id
    shares.clear()
    refused = run_cli("rollback", "--env", "staging", "--only", "oauth", "--yes", "--json")
    assert refused.exit_code == 2 and "rows or objects are under" in refused.output, refused.output
    assert cf.script("tminus-oauth-staging").active.id == active
    assert shares == [[100.0, 0.0], [100.0]]          # asked at 0%, then taken out again
    _check(project, _known(store))
    # --force: that version's code with the secrets serving now
    forced = run_cli("rollback", "--env", "staging", "--only", "oauth", "--yes", "--force", "--json")
    assert forced.exit_code == 0, forced.output
    assert _active(cf, "oauth")["MASTER_KEY_PREVIOUS"] == OLD_SECRET   # the switch's keys
    assert cf.script("tminus-oauth-staging").active.modules == pre.modules  # the old code
    _check(project, _known(store))


def test_a_compromise_takes_over_a_rotation_whose_push_reached_a_worker(project):
    """Case 7: the open rotation's steps say only `stage`, but its value reached api
    (oauth refused the introduce). The takeover keeps that value as an old key, in one
    transaction with the new rotation's start."""
    root, cf, store = _setup(project)
    cf.workers.refusing.add("tminus-oauth-staging")
    assert run_cli("rotate", "MASTER_KEY", "--env", "staging").exit_code == 1
    first_new = store.read("MASTER_KEY", "pending")
    cf.workers.refusing.clear()
    res = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--compromised", "--yes", "--json")
    assert res.exit_code == 0, res.output
    out = last_json(res.output)
    assert out["detail"]["took_over"] and "previous" in out["detail"]["also_old"]
    assert store.read("MASTER_KEY", "previous") == first_new or store.read("MASTER_KEY") == first_new \
        or first_new in (store.read("MASTER_KEY", s) for s in ("current", "previous"))
    _check(project, _known(store, first_new))


def test_secrets_push_refuses_to_undo_an_open_rotation(project):
    """`secrets push` during an overlap would put the old MASTER_KEY back on every Worker
    while the rows are under the new one."""
    root, cf, store = _setup(project)
    assert run_cli("rotate", "MASTER_KEY", "--env", "staging").exit_code == 0
    res = run_cli("secrets", "push", "--env", "staging", "--json")
    assert res.exit_code == 2 and "rotation is open" in res.output
    _check(project, _known(store))


def test_the_jwt_ttl_counts_from_the_last_workers_push(project):
    """Case 9: --finish waits max_token_ttl from the *last* Worker's switch."""
    root, cf, health, store = project
    with_overlap(root, "JWT_SECRET", "jwt-hs256", '\nmax_token_ttl = "1h"')
    assert run_cli("secrets", "push", "--env", "staging").exit_code == 0
    assert run_cli("rotate", "JWT_SECRET", "--env", "staging").exit_code == 0
    rot = json.loads(run_cli("rotate", "JWT_SECRET", "--env", "staging", "--json").output.splitlines()[-1])
    trail = [json.loads(line) for line in (root / ".keyrotate" / "audit-staging.jsonl").read_text().splitlines()]
    last_switch = max(e["at"] for e in trail if e["event"] == "worker.secrets"
                      and e["detail"].get("state") == "done")
    assert rot["detail"]["pushed_at"] >= last_switch
    refused = run_cli("rotate", "JWT_SECRET", "--env", "staging", "--finish")
    assert refused.exit_code == 2 and "may live" in refused.output


def test_a_cloudflare_5xx_during_a_push_exits_3(project):
    """Case 9: Cloudflare keeps failing (5xx) while a secret is pushed: resumable."""
    root, cf, store = _setup(project, routes=False)
    cf.worker_faults.extend(["500"] * 50)
    res = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--json")
    assert res.exit_code == 3, res.output
    cf.worker_faults.clear()
    again = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--json")
    assert again.exit_code == 0, again.output
    _check(project, _known(store))


def test_the_key_route_answers_kids_as_keyrotate_computes_them(project):
    """The stand-in's route and keyrotate agree on kids (workerd's agreement is in
    tests/rotation/test_worker_e2e.py)."""
    root, cf, store = _setup(project)
    from keyrotate.config.context import Context
    from keyrotate.controlplane.serving import observe

    ctx = Context.load("staging")
    try:
        s = observe(ctx, "api")
        assert [(k.kid, k.previous_kid) for k in s.serving_keys()] == \
            [(MasterKey.from_secret(OLD_SECRET).kid, None)]
    finally:
        ctx.close()


def test_two_rotations_of_one_secret_never_run_at_once(project):
    """A person and a schedule (or two terminals): the second refuses, naming the holder,
    while the first is mid-push; the first then ends as if alone."""
    root, cf, store = _setup(project, routes=False)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "keyrotate.cli", "rotate", "MASTER_KEY",
                             "--env", "staging"], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seconds: list = []

    def second_while_the_first_pushes(script, version):
        if not seconds and script.name == "tminus-api-staging":
            seconds.append(run_cli("rotate", "MASTER_KEY", "--env", "staging", "--json"))

    cf.workers.on_version.append(second_while_the_first_pushes)
    proc.communicate(timeout=300)
    assert proc.returncode == 0
    second = seconds[0]
    assert second.exit_code == 2 and "another keyrotate run holds" in second.output, second.output
    _check(project, _known(store))


def _store_lost_the_key(root, store):
    """The store's MASTER_KEY replaced by hand with a value no row is under (a wrong copy),
    while the Workers still serve the key the rows are under."""
    env = root / ".env.staging"
    env.write_text(env.read_text().replace(store.read("MASTER_KEY"), "cd" * 32))


def test_a_push_of_a_master_key_no_row_opens_under_is_refused(project):
    """Hostile review: `secrets push` put a MASTER_KEY that opens none of the rows on every
    Worker and exited 0. Rows under no value of the store block a master key's push."""
    root, cf, store = _setup(project)
    _store_lost_the_key(root, store)
    res = run_cli("secrets", "push", "--env", "staging", "--only", "MASTER_KEY", "--json")
    assert res.exit_code == 2, res.output
    assert "open under no value of MASTER_KEY" in last_json(res.output)["error"]["message"]
    assert all(_active(cf, w)["MASTER_KEY"] == OLD_SECRET for w in HOLDERS)   # nothing pushed


def test_a_rotation_from_a_store_that_lost_the_key_pushes_nothing(project):
    """Hostile review: `rotate` pushed introduce and switch, then its reencrypt probe found
    no row opening: every serving version was left unable to read the rows. The preflight
    probes the rows with the store's values before anything is pushed."""
    root, cf, store = _setup(project)
    _store_lost_the_key(root, store)
    before = {w: cf.script(f"tminus-{w}-staging").active.id for w in HOLDERS}
    for args in (["--dry-run"], []):
        res = run_cli("rotate", "MASTER_KEY", "--env", "staging", *args, "--json")
        assert res.exit_code == 2, res.output
        assert "opens under a value of MASTER_KEY" in last_json(res.output)["error"]["message"]
    assert {w: cf.script(f"tminus-{w}-staging").active.id for w in HOLDERS} == before
    assert all(_active(cf, w)["MASTER_KEY"] == OLD_SECRET for w in HOLDERS)


def test_rollback_push_and_deploy_wait_for_a_running_rotation(project):
    """Hostile review: a `rollback` run while `rotate --canary` ramped clobbered the split
    and deployed an old-key-only version beside rows sealed under the new key. While a
    rotation runs, its lease refuses a rollback or a push of the Workers holding its secret."""
    root, cf, store = _setup(project)
    paused = root / "paused"
    env = dict(os.environ, PYTHONPATH=str(ROOT), KR_TEST_STOP_AT="step:introduce",
               KR_TEST_PAUSE_FILE=str(paused))
    rotation = subprocess.Popen([sys.executable, str(ROOT / "tests" / "support" / "clocked_cli.py"),
                                 "rotate", "MASTER_KEY", "--env", "staging"], cwd=root, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not paused.exists():          # running, between its introduce and its switch
            assert rotation.poll() is None, "the rotation ended before its pause point"
            time.sleep(0.02)
        before = {w: cf.script(f"tminus-{w}-staging").active.id for w in HOLDERS}
        for args in (["rollback", "--env", "staging", "--only", "api", "--yes"],
                     ["secrets", "push", "--env", "staging", "--only", "JWT_SECRET"],
                     ["deploy", "--env", "staging", "--only", "api"]):
            res = run_cli(*args, "--json")
            assert res.exit_code == 2, res.output
            assert "holds rotate:staging:MASTER_KEY" in last_json(res.output)["error"]["message"]
        assert {w: cf.script(f"tminus-{w}-staging").active.id for w in HOLDERS} == before
        rotation.send_signal(signal.SIGUSR1)
        assert rotation.wait(timeout=300) == 0
    finally:
        if rotation.poll() is None:
            rotation.kill()
    _check(project, _known(store))


@pytest.mark.parametrize("routes", [True, False], ids=["asked", "by-records"])
def test_a_finish_after_an_outside_rollback_introduces_before_its_canary(project, routes):
    """Hostile review: api rolled back outside keyrotate (the dashboard) to a version that
    holds the old key alone; `--finish` then ramped its canary of NAME=new beside it, two
    versions unable to read each other's writes. Introduce goes first, at 100%."""
    root, cf, store = _setup(project, routes=routes, canary=True)
    old_only = cf.script("tminus-api-staging").active.id
    assert run_cli("rotate", "MASTER_KEY", "--env", "staging", "--canary").exit_code == 0
    api = cf.script("tminus-api-staging")
    api.deploy([(old_only, 100.0)], "rolled back from the dashboard")
    seen: list[list[str]] = []

    def at_every_deployment(script):
        if script.name == "tminus-api-staging":
            seen.append(problems(cf, root / "staging.db", store, HOLDERS, _known(store)))

    cf.workers.on_deploy.append(at_every_deployment)
    res = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--finish", "--canary",
                  "--from-deployed", "--json")
    assert res.exit_code in (0, 3), res.output
    if res.exit_code == 3:   # the finish reopened the switch: the next run settles it
        res = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--finish", "--canary",
                      "--from-deployed", "--json")
        assert res.exit_code == 0, res.output
    splits = [[v["percentage"] for v in d["versions"]] for d in api.deployments
              if len(d["versions"]) > 1 and all(v["percentage"] for v in d["versions"])]
    assert splits, "the switch was ramped by a canary"
    assert all(found == [] for found in seen), seen
    _check(project, _known(store))


def test_a_rollback_never_puts_a_destroyed_key_back_on_a_worker(project):
    """Hostile review: after `keys destroy`, a plain `rollback --yes` put the destroyed key
    back on the version serving 100% (as PREVIOUS). A target holding a key the store no
    longer holds crosses a rotation: refused without --force, which keeps the serving keys."""
    root, cf, store = _setup(project)
    assert run_cli("rotate", "MASTER_KEY", "--env", "staging").exit_code == 0
    assert run_cli("rotate", "MASTER_KEY", "--env", "staging", "--finish").exit_code == 0
    old_kid = MasterKey.from_secret(OLD_SECRET).kid
    assert run_cli("keys", "destroy", old_kid, "--env", "staging", "--yes").exit_code == 0
    res = run_cli("rollback", "--env", "staging", "--only", "api", "--yes", "--json")
    assert res.exit_code == 2 and old_kid in res.output, res.output
    forced = run_cli("rollback", "--env", "staging", "--only", "api", "--yes", "--force", "--json")
    assert forced.exit_code == 0, forced.output
    assert all(OLD_SECRET not in _active(cf, w).values() for w in HOLDERS)
    _check(project, _known(store))


def test_a_jwt_finish_that_pushes_the_switch_again_waits_the_ttl_from_that_push(project):
    """Hostile review: api was rolled back outside keyrotate to the introduce version (it
    signs with the old JWT secret again); `--finish` pushed the switch again and removed the
    previous secret a second later, logging out everyone api signed in meanwhile. The TTL
    counts from that push: exit 3, and the same command finishes once it has passed."""
    from tests.support.clock import TestClock, utc

    root, cf, _, store = project
    with_overlap(root, "JWT_SECRET", "jwt-hs256", '\nmax_token_ttl = "1h"')
    clock = TestClock(utc("2027-01-04 10:00"))
    clock.install()
    try:
        assert run_cli("secrets", "push", "--env", "staging").exit_code == 0
        assert run_cli("rotate", "JWT_SECRET", "--env", "staging").exit_code == 0
        api = cf.script("tminus-api-staging")
        introduce = [v for v in api.versions if v.secrets.get("JWT_SECRET") == JWT][-1]
        assert introduce.secrets.get("JWT_SECRET_PREVIOUS")
        clock.advance(hours=2)
        api.deploy([(introduce.id, 100.0)], "rolled back from the dashboard")
        finish = ["rotate", "JWT_SECRET", "--env", "staging", "--finish", "--from-deployed", "--json"]
        res = run_cli(*finish)
        assert res.exit_code == 3 and "pushed again" in res.output, res.output
        assert _active(cf, "api").get("JWT_SECRET_PREVIOUS") == JWT   # still read: tokens live
        assert _active(cf, "api")["JWT_SECRET"] == store.read("JWT_SECRET", "pending")
        clock.advance(hours=1, minutes=1)
        again = run_cli(*finish)
        assert again.exit_code == 0, again.output
        assert "JWT_SECRET_PREVIOUS" not in _active(cf, "api")
    finally:
        clock.uninstall()
