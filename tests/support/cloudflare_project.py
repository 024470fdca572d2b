"""The control-plane test project: three Workers with real wrangler configs, a reference
database, a .env store, a Cloudflare API stand-in and local health endpoints.

Which wrangler the project's manifest runs:
- by default the fake (tests/support/fake_wrangler.py, under this Python): the same
  command lines, the same Cloudflare API requests and the output keyrotate reads, in a
  fraction of real wrangler's start-up time (seconds per command on a small machine).
  tests/cloudflare/test_wrangler_contract.py proves it against the real wrangler, command by command;
  it runs inside the test process (tests/support/inprocess_wrangler.py) unless the test is
  marked `@pytest.mark.subprocess_wrangler` (where the child process is the point);
  a test that fails only with the fake means the fake is wrong: fix it there, and add the
  fact to the contract.
- the real wrangler 4.86 (node_modules/.bin/wrangler) for a test marked
  `@pytest.mark.real_wrangler`: where wrangler's own behaviour is the point (the hazards
  of plain `wrangler versions secret put` and `rollback`, its debug logs staying free of
  secrets, its node process tree dying with keyrotate). `wrangler dev` (workerd) and
  `wrangler d1 ... --local` tests run the real one directly, outside this fixture.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import pytest

from keyrotate.demo.build import build_reference_db, token_payload
from keyrotate.secrets.dotenv import DotenvStore
from tests.support.cf_api import CloudflareStandIn
from tests.support.health_server import HealthServer
from tests.support.helpers import OLD_SECRET, ROOT
from tests.support.inprocess_wrangler import FAKE_WRANGLER, run_fake_in_process

WRANGLER = ROOT / "node_modules" / ".bin" / "wrangler"
WORKERS = ["api", "oauth", "webhook"]
JWT = "jwt-secret-value-for-tests-0123456789"
GOOGLE = "google-client-secret-for-tests"


def write_worker(folder: Path, worker: str) -> Path:
    """One Worker's folder as `wrangler deploy --env staging` reads it."""
    folder.mkdir(parents=True)
    (folder / "index.js").write_text("export default { fetch() { return new Response('ok') } }\n")
    (folder / "wrangler.toml").write_text(f'name = "tminus-{worker}"\nmain = "index.js"\n'
                                          f'compatibility_date = "2024-12-01"\n'
                                          f'[env.staging]\nname = "tminus-{worker}-staging"\n')
    return folder


def api_env(cf: CloudflareStandIn, logs: Path) -> dict[str, str]:
    """What wrangler (real or fake) needs to talk to the stand-in, non-interactively."""
    return {"CLOUDFLARE_API_BASE_URL": cf.base_url, "CLOUDFLARE_API_TOKEN": "test-token",
            "CLOUDFLARE_ACCOUNT_ID": "acct", "WRANGLER_SEND_METRICS": "false",
            "WRANGLER_LOG_PATH": str(logs), "CI": "true"}


MANIFEST = """
[project]
name = "tminus"
worker_name = "tminus-{{worker}}-{{env}}"
deploy_order = ["api", "oauth", "webhook"]
wrangler = {wrangler}

[environments.staging]
database = "file:staging.db"
secrets = "dotenv:.env.staging"
health = {{ api = "{api_health}", oauth = "{oauth_health}" }}

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
"""


