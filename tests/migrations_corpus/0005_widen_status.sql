-- Widen a CHECK constraint: SQLite can only do that by rebuilding the table. Written the
-- way D1 accepts under its enforced foreign keys (sync_jobs references accounts): rows
-- copied aside, table dropped and created again under its own name, rows put back.
PRAGMA defer_foreign_keys = true;
CREATE TABLE accounts_copy AS SELECT * FROM accounts;
DROP TABLE accounts;
CREATE TABLE accounts (
  account_id          TEXT PRIMARY KEY,
  user_id             TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
  provider            TEXT NOT NULL DEFAULT 'google',
  encrypted_tokens    TEXT,
  status              TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked', 'paused')),
  sync_state          TEXT NOT NULL DEFAULT 'idle' CHECK (sync_state IN ('idle', 'syncing', 'error')),
  last_sync_at        INTEGER DEFAULT 0,
  provider_account_id TEXT
);
INSERT INTO accounts SELECT * FROM accounts_copy;
DROP TABLE accounts_copy;
CREATE INDEX idx_accounts_user ON accounts (user_id);
CREATE UNIQUE INDEX idx_accounts_provider_account ON accounts (provider, provider_account_id);
