-- keyrotate's own journal: one row per run, its checkpoint, and the rows it could not rotate.
-- Nothing here is secret: keys appear only as one-way key ids (kid).

CREATE TABLE IF NOT EXISTS keyrotate_runs (
  run_id        TEXT PRIMARY KEY,
  kind          TEXT NOT NULL,                -- 'reencrypt'
  target        TEXT NOT NULL,                -- TABLE.COLUMN
  key_column    TEXT NOT NULL,
  format        TEXT NOT NULL,                -- tminus-envelope | fernet
  mode          TEXT NOT NULL,                -- rewrap | fresh-dek
  old_kid       TEXT NOT NULL,
  new_kid       TEXT NOT NULL,
  status        TEXT NOT NULL,                -- running | completed | completed_with_failures
  started_at    TEXT NOT NULL,
  finished_at   TEXT
);

CREATE INDEX IF NOT EXISTS keyrotate_runs_lookup
  ON keyrotate_runs (target, key_column, format, mode, old_kid, new_kid, status);

-- Committed in the same transaction as each batch of row writes.
CREATE TABLE IF NOT EXISTS keyrotate_checkpoints (
  run_id                TEXT PRIMARY KEY REFERENCES keyrotate_runs (run_id),
  has_cursor            INTEGER NOT NULL DEFAULT 0,
  last_key,                                   -- any type: the key column's value
  batches               INTEGER NOT NULL DEFAULT 0,
  rows_scanned          INTEGER NOT NULL DEFAULT 0,
  rows_rewritten        INTEGER NOT NULL DEFAULT 0,
  rows_already_current  INTEGER NOT NULL DEFAULT 0,
  rows_null             INTEGER NOT NULL DEFAULT 0,
  rows_failed           INTEGER NOT NULL DEFAULT 0,
  rows_conflicted       INTEGER NOT NULL DEFAULT 0,
  seconds               REAL NOT NULL DEFAULT 0,
  updated_at            TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS keyrotate_row_failures (
  run_id   TEXT NOT NULL REFERENCES keyrotate_runs (run_id),
  row_key  TEXT NOT NULL,                     -- the key column's value, as text
  reason   TEXT NOT NULL,                     -- never the value, never a key
  PRIMARY KEY (run_id, row_key)
);
