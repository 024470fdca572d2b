-- The per-account rotation ledger keyrotate writes for Durable Object targets, exactly
-- as the tminus registry defines it (packages/d1-registry migration 0006). For an app that
-- lacks it: copy this file into its D1 migrations folder under the next free number and
-- apply it (`keyrotate migrations apply --env staging`, or `wrangler d1 migrations apply`).
CREATE TABLE IF NOT EXISTS key_rotation_log (
  rotation_id   TEXT NOT NULL,
  account_id    TEXT NOT NULL,
  status        TEXT NOT NULL CHECK(status IN ('started','completed','failed')),
  error_message TEXT,
  started_at    TEXT NOT NULL DEFAULT (datetime('now')),
  completed_at  TEXT,
  PRIMARY KEY (rotation_id, account_id)
);

CREATE INDEX IF NOT EXISTS idx_key_rotation_log_rotation ON key_rotation_log(rotation_id);
CREATE INDEX IF NOT EXISTS idx_key_rotation_log_status ON key_rotation_log(status);
