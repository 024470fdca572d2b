-- The audit trail: one append-only history per environment, shared by every operator
-- and machine. Each record (canonical JSON, fingerprints only) carries the SHA-256 of
-- the one before (prev_hash); hash is the SHA-256 of the record. UNIQUE (environment,
-- prev_hash) lets only one of two racing appends take a place in the chain: the other
-- reads the new head and appends after it.
CREATE TABLE IF NOT EXISTS keyrotate_audit (
  seq          INTEGER PRIMARY KEY,
  environment  TEXT NOT NULL,
  at           TEXT NOT NULL,
  event        TEXT NOT NULL,
  rotation_id  TEXT,
  secret       TEXT,
  record       TEXT NOT NULL,
  prev_hash    TEXT NOT NULL,
  hash         TEXT NOT NULL,
  UNIQUE (environment, prev_hash)
);

-- Append-only: updates and deletes are refused (someone who can drop these triggers can
-- still edit rows; `keyrotate audit verify` finds that from the chain and local copies).
CREATE TRIGGER IF NOT EXISTS keyrotate_audit_no_update BEFORE UPDATE ON keyrotate_audit
BEGIN
  SELECT RAISE(ABORT, 'keyrotate_audit is append-only');
END;

CREATE TRIGGER IF NOT EXISTS keyrotate_audit_no_delete BEFORE DELETE ON keyrotate_audit
BEGIN
  SELECT RAISE(ABORT, 'keyrotate_audit is append-only');
END;
