"""Manifest, secrets push/list, validate, deploy and rollback: wrangler (the fake, held to
the real 4.86 by tests/test_wrangler_contract.py) against the Cloudflare API stand-in,
health endpoints served locally."""

from __future__ import annotations

import pytest

from tests.support.cloudflare_project import GOOGLE, JWT, WORKERS, _active, rotate_by_hand
from tests.support.helpers import NEW_SECRET, OLD_SECRET, last_json, run_cli
from tests.support.hygiene import CmdlineSampler, assert_clean


def test_init_writes_a_manifest_that_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli("init").exit_code == 0
    from keyrotate.config.load import load_manifest

    m = load_manifest(tmp_path / "keyrotate.toml")
    assert m.deploy_order[0] == "api" and m.deployed_name("oauth", "production") == "tminus-oauth-production"
    assert [t.name for t in m.targets_of("MASTER_KEY")] == [
        "org_delegations.encrypted_sa_key", "org_delegations.previous_encrypted_sa_key",
        "impersonation_token_cache.encrypted_token", "AccountDO"]
    assert m.secret("MASTER_KEY").generate == "hex:32" and str(m.secret("MASTER_KEY").format) == "hex:32"
    assert m.objects_of("MASTER_KEY")[0].ids == "accounts.account_id"
    assert m.env("production").objects["AccountDO"].endswith("/internal/keyrotate/objects")
    again = run_cli("init")
    assert again.exit_code == 2 and "refusing to overwrite" in again.output


@pytest.mark.parametrize("edit,message", [
    (('workers = ["oauth", "webhook"]', 'workers = ["oauth", "nosuch"]'), "unknown worker 'nosuch'"),
    (('database = "file:staging.db"', 'database = "postgres://x"'), "database must be"),
    (('secrets = "dotenv:.env.staging"', 'secrets = "MASTER_KEY"'), "store base"),
    (('kind = "external"', 'kind = "magic"'), "kind 'magic'"),
])
def test_manifest_errors_are_clear(project, edit, message):
    path = project[0] / "keyrotate.toml"
    path.write_text(path.read_text().replace(*edit))
    res = run_cli("validate", "--env", "staging")
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output


def test_unknown_environment(project):
    res = run_cli("validate", "--env", "nosuch")
    assert res.exit_code == 2 and "no environment 'nosuch'" in res.output


@pytest.mark.real_wrangler  # wrangler's own debug logs must stay free of secrets
def test_secrets_push_list_and_hygiene(project):
    root, cf, _, store = project
    listed = run_cli("secrets", "list", "--env", "staging", "--json")
    assert listed.exit_code == 1 and last_json(listed.output)["missing"]

    plan = run_cli("secrets", "push", "--env", "staging", "--dry-run", "--json")
    assert plan.exit_code == 0
    assert all(_active(cf, w) == {} for w in WORKERS)  # nothing pushed
    steps = last_json(plan.output)["steps"]
    assert [s["worker"] for s in steps] == WORKERS
    assert set(steps[0]["secrets"]) == {"MASTER_KEY", "JWT_SECRET"}

    with CmdlineSampler() as sampler:
        pushed = run_cli("secrets", "push", "--env", "staging", "--json")
    assert pushed.exit_code == 0, pushed.output
    assert _active(cf, "api") == {"MASTER_KEY": OLD_SECRET, "JWT_SECRET": JWT}
    assert _active(cf, "oauth") == {"MASTER_KEY": OLD_SECRET, "JWT_SECRET": JWT, "GOOGLE_CLIENT_SECRET": GOOGLE}
    assert _active(cf, "webhook") == {"GOOGLE_CLIENT_SECRET": GOOGLE}
    # one Worker at a time, in deploy order
    touched = [p.split("/scripts/")[1].split("/")[0] for m, p, _ in cf.log
               if m in ("PUT", "PATCH") and p.endswith(("/secrets", "/settings"))]
    assert touched == [f"tminus-{w}-staging" for w in WORKERS]

    secrets = [OLD_SECRET, JWT, GOOGLE]
    assert any(b"wrangler" in c for c in sampler.seen)
    for cmdline in sampler.seen:
        assert_clean(cmdline, "a command line", secrets)
    assert_clean(plan.output.encode() + pushed.output.encode(), "keyrotate output", secrets)
    for log in (root / "wrangler-logs").rglob("*"):
        if log.is_file():
            assert_clean(log.read_bytes(), f"wrangler log {log.name}", secrets)

    listed = run_cli("secrets", "list", "--env", "staging", "--json")
    assert listed.exit_code == 0 and not last_json(listed.output)["drift"]


