"""A tminus-shaped application for the Durable Object tests: the test Worker (the
reference endpoint and AccountDO of examples/durable-objects, plus hooks) in the real
Workers runtime, its local D1 (accounts, org_delegations, key_rotation_log), a .env store,
a keyrotate.toml, and the Cloudflare API stand-in for secret pushes."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

from keyrotate.secrets.dotenv import DotenvStore
from tests.support.cf_api import CloudflareStandIn
from tests.support.helpers import ROOT
from tests.support.services import free_port
from tests.support.workerd import WRANGLER, DevWorker, dev_vars

OLD_HEX = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"
TOKEN = "5e1f0c2d3b4a59687766554433221100ffeeddccbbaa99887766554433221100"

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
  account_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, provider TEXT NOT NULL DEFAULT 'google',
  email TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'active',
  created_at TEXT NOT NULL DEFAULT (datetime('now')));
CREATE TABLE IF NOT EXISTS org_delegations (
  delegation_id TEXT PRIMARY KEY, domain TEXT NOT NULL UNIQUE, admin_email TEXT NOT NULL,
  encrypted_sa_key TEXT NOT NULL, previous_encrypted_sa_key TEXT,
  created_at TEXT NOT NULL DEFAULT (datetime('now')));
"""


class ObjectsWorker:
    """One `wrangler dev` of the test Worker, shared by the tests of a module. New secrets
    are a new version: wrangler dev restarts workerd with them, as a deploy replaces every
    isolate, in under a second where starting wrangler takes several. Durable Objects and
    D1 outlive the restart; tests keep apart by account ids of their own and a fresh D1
    schema each (`reset_d1`)."""

    def __init__(self, tmp: Path):
        shutil.copytree(ROOT / "examples", tmp / "examples")
        shutil.copytree(ROOT / "tests" / "workers" / "objects", tmp / "tests" / "workers" / "objects")
        self.root = tmp
        self.worker_dir = tmp / "tests" / "workers" / "objects"
        self.generation = 0
        self.apps = 0
        dev_vars(self.worker_dir, DEV_VARS_GENERATION="0")
        persist = tmp / "state"
        self.dev = DevWorker(self.worker_dir, free_port(), persist=persist)
        self.url = self.dev.url
        self.dev.get("/test/d1")  # the Worker's D1 binding makes its local SQLite file
        self.d1 = next(p for p in (persist / "v3" / "d1").rglob("*.sqlite") if p.name != "metadata.sqlite")

    def serve(self, **secrets: str) -> DevWorker:
        """The Worker with these secrets (what a deployed version holds) from the moment
        this returns. wrangler dev reloads its config, and .dev.vars with it, when
        wrangler.toml changes; once /test/generation answers the new generation, every
        answer comes from a workerd started with these secrets."""
        self.generation += 1
        dev_vars(self.worker_dir, **secrets, DEV_VARS_GENERATION=str(self.generation))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            os.utime(self.worker_dir / "wrangler.toml")  # touched again if a reload missed it
            look_until = min(deadline, time.monotonic() + 10)
            while time.monotonic() < look_until:
                if self.dev.proc.poll() is not None:
                    raise RuntimeError("wrangler dev exited: " + self.dev.log_tail())
                if self.dev.get("/test/generation").get("generation") == str(self.generation):
                    return self.dev
                time.sleep(0.05)
        raise RuntimeError("wrangler dev did not load the new .dev.vars: " + self.dev.log_tail())

    def reset_d1(self) -> None:
        """Every table of the D1 database dropped (the migrations ledger, keyrotate's own
        tables, whatever a test altered) and the application's schema made again."""
        conn = sqlite3.connect(self.d1)
        made = conn.execute("SELECT type, name FROM sqlite_master WHERE type IN ('table', 'view') "
                            "AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_cf_%'").fetchall()
        for kind, name in made:
            conn.execute(f'DROP {kind.upper()} IF EXISTS "{name}"')
        conn.executescript(SCHEMA)
        conn.commit()
        conn.close()

    def stop(self) -> None:
        self.dev.stop()


class ObjectsApp:
    """One test's application on the shared Worker: accounts of its own (ids no other test
    uses, so its Durable Objects are new), a fresh D1, its own store and manifest."""

    def __init__(self, worker: ObjectsWorker, tmp: Path, accounts: int):
        worker.apps += 1
        self.worker, self.tmp = worker, tmp
        self.d1, self.url = worker.d1, worker.url
        self.ids = [f"acc_t{worker.apps}_{i:05d}" for i in range(accounts)]
        self.cf = CloudflareStandIn()
        self.dev: DevWorker | None = None
        self.closed = False
        worker.reset_d1()
        conn = sqlite3.connect(self.d1)
        conn.executemany("INSERT INTO accounts (account_id, user_id, email) VALUES (?, ?, ?)",
                         [(i, f"usr_{i}", f"{i}@example.com") for i in self.ids])
        conn.commit()
        conn.close()
        self.store = DotenvStore(str(tmp / ".env.staging"))
        for name, value in (("MASTER_KEY", OLD_HEX), ("KEYROTATE_OBJECTS_TOKEN", TOKEN)):
            self.store.write_pending(name, value)
            self.store.promote(name)
        (tmp / "keyrotate.toml").write_text(f'''
[project]
name = "tminus"
deploy_order = ["api"]
wrangler = ["{WRANGLER}"]
migrations_dir = "{worker.root}/examples/durable-objects/migrations"

[environments.staging]
database = "file:{self.d1}"
secrets = "dotenv:.env.staging"
health = {{ api = "{self.url}/health" }}
objects = {{ AccountDO = "{self.url}/internal/keyrotate/objects" }}

[secrets.MASTER_KEY]
kind = "master-key"
workers = ["api"]
format = "hex:32"
previous = "MASTER_KEY_PREVIOUS"

[secrets.KEYROTATE_OBJECTS_TOKEN]
kind = "internal"
workers = ["api"]
format = "hex:32"

[[encrypted]]
secret = "MASTER_KEY"
table = "org_delegations"
column = "encrypted_sa_key"

[[encrypted]]
secret = "MASTER_KEY"
object = "AccountDO"
ids = "accounts.account_id"
ledger = "key_rotation_log"
token = "KEYROTATE_OBJECTS_TOKEN"
''')

    def env(self) -> dict[str, str]:
        return {"CLOUDFLARE_API_BASE_URL": self.cf.base_url, "CLOUDFLARE_API_TOKEN": "test-token",
                "CLOUDFLARE_ACCOUNT_ID": "acct", "WRANGLER_SEND_METRICS": "false", "CI": "true"}

    def serve(self, **secrets: str) -> DevWorker:
        """The Worker with these secrets (what a deployed version holds)."""
        self.dev = self.worker.serve(**secrets)
        return self.dev

    def close(self) -> None:
        self.closed = True
        self.cf.stop()

    def each(self, path: str, ids: list[str], size: int = 250, **extra: object) -> dict:
        assert self.dev is not None
        out: dict = {}
        for i in range(0, len(ids), size):
            out.update(self.dev.post(path, {"ids": ids[i:i + size], **extra}) or {})
        return out

    def ledger(self, rotation_id: str | None = None) -> list[tuple]:
        conn = sqlite3.connect(f"file:{self.d1}?mode=ro", uri=True, timeout=0)
        try:
            where, params = ("WHERE rotation_id = ?", (rotation_id,)) if rotation_id else ("", ())
            return conn.execute(f"SELECT rotation_id, account_id, status FROM key_rotation_log {where}",
                                params).fetchall()
        finally:
            conn.close()
