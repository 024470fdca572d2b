-- A column with REFERENCES (DROP COLUMN refuses foreign-key columns) and a plain one.
ALTER TABLE sync_jobs ADD COLUMN delegated_by TEXT REFERENCES users (user_id);
ALTER TABLE sync_jobs ADD COLUMN note TEXT;
CREATE VIEW active_accounts AS SELECT account_id, user_id FROM accounts WHERE status = 'active';
CREATE TRIGGER accounts_revoked AFTER UPDATE OF status ON accounts WHEN NEW.status = 'revoked'
BEGIN
  UPDATE accounts SET encrypted_tokens = NULL WHERE account_id = NEW.account_id;
END;
