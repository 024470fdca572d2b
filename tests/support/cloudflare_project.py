"""The control-plane test project: three Workers with real wrangler configs, a reference
database, a .env store, a Cloudflare API stand-in and local health endpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from keyrotate.demo.build import build_reference_db, token_payload
from keyrotate.secrets.dotenv import DotenvStore
from tests.support.cf_api import CloudflareStandIn
from tests.support.health_server import HealthServer
from tests.support.helpers import OLD_SECRET, ROOT

WRANGLER = ROOT / "node_modules" / ".bin" / "wrangler"
WORKERS = ["api", "oauth", "webhook"]
JWT = "jwt-secret-value-for-tests-0123456789"
GOOGLE = "google-client-secret-for-tests"


@pytest.fixture
def project(tmp_path, monkeypatch):
    if not WRANGLER.exists():
        pytest.fail("wrangler is not installed: run `npm ci` (setup-dev.sh)")
    cf, health, store, env = build_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    yield tmp_path, cf, health, store
    cf.stop()
    health.stop()


def build_project(root: Path, rows: int = 50, payload: Callable[[int], bytes] = token_payload
                  ) -> tuple[CloudflareStandIn, HealthServer, DotenvStore, dict[str, str]]:
    """The project in `root` (also used by scripts/bench_d1.py): the services, and the
    environment a command there needs (run it from `root`). Stop cf and health after."""
    cf, health = CloudflareStandIn(), HealthServer()
    for w in WORKERS:
        d = root / "workers" / w
        d.mkdir(parents=True)
        (d / "index.js").write_text("export default { fetch() { return new Response('ok') } }\n")
        (d / "wrangler.toml").write_text(f'name = "tminus-{w}"\nmain = "index.js"\n'
                                         f'compatibility_date = "2024-12-01"\n'
                                         f'[env.staging]\nname = "tminus-{w}-staging"\n')
    build_reference_db(str(root / "staging.db"), rows, OLD_SECRET, payload=payload)
    cf.d1["staging"] = str(root / "staging.db")  # the same file, as d1://acct/staging
    store = DotenvStore(str(root / ".env.staging"))
    for name, value in (("MASTER_KEY", OLD_SECRET), ("JWT_SECRET", JWT), ("GOOGLE_CLIENT_SECRET", GOOGLE)):
        store.write_pending(name, value)
        store.promote(name)
    (root / "keyrotate.toml").write_text(f'''
[project]
name = "tminus"
worker_name = "tminus-{{worker}}-{{env}}"
deploy_order = ["api", "oauth", "webhook"]
wrangler = ["{WRANGLER}"]

[environments.staging]
database = "file:staging.db"
secrets = "dotenv:.env.staging"
health = {{ api = "{health.url('api')}", oauth = "{health.url('oauth')}" }}

[secrets.MASTER_KEY]
kind = "master-key"
workers = ["api", "oauth"]

[secrets.JWT_SECRET]
kind = "jwt-hs256"
workers = ["api", "oauth"]

[secrets.GOOGLE_CLIENT_SECRET]
kind = "external"
workers = ["oauth", "webhook"]

[[encrypted]]
secret = "MASTER_KEY"
table = "accounts"
column = "encrypted_tokens"
''')
    env = {"CLOUDFLARE_API_BASE_URL": cf.base_url, "CLOUDFLARE_API_TOKEN": "test-token",
           "CLOUDFLARE_ACCOUNT_ID": "acct", "WRANGLER_SEND_METRICS": "false",
           "WRANGLER_LOG_PATH": str(root / "wrangler-logs"), "CI": "true"}
    return cf, health, store, env


def _active(cf, worker):
    return cf.script(f"tminus-{worker}-staging").active.secrets


def edit_manifest(root, old, new):
    path = root / "keyrotate.toml"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def with_overlap(root, secret="MASTER_KEY", kind="master-key", extra=""):
    """The secret gets a `previous` name: an overlap rotation, zero downtime."""
    edit_manifest(root, f'[secrets.{secret}]\nkind = "{kind}"',
                  f'[secrets.{secret}]\nkind = "{kind}"\nprevious = "{secret}_PREVIOUS"{extra}')
