-- Several ADD COLUMN with DEFAULT and CHECK.
ALTER TABLE accounts ADD COLUMN sync_state TEXT NOT NULL DEFAULT 'idle' CHECK (sync_state IN ('idle', 'syncing', 'error'));
ALTER TABLE accounts ADD COLUMN last_sync_at INTEGER DEFAULT 0;
ALTER TABLE users ADD COLUMN display_name TEXT DEFAULT '';
