-- One row per rotation of a secret in an environment: a resumable state machine.
-- Fingerprints and counts only, never values.

CREATE TABLE IF NOT EXISTS keyrotate_rotations (
  rotation_id  TEXT PRIMARY KEY,
  environment  TEXT NOT NULL,
  secret       TEXT NOT NULL,
  kind         TEXT NOT NULL,             -- master-key | jwt-hs256 | external | generic
  plan         TEXT NOT NULL,             -- overlap | cutover
  compromised  INTEGER NOT NULL DEFAULT 0,
  state        TEXT NOT NULL,             -- in-progress | awaiting-finish | finished | aborted
  steps_done   TEXT NOT NULL DEFAULT '[]',-- JSON list of step names
  old_fp       TEXT,
  new_fp       TEXT,
  detail       TEXT NOT NULL DEFAULT '{}',-- JSON: row counts, push times, report paths
  started_at   TEXT NOT NULL,
  updated_at   TEXT NOT NULL,
  finished_at  TEXT
);

CREATE INDEX IF NOT EXISTS keyrotate_rotations_open ON keyrotate_rotations (environment, secret, state);
