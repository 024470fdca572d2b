"""`keyrotate init`: a commented manifest for the reference (tminus) application."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keyrotate.errors import ConfigError

TEMPLATE = '''# keyrotate.toml: what keyrotate needs to know about this application (tminus).
# Keys never appear here: secrets live in the store named per environment.

[project]
name = "tminus"
# The deployed Worker's full name. keyrotate resolves it itself, because
# `wrangler rollback --env ENV` (4.x) does not add the environment suffix.
worker_name = "tminus-{worker}-{env}"
# `wrangler deploy --env ENV` runs in workers_dir/<worker>
workers_dir = "workers"
# Deployed in this order, rolled back in the reverse order.
deploy_order = ["api", "sync-consumer", "write-consumer", "oauth", "webhook", "cron", "app-gateway", "mcp", "push"]
wrangler = ["npx", "wrangler"]
migrations_dir = "migrations/d1-registry"

[environments.staging]
# a local D1 state file is a plain SQLite file
database = "file:.wrangler/state/v3/d1/miniflare-D1DatabaseObject/<hash>.sqlite"
secrets = "dotenv:.env.staging"
health = { api = "https://api-staging.example/health" }
# the API Worker's keyrotate route (examples/durable-objects): AccountDO holds the OAuth tokens
objects = { AccountDO = "https://api-staging.example/internal/keyrotate/objects" }
# keyrotate asks each version of these Workers which keys it holds (ping) before moving
# any traffic (docs/serving-keys.md); examples/worker/keyrotate-route.js is the route
key_routes = { api = "https://api-staging.example/internal/keyrotate/objects" }

[environments.production]
# Cloudflare D1 over its REST API (CLOUDFLARE_API_TOKEN from the environment)
database = "d1://ACCOUNT_ID/DATABASE_ID"
secrets = "vault:secret/tminus/production"
health = { api = "https://api.example/health", oauth = "https://oauth.example/health" }
objects = { AccountDO = "https://api.example/internal/keyrotate/objects" }
key_routes = { api = "https://api.example/internal/keyrotate/objects" }

[secrets.MASTER_KEY]
kind = "master-key"            # rows and objects must be migrated: see [[encrypted]]
workers = ["api", "oauth"]     # must be identical on both
# 64 hex characters, always: the API Worker's org-delegation routes import MASTER_KEY
# with a function that accepts exactly 64 hex characters and throws on anything else
# (packages/shared/src/service-account-crypto.ts). A base64 key, like
# `openssl rand -base64 32` makes, takes those routes down the moment it is pushed.
format = "hex:32"
# The Workers read a previous key during a rotation: zero downtime, and the Worker
# can rewrap the AccountDO objects with both keys.
previous = "MASTER_KEY_PREVIOUS"
# Scheduled rollover (`keyrotate rollover`, README "Scheduled rollover"): rotate when
# older than max_age, keep the overlap open finish_after, start steps only in the window.
# max_age = "90d"
# auto = true
# finish_after = "7d"
# window = "Mon-Fri 09:00-16:00 UTC"

[secrets.KEYROTATE_OBJECTS_TOKEN]
kind = "internal"              # the bearer token of the keyrotate route: generated, pushed, rotated
workers = ["api"]
format = "hex:32"

[secrets.JWT_SECRET]
kind = "jwt-hs256"
workers = ["api", "oauth"]
generate = "base64:32"
previous = "JWT_SECRET_PREVIOUS"   # optional overlap; without it every session is invalidated
max_token_ttl = "1h"
# max_age = "30d"
# auto = true
# finish_after = "1d"                # at least max_token_ttl
# window = "Mon-Fri 09:00-16:00 UTC"

[secrets.GOOGLE_CLIENT_SECRET]
kind = "external"              # the value comes from the provider console
workers = ["api", "oauth"]

# Envelopes in D1 (migrations 0022-0024 of the registry)
[[encrypted]]
secret = "MASTER_KEY"
table = "org_delegations"
column = "encrypted_sa_key"

[[encrypted]]
secret = "MASTER_KEY"
table = "org_delegations"
column = "previous_encrypted_sa_key"

[[encrypted]]
secret = "MASTER_KEY"
table = "impersonation_token_cache"
column = "encrypted_token"

# OAuth tokens: not in D1. One AccountDO per account holds them (its `auth` table); the
# Worker rewraps them through the route above. D1's accounts table lists the objects, and
# the registry's key_rotation_log (migration 0006) is the ledger.
[[encrypted]]
secret = "MASTER_KEY"
object = "AccountDO"
ids = "accounts.account_id"
ledger = "key_rotation_log"
token = "KEYROTATE_OBJECTS_TOKEN"
'''


@dataclass(frozen=True)
class InitResult:
    written: Path
    exit_code: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"written": str(self.written)}

    def text(self) -> str:
        return f"wrote {self.written}"


def write_init(path: Path, force: bool = False) -> InitResult:
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; refusing to overwrite it (use --force)")
    path.write_text(TEMPLATE)
    return InitResult(path)