def test_validate_health_contract(project):
    _, _, health, _ = project
    assert run_cli("validate", "--env", "staging").exit_code == 0
    health.answers["oauth"] = (200, {"ok": True, "data": {"status": "degraded"}})
    assert run_cli("validate", "--env", "staging").exit_code == 0
    for answer in [(200, {"ok": False, "data": {"status": "healthy"}}), (200, "not json"),
                   (503, {"ok": True, "data": {"status": "healthy"}}), (200, {"ok": True, "data": {"status": "down"}})]:
        health.answers["oauth"] = answer
        res = run_cli("validate", "--env", "staging", "--json")
        assert res.exit_code == 1, answer
        assert [w["ok"] for w in last_json(res.output)["workers"]] == [True, False]


def test_deploy_in_order_and_roll_back_on_failed_health(project):
    _, cf, health, _ = project
    plan = run_cli("deploy", "--env", "staging", "--dry-run", "--json")
    assert [s["worker"] for s in last_json(plan.output)["steps"]] == WORKERS
    assert not any(m == "POST" and "/versions" in p for m, p, _ in cf.log)

    res = run_cli("deploy", "--env", "staging", "--json")
    assert res.exit_code == 0, res.output
    uploads = [p.split("/scripts/")[1].split("/")[0] for m, p, _ in cf.log if m == "POST" and "/versions" in p]
    assert uploads == [f"tminus-{w}-staging" for w in WORKERS]
    before = {w: cf.script(f"tminus-{w}-staging").active.id for w in WORKERS}

    health.answers["oauth"] = (500, {"ok": False})
    res = run_cli("deploy", "--env", "staging", "--json")
    out = last_json(res.output)
    assert res.exit_code == 1 and out["failed_at"] == "oauth" and out["rolled_back"] == ["oauth", "api"]
    assert {w: cf.script(f"tminus-{w}-staging").active.id for w in ["api", "oauth"]} == \
        {w: before[w] for w in ["api", "oauth"]}


def test_rollback_refuses_to_cross_a_master_key_rotation(project):
    root, cf, _, store = project
    assert run_cli("deploy", "--env", "staging").exit_code == 0
    assert run_cli("secrets", "push", "--env", "staging").exit_code == 0
    # a MASTER_KEY rotation: new key pushed (the data would now be under it)
    rotate_by_hand(root, store, NEW_SECRET)
    assert run_cli("secrets", "push", "--env", "staging", "--only", "MASTER_KEY").exit_code == 0
    active_before = {w: cf.script(f"tminus-{w}-staging").active.id for w in WORKERS}

    refused = run_cli("rollback", "--env", "staging", "--only", "api", "--yes")
    assert refused.exit_code == 2 and "refusing to roll back across a secret rotation" in refused.output
    assert {w: cf.script(f"tminus-{w}-staging").active.id for w in WORKERS} == active_before

    forced = run_cli("rollback", "--env", "staging", "--only", "api", "--yes", "--force", "--json")
    assert forced.exit_code == 0, forced.output
    assert _active(cf, "api")["MASTER_KEY"] == NEW_SECRET  # the current key was re-pushed


def test_rollback_of_a_code_deploy_needs_yes_and_goes_in_reverse(project):
    _, cf, _, _ = project
    assert run_cli("secrets", "push", "--env", "staging").exit_code == 0
    assert run_cli("deploy", "--env", "staging").exit_code == 0
    assert run_cli("deploy", "--env", "staging").exit_code == 0
    current = {w: cf.script(f"tminus-{w}-staging").active.id for w in WORKERS}
    plan = run_cli("rollback", "--env", "staging", "--json")
    assert plan.exit_code == 2 and not last_json(plan.output)["done"]
    assert [s["worker"] for s in last_json(plan.output)["plan"]] == list(reversed(WORKERS))
    res = run_cli("rollback", "--env", "staging", "--yes", "--json")
    assert res.exit_code == 0, res.output
    after = {w: cf.script(f"tminus-{w}-staging").active.id for w in WORKERS}
    assert all(after[w] != current[w] for w in WORKERS)
    assert _active(cf, "oauth")["MASTER_KEY"] == OLD_SECRET


def test_cloudflare_error_codes_become_clear_messages():
    from keyrotate.cloudflare.wrangler import explain

    out = ("\x1b[31m✘ \x1b[41;31m[ERROR]\x1b[0m A request to the Cloudflare API failed.\n"
           "  Secrets have changed since this version was deployed [code: 10220]\n")
    assert "Cloudflare error 10220: secrets changed since that version" in explain(out)
    assert "latest version of the Worker is not deployed" in explain("oops [code: 10215]")
    assert "SQL error" in explain('{"errors":[{"code": 7500, "message": "no such table"}]}')


