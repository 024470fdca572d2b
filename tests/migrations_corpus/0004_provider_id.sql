-- An index on an added column: DROP COLUMN cannot undo this without dropping the index first.
ALTER TABLE accounts ADD COLUMN provider_account_id TEXT;
CREATE UNIQUE INDEX idx_accounts_provider_account ON accounts (provider, provider_account_id);
