"""The canary for new secrets, against the versioned stand-in (tests/support/cf_workers.py):
a new version at 0% beside the serving one, smoke-tested through the version override, then
ramped 10 -> 50 -> 100%; a failing canary never takes a share of traffic."""

from __future__ import annotations

import pytest

from tests.support.cloudflare_project import edit_manifest, with_overlap
from tests.support.helpers import OLD_SECRET, last_json, run_cli

pytestmark = pytest.mark.slow


def _canary_project(root, cf, health):
    for w in ("api", "oauth"):
        edit_manifest(root, f'{w} = "{health.url(w)}"', f'{w} = "{cf.health_url(f"tminus-{w}-staging")}"')
    with_overlap(root)


def test_a_canary_ramps_new_secrets_and_keeps_the_previous_version_until_accepted(project):
    root, cf, health, store = project
    _canary_project(root, cf, health)
    assert run_cli("secrets", "push", "--env", "staging").exit_code == 0
    res = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--canary", "--json")
    assert res.exit_code == 0, res.output
    new = store.read("MASTER_KEY", "pending")
    for w in ("api", "oauth"):
        s = cf.script(f"tminus-{w}-staging")
        shares = [[(v["percentage"]) for v in d["versions"]] for d in reversed(s.deployments[:5])]
        assert shares == [[100.0, 0.0], [10.0, 90.0], [50.0, 50.0], [100.0, 0.0], [100.0]]
        assert cf.deployed(f"tminus-{w}-staging")[0][0]["MASTER_KEY"] == new
        assert cf.deployed(f"tminus-{w}-staging")[0][0]["MASTER_KEY_PREVIOUS"] == OLD_SECRET


def test_a_failing_canary_never_serves_and_the_previous_version_is_back(project):
    root, cf, health, store = project
    _canary_project(root, cf, health)
    # the API Worker's org-delegation routes accept only a 64-hex MASTER_KEY: a version
    # whose key is base64 is unhealthy (and the manifest here forgot format = "hex:32")
    cf.workers.health_rule = lambda v: len(v.secrets.get("MASTER_KEY", "0" * 64)) == 64 or \
        v.secrets.get("MASTER_KEY") == OLD_SECRET
    assert run_cli("secrets", "push", "--env", "staging").exit_code == 0
    res = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--canary", "--json")
    assert res.exit_code == 3, res.output
    assert "smoke test" in last_json(res.output)["error"]["message"]
    new = store.read("MASTER_KEY", "pending")
    # every Worker was introduced (old key, new as previous: it still seals under the old
    # one), then api's switch canary failed: api serves the introduced version at 100%
    introduced = {"MASTER_KEY": OLD_SECRET, "MASTER_KEY_PREVIOUS": new}

    def serving(w):
        return [({k: v for k, v in s.items() if k.startswith("MASTER_KEY")}, p)
                for s, p in cf.deployed(f"tminus-{w}-staging")]

    api = cf.script("tminus-api-staging")
    assert serving("api") == [(introduced, 100.0)]
    bad = api.latest
    assert bad.id != api.active.id and len(bad.secrets["MASTER_KEY"]) != 64
    assert all(v["version_id"] != bad.id or v["percentage"] == 0
               for d in api.deployments for v in d["versions"])   # never a share of traffic
    assert serving("oauth") == [(introduced, 100.0)]  # its switch never began
