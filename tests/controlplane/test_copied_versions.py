"""Versions keyrotate makes by copying a chosen version (`secrets push --from-deployed`, the
canary, `rollback --force`) keep every setting the source version has, as wrangler's
copyWorkerVersionWithNewSecrets does: compatibility date and flags, limits, placement,
cache options, its tag, its assets, and the script's logpush, tail consumers and
observability (issue 19, item 8). The stand-in (tests/support/cf_workers.py) models them."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.support.cloudflare_project import edit_manifest
from tests.support.helpers import NEW_SECRET, last_json, run_cli

pytestmark = pytest.mark.slow

API = "tminus-api-staging"
# a deployed version's own settings, as an upload carries them (create-worker-upload-form.ts)
UPLOAD_SETTINGS = {"compatibility_date": "2025-03-10", "compatibility_flags": ["nodejs_compat"],
                   "limits": {"cpu_ms": 50}, "placement": {"mode": "smart"},
                   "cache_options": {"enabled": True}, "assets": {"jwt": "asset-set-release-1"},
                   "annotations": {"workers/message": "release 1", "workers/tag": "v1.4.2"}}
KEPT = {"compatibility_date": "2025-03-10", "compatibility_flags": ["nodejs_compat"],
        "limits": {"cpu_ms": 50}, "usage_model": "standard", "placement_mode": "smart",
        "cache_options": {"enabled": True}, "assets": "asset-set-release-1"}
SCRIPT_SETTINGS = {"logpush": True, "tail_consumers": [{"service": "tminus-tail"}],
                   "observability": {"enabled": True, "head_sampling_rate": 0.25}}


def _api(cf, method, worker, rest, **kw):
    res = httpx.request(method, f"{cf.base_url}/accounts/acct/workers/scripts/{worker}/{rest}",
                        headers={"authorization": "Bearer test-token"}, timeout=30, **kw)
    assert res.status_code == 200, res.text
    return res.json()["result"]


def _upload(cf, worker, metadata):
    """A new version of `worker` with the latest version's code and bindings."""
    latest = cf.script(worker).latest
    meta = {"main_module": latest.main_module,
            "bindings": [{"name": n, "type": "inherit"} for n in sorted(latest.bindings)], **metadata}
    files = [("metadata", ("metadata.json", json.dumps(meta).encode(), "application/json"))]
    files += [(name, (name, content, ct)) for name, (ct, content) in latest.modules.items()]
    return _api(cf, "POST", worker, "versions", files=files)["id"]


def _release_with_every_setting(cf, worker=API):
    """Release 1, uploaded with every per-version setting and deployed at 100%; the
    script's logpush, tail consumers and observability set. Returns its version id."""
    version = _upload(cf, worker, UPLOAD_SETTINGS)
    _api(cf, "POST", worker, "deployments",
         json={"strategy": "percentage", "versions": [{"version_id": version, "percentage": 100}]})
    _api(cf, "PATCH", worker, "script-settings", json=SCRIPT_SETTINGS)
    return version


def _assert_settings_survived(cf, source, copy, worker=API):
    s = cf.script(worker)
    made, served = s.version(copy), s.traffic
    assert made is not None and made.id != source and [(v.id, p) for v, p in served] == [(copy, 100.0)]
    assert made.settings == KEPT == s.version(source).settings
    assert made.tag == "v1.4.2" and made.modules == s.version(source).modules
    assert {k: s.settings[k] for k in SCRIPT_SETTINGS} == SCRIPT_SETTINGS
    view = _api(cf, "GET", worker, f"versions/{copy}")       # as Cloudflare shows it, too
    assert view["resources"]["script_runtime"]["limits"] == {"cpu_ms": 50}
    assert view["resources"]["script"]["placement_mode"] == "smart"


def test_secrets_push_from_deployed_keeps_the_deployed_versions_settings(project):
    root, cf, _, store = project
    assert run_cli("secrets", "push", "--env", "staging").exit_code == 0
    release_1 = _release_with_every_setting(cf)
    # release 2 uploaded with none of them, not deployed: the latest is not the deployed one
    _upload(cf, API, {"annotations": {"workers/message": "release 2"}, "keep_assets": True})
    store.write_pending("JWT_SECRET", "a-new-jwt-secret-value-of-enough-length-0001")
    store.promote("JWT_SECRET")
    res = run_cli("secrets", "push", "--env", "staging", "--only", "JWT_SECRET", "--from-deployed")
    assert res.exit_code == 0, res.output
    api = cf.script(API)
    assert api.active.secrets["JWT_SECRET"].startswith("a-new-jwt")
    _assert_settings_survived(cf, release_1, api.active.id)


def test_the_canary_version_keeps_the_serving_versions_settings(project):
    root, cf, health, store = project
    for w in ("api", "oauth"):
        edit_manifest(root, f'{w} = "{health.url(w)}"', f'{w} = "{cf.health_url(f"tminus-{w}-staging")}"')
    assert run_cli("secrets", "push", "--env", "staging").exit_code == 0
    release_1 = _release_with_every_setting(cf)
    res = run_cli("rotate", "JWT_SECRET", "--env", "staging", "--canary", "--yes", "--json")
    assert res.exit_code == 0, res.output
    api = cf.script(API)
    assert api.active.secrets["JWT_SECRET"] == store.read("JWT_SECRET")
    assert any(v["version_id"] == api.active.id and v["percentage"] == 0.0   # the 0% canary
               for d in api.deployments for v in d["versions"])
    _assert_settings_survived(cf, release_1, api.active.id)


def test_rollback_force_keeps_the_target_versions_settings(project):
    root, cf, _, store = project
    assert run_cli("secrets", "push", "--env", "staging").exit_code == 0
    release_1 = _release_with_every_setting(cf)
    store.write_pending("JWT_SECRET", NEW_SECRET)
    store.promote("JWT_SECRET")
    assert run_cli("secrets", "push", "--env", "staging", "--only", "JWT_SECRET").exit_code == 0
    res = run_cli("rollback", "--env", "staging", "--only", "api", "--yes", "--force", "--json")
    assert res.exit_code == 0, res.output
    assert last_json(res.output)["plan"][0]["target"] == release_1
    api = cf.script(API)
    assert api.active.secrets["JWT_SECRET"] == NEW_SECRET   # the secrets serving now
    _assert_settings_survived(cf, release_1, api.active.id)
