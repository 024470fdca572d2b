"""The application's forward-only D1 migrations: list and apply them (recorded as wrangler
records them, staging first), and write the compensating migration that undoes one."""
