"""Worker versions done right, against a stand-in that models them (tests/support/
cf_workers.py) and wrangler (the fake; the real 4.86 where its own behaviour is the
point): pushes that cannot half-happen after a rollback or during a gradual deployment,
rollbacks that never bring old secret values back, pushes recorded before they are made,
and children that die with keyrotate (the canary is in test_canary.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.support.cloudflare_project import JWT, WORKERS, _active, rotate_by_hand, with_overlap
from tests.support.helpers import NEW_SECRET, OLD_SECRET, ROOT, last_json, run_cli

pytestmark = pytest.mark.slow


def _versions(cf, w):
    return cf.script(f"tminus-{w}-staging").versions


def _roll_back_api(cf):
    """Someone rolls tminus-api-staging back (as Cloudflare's dashboard would): its latest
    version is no longer the one deployed."""
    s = cf.script("tminus-api-staging")
    with cf.lock:
        s.deploy([(s.versions[-2].id, 100.0)], "dashboard rollback")


def _rolled_back_from_release_2(root, cf):
    """Secrets pushed, everything deployed, then new code for the API Worker deployed and
    rolled back from (its latest version is not the deployed one, and its code differs).
    Returns release 2's modules."""
    assert run_cli("secrets", "push", "--env", "staging").exit_code == 0
    assert run_cli("deploy", "--env", "staging").exit_code == 0
    (root / "workers" / "api" / "index.js").write_text(
        "export default { fetch() { return new Response('release 2') } }\n")
    assert run_cli("deploy", "--env", "staging", "--only", "api").exit_code == 0
    release_2 = cf.script("tminus-api-staging").latest.modules
    _roll_back_api(cf)
    return release_2


@pytest.mark.real_wrangler  # wrangler's own behaviour is the point
def test_the_stand_in_reproduces_the_hazards_with_real_wrangler(project):
    """What happens without keyrotate's guards, with wrangler 4.86 alone."""
    from keyrotate.cloudflare.runner import run
    from keyrotate.cloudflare.wrangler import wrangler_for
    from keyrotate.config.context import Context
    from keyrotate.errors import DeployError

    root, cf, _, store = project
    release_2 = _rolled_back_from_release_2(root, cf)
    api = "tminus-api-staging"
    wrangler = wrangler_for(Context.load("staging"))
    with pytest.raises(DeployError, match="latest version of your Worker isn't currently deployed"):
        wrangler.secret_put(api, "JWT_SECRET", "a-new-jwt-secret-value-of-enough-length-0002")  # 10215
    with pytest.raises(DeployError, match="10214"):
        wrangler.secret_bulk(api, {"JWT_SECRET": "a-new-jwt-secret-value-of-enough-length-0002"})
    deployed = cf.script(api).active
    assert deployed.modules != release_2
    # `versions secret put` works, but copies the latest version's code, not the deployed one's
    res = run([*wrangler._argv(), "versions", "secret", "put", "JWT_SECRET", "--name", api],
              cwd=root, stdin_secret="a-new-jwt-secret-value-of-enough-length-0003")
    assert res.returncode == 0, res.stdout + res.stderr
    assert cf.script(api).latest.modules == release_2 != deployed.modules
    # a rollback across a secret change: Cloudflare's 10220, which `wrangler rollback --yes`
    # forces without asking: the old value serves again
    rotate_by_hand(root, store, NEW_SECRET)
    assert run_cli("secrets", "push", "--env", "staging", "--only", "MASTER_KEY",
                   "--from-deployed").exit_code == 0
    before_push = cf.script(api).deployments[1]["versions"][0]["version_id"]
    wrangler.rollback(api, before_push, "plain wrangler rollback")
    assert cf.deployed(api)[0][0]["MASTER_KEY"] == OLD_SECRET
    assert any("force=true" in path for method, path, _ in cf.log if method == "POST"
               and path.split("?")[0].endswith(f"{api}/deployments"))


def test_after_a_rollback_pushes_refuse_before_any_worker_changes(project):
    root, cf, _, store = project
    release_2 = _rolled_back_from_release_2(root, cf)
    store.write_pending("JWT_SECRET", "a-new-jwt-secret-value-of-enough-length-0001")
    store.promote("JWT_SECRET")
    before = {w: len(_versions(cf, w)) for w in WORKERS}
    refused = run_cli("secrets", "push", "--env", "staging", "--only", "JWT_SECRET", "--json")
    assert refused.exit_code == 2, refused.output
    message = last_json(refused.output)["error"]["message"]
    assert "tminus-api-staging" in message and "--from-deployed" in message
    assert "tminus-oauth-staging" not in message.split("--from-deployed")[0]
    assert {w: len(_versions(cf, w)) for w in WORKERS} == before       # not one Worker touched

    deployed = cf.script("tminus-api-staging").active
    ok = run_cli("secrets", "push", "--env", "staging", "--only", "JWT_SECRET", "--from-deployed")
    assert ok.exit_code == 0, ok.output
    api = cf.script("tminus-api-staging")
    assert api.latest_fully_deployed and api.active.secrets["JWT_SECRET"].startswith("a-new-jwt")
    assert api.active.modules == deployed.modules != release_2        # the deployed code, not the latest
    assert api.active.secrets["MASTER_KEY"] == OLD_SECRET               # the rest inherited
    assert _active(cf, "oauth")["JWT_SECRET"].startswith("a-new-jwt")


def test_a_gradual_deployment_is_not_pushed_into(project):
    root, cf, _, store = project
    assert run_cli("secrets", "push", "--env", "staging").exit_code == 0
    s = cf.script("tminus-oauth-staging")
    with cf.lock:
        s.deploy([(s.versions[-1].id, 50.0), (s.versions[-2].id, 50.0)], "gradual")
    for flags in ((), ("--from-deployed",)):
        res = run_cli("secrets", "push", "--env", "staging", "--only", "JWT_SECRET", *flags)
        assert res.exit_code == 2 and "two versions by percentage" in res.output, res.output


def test_after_finish_a_plain_rollback_would_bring_the_retired_key_back(project):
    root, cf, health, store = project
    with_overlap(root)
    assert run_cli("secrets", "push", "--env", "staging").exit_code == 0
    assert run_cli("deploy", "--env", "staging").exit_code == 0
    code = cf.script("tminus-api-staging").active.modules
    assert run_cli("rotate", "MASTER_KEY", "--env", "staging").exit_code == 0
    assert run_cli("rotate", "MASTER_KEY", "--env", "staging", "--finish").exit_code == 0
    new = store.read("MASTER_KEY")
    # one version back: the one that still held MASTER_KEY_PREVIOUS, the retired key
    refused = run_cli("rollback", "--env", "staging", "--only", "api", "--yes")
    assert refused.exit_code == 2 and "MASTER_KEY_PREVIOUS changed" in refused.output
    assert "MASTER_KEY_PREVIOUS" not in _active(cf, "api")

    forced = run_cli("rollback", "--env", "staging", "--only", "api", "--yes", "--force", "--json")
    assert forced.exit_code == 0, forced.output
    target = last_json(forced.output)["plan"][0]["target"]
    api = cf.script("tminus-api-staging")
    assert cf.deployed("tminus-api-staging") == [({"MASTER_KEY": new, "JWT_SECRET": JWT}, 100.0)]
    assert api.active.modules == api.version(target).modules == code     # the target's code
    assert api.latest_fully_deployed                                     # pushes work after it
    # never a moment with the old values: no deployment ever served the retired key again
    served = [api.version(v["version_id"]).secrets for d in api.deployments for v in d["versions"]
              if d["created_on"] > api.version(target).created_on and v["percentage"] > 0]
    assert all("MASTER_KEY_PREVIOUS" not in s for s in served[:2])


def test_a_push_during_a_deploy_waits_for_it(project, monkeypatch):
    """A MASTER_KEY push while `deploy` checks health (and may roll back) would race its
    rollback: the deploy holds the rotation leases, so the push is refused (exit 2, nothing
    pushed) and the rollback restores exactly what served before."""
    import keyrotate.controlplane.deploy as deploy_module

    root, cf, health, store = project
    assert run_cli("secrets", "push", "--env", "staging").exit_code == 0
    serving = _active(cf, "api")["MASTER_KEY"]
    real_validate = deploy_module.validate
    pushed = []

    def validate_then_someone_pushes(ctx, workers=None):
        result = real_validate(ctx, workers)
        if workers == ["api"] and not pushed:  # meanwhile: a JWT_SECRET push to api
            store.write_pending("JWT_SECRET", NEW_SECRET)
            store.promote("JWT_SECRET")
            pushed.append(run_cli("secrets", "push", "--env", "staging", "--only", "JWT_SECRET"))
        return result

    monkeypatch.setattr(deploy_module, "validate", validate_then_someone_pushes)
    health.answers["oauth"] = (500, {"ok": False})
    res = run_cli("deploy", "--env", "staging", "--json")
    assert res.exit_code == 1 and last_json(res.output)["rolled_back"] == ["oauth", "api"]
    assert pushed[0].exit_code == 2 and "holds rotate:staging:" in pushed[0].output
    assert _active(cf, "api")["MASTER_KEY"] == serving
    assert _active(cf, "api")["JWT_SECRET"] != NEW_SECRET   # nothing was pushed


@pytest.mark.real_wrangler  # wrangler's node process tree must die with keyrotate
def test_a_push_killed_midway_leaves_no_child_and_counts_as_a_change(project):
    root, cf, _, store = project
    assert run_cli("secrets", "push", "--env", "staging").exit_code == 0
    assert run_cli("deploy", "--env", "staging", "--only", "api").exit_code == 0
    rotate_by_hand(root, store, NEW_SECRET)
    cf.worker_delay = 6.0  # Cloudflare is slow to answer the push
    argv = [sys.executable, "-m", "keyrotate.cli", "secrets", "push", "--env", "staging", "--only",
            "MASTER_KEY"]
    proc = psutil.Popen(argv, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not cf.slow_requests and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cf.slow_requests, "the push never reached the API"
    family = [proc, *proc.children(recursive=True)]
    assert any("wrangler" in " ".join(p.cmdline()) for p in family)
    proc.send_signal(signal.SIGKILL)
    gone, alive = psutil.wait_procs(family, timeout=15)
    assert not alive, [p.cmdline() for p in alive]                    # no orphaned wrangler
    cf.worker_delay = 0.0
    plan = last_json(run_cli("rollback", "--env", "staging", "--only", "api", "--json").output)
    assert plan["plan"][0]["crosses"]["unconfirmed"] == ["MASTER_KEY"]  # the guard counts it
