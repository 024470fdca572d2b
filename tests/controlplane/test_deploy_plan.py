"""`deploy` checks every Worker folder and its wrangler configuration before anything runs
(the dry run too): a plan for folders that do not exist is no plan."""

from __future__ import annotations

import pytest

from tests.support.helpers import last_json, run_cli


@pytest.fixture
def app(tmp_path, monkeypatch):
    (tmp_path / "keyrotate.toml").write_text('''
[project]
name = "app"
worker_name = "app-{worker}-{env}"
deploy_order = ["api", "oauth", "cron"]
wrangler = ["/bin/false"]          # never reached: the check comes first

[environments.staging]
database = "file:staging.db"
secrets = "dotenv:.env.staging"
''')
    api = tmp_path / "workers" / "api"
    api.mkdir(parents=True)
    (api / "wrangler.jsonc").write_text('{"name": "app-api"}\n')
    (tmp_path / "workers" / "oauth").mkdir()          # a folder without wrangler config
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("dry_run", [True, False])
def test_deploy_names_every_missing_folder_and_config(app, dry_run):
    res = run_cli("deploy", "--env", "staging", *(["--dry-run"] if dry_run else []), "--json")
    assert res.exit_code == 2, res.output
    message = last_json(res.output)["error"]["message"]
    assert "oauth: no wrangler.toml / wrangler.jsonc / wrangler.json in" in message
    assert f"cron: no folder {app / 'workers' / 'cron'}" in message
    assert "api:" not in message and "workers_dir = 'workers'" in message


def test_the_dry_run_plans_when_every_worker_is_there(app):
    for w in ("oauth", "cron"):
        (app / "workers" / w).mkdir(exist_ok=True)
        (app / "workers" / w / "wrangler.toml").write_text(f'name = "app-{w}"\n')
    res = run_cli("deploy", "--env", "staging", "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    assert [s["name"] for s in last_json(res.output)["steps"]] == [
        "app-api-staging", "app-oauth-staging", "app-cron-staging"]
    only = run_cli("deploy", "--env", "staging", "--only", "oauth", "--dry-run")
    assert only.exit_code == 0 and "app-oauth-staging" in only.output
