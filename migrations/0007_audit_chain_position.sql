-- A place in the audit chain is taken once. INSERT OR REPLACE (and REPLACE INTO) would
-- otherwise delete the event holding that place without firing the delete trigger (SQLite
-- fires delete triggers for REPLACE only with recursive_triggers on), and put another in
-- its place. This refuses any insert whose seq, or whose predecessor in the environment's
-- chain, is already taken; the audit key's MAC catches whoever drops the trigger first.
CREATE TRIGGER IF NOT EXISTS keyrotate_audit_no_replace BEFORE INSERT ON keyrotate_audit
WHEN EXISTS (SELECT 1 FROM keyrotate_audit
             WHERE seq = NEW.seq OR (environment = NEW.environment AND prev_hash = NEW.prev_hash))
BEGIN
  SELECT RAISE(ABORT, 'keyrotate_audit: that place in the chain is taken');
END;
