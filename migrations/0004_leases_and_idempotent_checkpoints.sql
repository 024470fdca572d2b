-- One run at a time per target: a lease, renewed with every checkpoint. A holder on this
-- host whose process is gone is taken over at once; any other holder after it expires.
CREATE TABLE IF NOT EXISTS keyrotate_leases (
  target       TEXT PRIMARY KEY,             -- TABLE.COLUMN
  holder       TEXT NOT NULL,                -- host:pid:token of the process holding it
  host         TEXT NOT NULL,
  pid          INTEGER NOT NULL,
  started      TEXT,                         -- the holder's process start (pid reuse guard)
  acquired_at  TEXT NOT NULL,
  expires_at   TEXT NOT NULL                 -- UTC, ISO 8601
);

-- Every checkpoint moves seq by one and applies only if seq is still what its batch
-- started from: a batch replayed after a lost answer (D1) cannot count twice.
ALTER TABLE keyrotate_checkpoints ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;

-- The row key as its own type, so failures sort by key (9 before 10), not as text.
ALTER TABLE keyrotate_row_failures ADD COLUMN key_value;
