-- The application's first schema.
CREATE TABLE users (
  user_id    TEXT PRIMARY KEY,
  email      TEXT NOT NULL UNIQUE,
  created_at TEXT NOT NULL DEFAULT (datetime('now'))
);
CREATE TABLE accounts (
  account_id        TEXT PRIMARY KEY,
  user_id           TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
  provider          TEXT NOT NULL DEFAULT 'google',
  encrypted_tokens  TEXT,
  status            TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked'))
);
CREATE INDEX idx_accounts_user ON accounts (user_id);
