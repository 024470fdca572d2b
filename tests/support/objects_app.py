"""A tminus-shaped application for the Durable Object tests: the test Worker (the
reference endpoint and AccountDO of examples/durable-objects, plus hooks) in the real
Workers runtime, its local D1 (accounts, org_delegations, key_rotation_log), a .env store,
a keyrotate.toml, and the Cloudflare API stand-in for secret pushes."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
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


class ObjectsApp:
    def __init__(self, tmp: Path, accounts: int, stale_wait: int = 120):
        self.tmp = tmp
        shutil.copytree(ROOT / "examples", tmp / "examples")
        shutil.copytree(ROOT / "tests" / "workers" / "objects", tmp / "tests" / "workers" / "objects")
        self.worker_dir = tmp / "tests" / "workers" / "objects"
        self.persist = tmp / "state"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ids = [f"acc_{i:05d}" for i in range(accounts)]
        self.cf = CloudflareStandIn()
        self.dev: DevWorker | None = None
        subprocess.run([str(WRANGLER), "d1", "execute", "DB", "--local", "--persist-to",
                        str(self.persist), "--command", "SELECT 1"], cwd=self.worker_dir,
                       check=True, capture_output=True, timeout=180)
        self.d1 = next(p for p in self.persist.rglob("*.sqlite") if p.name != "metadata.sqlite")
        conn = sqlite3.connect(self.d1)
        conn.executescript(SCHEMA)
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
migrations_dir = "examples/durable-objects/migrations"

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

    def start(self, **secrets: str) -> DevWorker:
        """The Worker with these secrets (what a deployed version holds)."""
        self.stop()
        dev_vars(self.worker_dir, **secrets)
        self.dev = DevWorker(self.worker_dir, self.port, persist=self.persist)
        return self.dev

    def stop(self) -> None:
        if self.dev is not None:
            self.dev.stop()
            self.dev = None

    def close(self) -> None:
        self.stop()
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
