"""`keyrotate init`: a commented manifest for the reference (tminus) application."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keyrotate.errors import ConfigError

TEMPLATE = '''# keyrotate.toml: what keyrotate needs to know about this application.
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

[environments.production]
# Cloudflare D1 over its REST API (CLOUDFLARE_API_TOKEN from the environment)
database = "d1://ACCOUNT_ID/DATABASE_ID"
secrets = "vault:secret/tminus/production"
health = { api = "https://api.example/health", oauth = "https://oauth.example/health" }

[secrets.MASTER_KEY]
kind = "master-key"            # rows must be migrated: see [[encrypted]]
workers = ["api", "oauth"]     # must be identical on both
generate = "base64:32"         # like `openssl rand -base64 32`
# Set when the Workers can read a previous key: zero-downtime rotation.
previous = "MASTER_KEY_PREVIOUS"

[secrets.JWT_SECRET]
kind = "jwt-hs256"
workers = ["api", "oauth"]
generate = "base64:32"
previous = "JWT_SECRET_PREVIOUS"   # optional overlap; without it every session is invalidated
max_token_ttl = "1h"

[secrets.GOOGLE_CLIENT_SECRET]
kind = "external"              # the value comes from the provider console
workers = ["api", "oauth"]

[[encrypted]]
secret = "MASTER_KEY"
table = "accounts"
column = "encrypted_tokens"
format = "tminus-envelope"

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
'''


@dataclass(frozen=True)
class InitResult:
    written: Path
    exit_code: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"written": str(self.written)}


def write_init(path: Path, force: bool = False) -> InitResult:
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; refusing to overwrite it (use --force)")
    path.write_text(TEMPLATE)
    return InitResult(path)
