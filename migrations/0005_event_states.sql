-- A push is recorded before it is made (state 'intent') and confirmed after ('done', or
-- 'failed' when Cloudflare refused it). An intent never confirmed (keyrotate was killed
-- mid-push, and the child may have finished it) counts as a change for the rollback guard.
-- version_id: the Worker version a push made, when keyrotate made it through the API.
ALTER TABLE keyrotate_events ADD COLUMN state TEXT NOT NULL DEFAULT 'done';
ALTER TABLE keyrotate_events ADD COLUMN version_id TEXT;
