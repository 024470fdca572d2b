-- Control-plane events keyrotate must remember: which secrets it pushed to which Worker
-- and when, so a rollback to a version older than a MASTER_KEY or JWT change is refused.
-- Fingerprints only (one-way), never values.

CREATE TABLE IF NOT EXISTS keyrotate_events (
  id           INTEGER PRIMARY KEY AUTOINCREMENT,
  environment  TEXT NOT NULL,
  worker       TEXT NOT NULL,          -- the deployed Worker's full name
  kind         TEXT NOT NULL,          -- secret-push | deploy | rollback
  secret       TEXT,
  secret_kind  TEXT,                   -- master-key | jwt-hs256 | external | generic
  fingerprint  TEXT,
  at           TEXT NOT NULL           -- UTC, ISO 8601
);

CREATE INDEX IF NOT EXISTS keyrotate_events_worker ON keyrotate_events (environment, worker, kind, at);