def test_secret_push_survives_a_transient_api_failure(project):
    _, cf, _, _ = project
    cf.worker_faults.extend(["500", "500"])
    res = run_cli("secrets", "push", "--env", "staging", "--only", "JWT_SECRET")
    assert res.exit_code == 0, res.output
    assert not cf.worker_faults
    assert _active(cf, "api")["JWT_SECRET"] == _active(cf, "oauth")["JWT_SECRET"] == JWT


def test_rollback_is_not_refused_after_re_pushing_the_same_values(project):
    _, cf, _, _ = project
    assert run_cli("secrets", "push", "--env", "staging").exit_code == 0
    assert run_cli("deploy", "--env", "staging", "--only", "api").exit_code == 0
    deployed = cf.script("tminus-api-staging").active.id
    assert run_cli("secrets", "push", "--env", "staging").exit_code == 0  # same values again
    res = run_cli("rollback", "--env", "staging", "--only", "api", "--yes", "--json")
    assert res.exit_code == 0, res.output  # nothing changed value: nothing to protect
    assert cf.script("tminus-api-staging").active.id == deployed


@pytest.mark.parametrize("edit,line_of,message", [
    (('[secrets.JWT_SECRET]\nkind = "jwt-hs256"', '[secrets.JWT_SECRET]\nkind = "jwt-hs256"\nmax_tokn_ttl = "2h"'),
     'max_tokn_ttl = "2h"', "unknown key 'max_tokn_ttl' in [secrets.JWT_SECRET]; did you mean 'max_token_ttl'?"),
    (('[[encrypted]]', '[notifyy]\nsinks = []\n\n[[encrypted]]'), "[notifyy]",
     "unknown key 'notifyy' in the top level"),
    (('secrets = "dotenv:.env.staging"', 'secrets = "dotenv:.env.staging"\nhealht = {}'),
     "healht = {}", "did you mean 'health'?"),
])
def test_unknown_keys_in_the_manifest_name_file_line_and_the_closest_key(project, edit, line_of, message):
    path = project[0] / "keyrotate.toml"
    path.write_text(path.read_text().replace(*edit, 1))
    line = path.read_text().splitlines().index(line_of) + 1
    res = run_cli("validate", "--env", "staging")
    assert res.exit_code == 2 and message in res.output and f"keyrotate.toml:{line}:" in res.output


def test_a_push_reads_the_store_once_it_holds_the_rotation_leases(project, monkeypatch):
    """Review: `secrets push` read the store's values, then waited for the rotation leases;
    a rotation that promoted meanwhile left it pushing the value it had read, the key the
    rows had just left. The values are read once the leases are held."""
    import contextlib

    from keyrotate.controlplane import worker_secrets

    root, cf, _, store = project
    assert run_cli("secrets", "push", "--env", "staging").exit_code == 0
    leases = worker_secrets.rotation_leases

    @contextlib.contextmanager
    def a_rotation_finishes_first(ctx, workers):
        rotate_by_hand(root, store, NEW_SECRET)   # the rows moved, the new key promoted
        with leases(ctx, workers):
            yield

    monkeypatch.setattr(worker_secrets, "rotation_leases", a_rotation_finishes_first)
    res = run_cli("secrets", "push", "--env", "staging", "--only", "MASTER_KEY", "--json")
    assert res.exit_code == 0, res.output
    assert _active(cf, "api")["MASTER_KEY"] == NEW_SECRET


def test_a_push_whose_confirmation_cannot_be_recorded_does_not_exit_0(project):
    """Hostile review: a push's confirmation rides with the trail's next append; a command
    whose last push had none left it to the end of the command, which only warned when the
    database refused it: exit 0 with the push confirmed nowhere. The record is now written
    before the result is told, and a refusal fails the command."""
    import sqlite3

    root = project[0]
    assert run_cli("status", "--env", "staging").exit_code == 0   # keyrotate's tables
    conn = sqlite3.connect(root / "staging.db")
    # the last push's confirmation (webhook comes after oauth): nothing follows it
    conn.execute("CREATE TRIGGER refuse_done BEFORE INSERT ON keyrotate_audit WHEN "
                 "json_extract(NEW.record, '$.detail.state') = 'done' AND "
                 "json_extract(NEW.record, '$.detail.worker') LIKE '%webhook%' "
                 "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    conn.commit()
    conn.close()
    res = run_cli("secrets", "push", "--env", "staging", "--only", "GOOGLE_CLIENT_SECRET", "--json")
    assert res.exit_code != 0, res.output
    assert "refused" in res.output
