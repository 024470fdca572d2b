-- A new table with indexes.
CREATE TABLE sync_jobs (
  job_id      INTEGER PRIMARY KEY AUTOINCREMENT,
  account_id  TEXT NOT NULL REFERENCES accounts (account_id),
  kind        TEXT NOT NULL CHECK (kind IN ('full', 'delta')),
  queued_at   TEXT NOT NULL DEFAULT (datetime('now')),
  UNIQUE (account_id, kind)
);
CREATE INDEX idx_sync_jobs_account ON sync_jobs (account_id);
CREATE INDEX idx_sync_jobs_queued ON sync_jobs (queued_at DESC);
