-- A lease holder is judged alive by its heartbeat, never by its pid (meaningless across
-- hosts, containers and PID namespaces): the holder counts its renewals here, and a run
-- that finds the lease held watches the count for a few heartbeats before taking it over.
ALTER TABLE keyrotate_leases ADD COLUMN beats INTEGER NOT NULL DEFAULT 0;
