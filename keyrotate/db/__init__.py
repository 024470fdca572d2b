"""Row databases: where encrypted rows, keyrotate's journal and the migration ledgers live
(an SQLite file, a libSQL server, Cloudflare D1), behind one row-store contract."""