class Project:
    """The test project in a folder: the stand-in and health servers running, the Workers'
    folders, the database, the store and the manifest. `create()` makes one outside pytest's
    fixtures (for Hypothesis state machines: one per example), in a temporary folder made
    current, with the environment wrangler needs; `close()` undoes all of it."""

    defaults: dict[str, Any] = {"routes": True}

    def __init__(self, root: Path, wrangler: list[str], rows: int = 50,
                 payload: Callable[[int], bytes] = token_payload):
        self.wrangler = wrangler
        self.root = root
        self.cf, self.health = CloudflareStandIn(), HealthServer()
        self.routes = bool(self.defaults.get("routes", True))
        for w in WORKERS:
            write_worker(root / "workers" / w, w)
        build_reference_db(str(root / "staging.db"), rows, OLD_SECRET, payload=payload)
        self.cf.d1["staging"] = str(root / "staging.db")  # the same file, as d1://acct/staging
        self.store = DotenvStore(str(root / ".env.staging"))
        for name, value in (("MASTER_KEY", OLD_SECRET), ("JWT_SECRET", JWT),
                            ("GOOGLE_CLIENT_SECRET", GOOGLE)):
            self.store.write_pending(name, value)
            self.store.promote(name)
        (root / "keyrotate.toml").write_text(MANIFEST.format(
            wrangler=json.dumps(wrangler), api_health=self.health.url("api"),
            oauth_health=self.health.url("oauth")))
        self.env = api_env(self.cf, root / "wrangler-logs")
        self._undo: list[Any] = []

    @classmethod
    def create(cls, wrangler: list[str] | None = None) -> "Project":
        tmp = tempfile.TemporaryDirectory(prefix="keyrotate-project-")
        p = cls(Path(tmp.name), wrangler or FAKE_WRANGLER)
        saved_env = {k: os.environ.get(k) for k in p.env}
        cwd = os.getcwd()
        os.environ.update(p.env)
        os.chdir(p.root)
        p._undo = [tmp, saved_env, cwd, run_fake_in_process(p.wrangler)]
        return p

    def close(self) -> None:
        self.cf.stop()
        self.health.stop()
        if self._undo:
            tmp, saved_env, cwd, in_process = self._undo
            in_process()
            os.chdir(cwd)
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            tmp.cleanup()


def build_project(root: Path, rows: int = 50, payload: Callable[[int], bytes] = token_payload,
                  real_wrangler: bool = False) -> tuple[CloudflareStandIn, HealthServer, DotenvStore]:
    """The project in `root` (scripts/bench_d1.py builds it too): run commands from `root`
    with api_env's variables; stop the stand-in and the health server after."""
    p = Project(root, [str(WRANGLER)] if real_wrangler else FAKE_WRANGLER, rows, payload)
    return p.cf, p.health, p.store


@pytest.fixture
def project(tmp_path, monkeypatch, request):
    real = request.node.get_closest_marker("real_wrangler") is not None
    if real and not WRANGLER.exists():
        pytest.fail("wrangler is not installed: run `npm ci` (setup-dev.sh)")
    p = Project(tmp_path, [str(WRANGLER)] if real else FAKE_WRANGLER)
    if not real and request.node.get_closest_marker("subprocess_wrangler") is None:
        request.addfinalizer(run_fake_in_process(FAKE_WRANGLER))
    monkeypatch.chdir(tmp_path)
    for k, v in p.env.items():
        monkeypatch.setenv(k, v)
    yield tmp_path, p.cf, p.health, p.store
    p.close()


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


ROUTE_TOKEN = "route-token-for-tests-0123456789abcdef"


def with_key_routes(root, cf, store, workers=("api", "oauth")):
    """The Workers holding MASTER_KEY expose keyrotate's route (ping), answered by the
    stand-in for whichever version serves the request; its bearer token is a secret of kind
    internal, pushed to them like any other."""
    routes = ", ".join(f'{w} = "{cf.key_route_url(f"tminus-{w}-staging")}"' for w in workers)
    text = (root / "keyrotate.toml").read_text()
    text = text.replace("\n[environments.staging]\n", "\n[environments.staging]\n"
                        f"key_routes = {{ {routes} }}\n", 1)
    text = text.replace("[project]\n", '[project]\nroute_token = "KEYROTATE_OBJECTS_TOKEN"\n', 1)
    text += ('\n[secrets.KEYROTATE_OBJECTS_TOKEN]\nkind = "internal"\n'
             f'workers = [{", ".join(repr(w).replace(chr(39), chr(34)) for w in workers)}]\n')
    (root / "keyrotate.toml").write_text(text)
    store.write_pending("KEYROTATE_OBJECTS_TOKEN", ROUTE_TOKEN)
    store.promote("KEYROTATE_OBJECTS_TOKEN")


def rotate_by_hand(root, store, new):
    """What an operator can do without `rotate`: the new MASTER_KEY stored and every row
    moved to it (so that pushing it alone keeps every row readable)."""
    from tests.support.helpers import run_cli

    store.write_pending("MASTER_KEY", new)
    moved = run_cli("reencrypt", "--db", f"file:{root / 'staging.db'}", "--target",
                    "accounts.encrypted_tokens", "--old-key", store.ref("MASTER_KEY"),
                    "--new-key", store.ref("MASTER_KEY", "pending"), "--json")
    assert moved.exit_code == 0, moved.output
    store.promote("MASTER_KEY")
