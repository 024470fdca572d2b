"""The reference dual-key Worker (examples/worker) in the real Workers runtime: wrangler dev
(workerd) on a local D1 opens every sampled token before, during (rows mixed old and new)
and after `keyrotate rotate MASTER_KEY --env staging`; secret pushes go to the stand-in."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess

import pytest

from keyrotate.crypto.envelope import seal
from keyrotate.crypto.keys import MasterKey
from keyrotate.dataplane.codec_refs import codec_from_refs
from keyrotate.dataplane.objects.wire import Endpoint
from keyrotate.dataplane.reencrypt import ReencryptOptions, reencrypt
from keyrotate.db.connect import open_database
from keyrotate.db.table_shape import resolve_target
from keyrotate.demo.build import REFERENCE_SCHEMA, account_id, token_payload
from keyrotate.errors import EndpointError, Interrupted
from keyrotate.secrets.dotenv import DotenvStore
from tests.support.cf_api import CloudflareStandIn
from tests.support.helpers import OLD_SECRET, ROOT, StopAfter, run_cli
from tests.support.services import free_port
from tests.support.workerd import WRANGLER, DevWorker, dev_vars

TOKEN = "route-token-for-the-dev-worker-0123456789"
ROWS = 400


def _all_open(worker: DevWorker, payloads: dict[str, bytes]) -> dict[str, int]:
    used: dict[str, int] = {}
    for key, payload in payloads.items():
        got = worker.get(f"/tokens/{key}")
        assert got.get("ok"), f"{key}: {got}"
        assert json.dumps(got["payload"], separators=(",", ":")).encode() == payload
        used[got["key"]] = used.get(got["key"], 0) + 1
        used[f"attempts={got['attempts']}"] = used.get(f"attempts={got['attempts']}", 0) + 1
    return used


@pytest.mark.slow
def test_worker_opens_every_token_before_during_and_after(tmp_path, monkeypatch):
    if not WRANGLER.exists():
        pytest.fail("wrangler is not installed: run `npm ci` (setup-dev.sh)")
    cf = CloudflareStandIn()
    monkeypatch.setenv("CLOUDFLARE_API_BASE_URL", cf.base_url)
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", "test-token")
    monkeypatch.setenv("CLOUDFLARE_ACCOUNT_ID", "acct")
    monkeypatch.setenv("WRANGLER_SEND_METRICS", "false")
    api = tmp_path / "workers" / "api"
    shutil.copytree(ROOT / "examples" / "worker", api)
    (api / "wrangler.toml").write_text((api / "wrangler.toml").read_text() +
                                       '\n[env.staging]\nname = "tminus-api-staging"\n')
    # the local D1 the dev Worker uses: a plain SQLite file keyrotate works on directly
    schema = REFERENCE_SCHEMA.split("CREATE TABLE org_delegations")[0].strip()
    subprocess.run([str(WRANGLER), "d1", "execute", "DB", "--local", "--command", schema], cwd=api,
                   check=True, capture_output=True, timeout=120)
    db = next(p for p in (api / ".wrangler").rglob("*.sqlite") if p.name != "metadata.sqlite")
    key = MasterKey.from_secret(OLD_SECRET)
    payloads = {account_id(i): token_payload(i) for i in range(ROWS)}
    conn = sqlite3.connect(db)
    conn.executemany("INSERT INTO accounts (account_id, user_id, encrypted_tokens, created_at, "
                     "updated_at) VALUES (?, 'u', ?, 'now', 'now')",
                     [(k, seal(p, key, with_kid=False)) for k, p in payloads.items()])
    conn.commit()
    conn.close()

    port = free_port()
    store = DotenvStore(str(tmp_path / ".env.staging"))
    store.write_pending("MASTER_KEY", OLD_SECRET)
    store.promote("MASTER_KEY")
    (tmp_path / "keyrotate.toml").write_text(f'''
[project]
name = "tminus"
deploy_order = ["api"]
wrangler = ["{WRANGLER}"]
[environments.staging]
database = "file:{db}"
secrets = "dotenv:.env.staging"
health = {{ api = "http://127.0.0.1:{port}/health" }}
[secrets.MASTER_KEY]
kind = "master-key"
workers = ["api"]
previous = "MASTER_KEY_PREVIOUS"
[[encrypted]]
secret = "MASTER_KEY"
table = "accounts"
column = "encrypted_tokens"
''')
    monkeypatch.chdir(tmp_path)

    dev_vars(api, MASTER_KEY=OLD_SECRET)
    worker = DevWorker(api, port)
    try:
        assert _all_open(worker, payloads) == {"MASTER_KEY": ROWS, "attempts=1": ROWS}  # before
    finally:
        worker.stop()

    # the Worker is down: the rotation stages, pushes (to the stand-in) and stops at validate
    paused = run_cli("rotate", "MASTER_KEY", "--env", "staging")
    assert paused.exit_code == 3 and "health check failed" in paused.output
    new = store.read("MASTER_KEY", "pending")
    assert cf.script("tminus-api-staging").active.secrets == {"MASTER_KEY": new,
                                                              "MASTER_KEY_PREVIOUS": OLD_SECRET}
    # what the push gave Cloudflare, the dev Worker gets in .dev.vars
    dev_vars(api, MASTER_KEY=new, MASTER_KEY_PREVIOUS=OLD_SECRET, KEYROTATE_OBJECTS_TOKEN=TOKEN)
    worker = DevWorker(api, port)
    try:
        # keyrotate's route answers the kids of the keys the Worker holds, computed by the
        # Workers' own WebCrypto code: the same kids keyrotate computes (and a wrong token
        # is refused)
        route = Endpoint(f"{worker.url}/internal/keyrotate", TOKEN)
        try:
            ping = route.ping(("tminus-api-staging", "any"))
        finally:
            route.close()
        assert (ping.kid, ping.previous_kid) == (MasterKey.from_secret(new).kid,
                                                 MasterKey.from_secret(OLD_SECRET).kid)
        wrong = Endpoint(f"{worker.url}/internal/keyrotate", "not-the-token")
        with pytest.raises(EndpointError, match="refused the token"):
            wrong.ping()
        wrong.close()
        # half the rows move to the new key, then the run is interrupted: rows are mixed
        codec = codec_from_refs("tminus-envelope", store.ref("MASTER_KEY", "pending"),
                                store.ref("MASTER_KEY"))
        rows = open_database(f"file:{db}")
        with pytest.raises(Interrupted):
            reencrypt(rows, resolve_target(rows, "accounts.encrypted_tokens", None), codec,
                      ReencryptOptions(batch_size=50, workers=0), StopAfter(4))
        rows.close()
        during = _all_open(worker, payloads)
        # moved rows carry the new kid: opened by MASTER_KEY at once; the rest (no kid, as
        # the Workers wrote them) need the fallback to MASTER_KEY_PREVIOUS
        assert during == {"MASTER_KEY": 200, "MASTER_KEY_PREVIOUS": 200,
                          "attempts=1": 200, "attempts=2": 200}, during
        # a row whose kid names the previous key is opened by it on the first try: the
        # Worker chooses by kid rather than trying the current key first
        conn = sqlite3.connect(db)
        conn.execute("UPDATE accounts SET encrypted_tokens = ? WHERE account_id = ?",
                     (seal(payloads[account_id(399)], MasterKey.from_secret(OLD_SECRET)),
                      account_id(399)))
        conn.commit()
        conn.close()
        by_kid = worker.get(f"/tokens/{account_id(399)}")
        assert (by_kid["key"], by_kid["attempts"]) == ("MASTER_KEY_PREVIOUS", 1), by_kid

        resumed = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--json")
        assert resumed.exit_code == 0, resumed.output
        assert _all_open(worker, payloads) == {"MASTER_KEY": ROWS, "attempts=1": ROWS}
    finally:
        worker.stop()

    assert run_cli("rotate", "MASTER_KEY", "--env", "staging", "--finish").exit_code == 0
    assert store.read("MASTER_KEY") == new
    dev_vars(api, MASTER_KEY=new)  # after: the previous key is gone from the Workers
    worker = DevWorker(api, port)
    try:
        assert _all_open(worker, payloads) == {"MASTER_KEY": ROWS, "attempts=1": ROWS}
    finally:
        worker.stop()
        cf.stop()


