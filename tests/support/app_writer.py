"""Plays the application during a rotation: rewrites rows in short transactions, as the
Workers would, with envelopes under the old key and under the new key.

Aims most writes just ahead of keyrotate's checkpoint (read from its journal) so that
writes land between keyrotate's read and its compare-and-swap. Keys come from the
environment (KR_OLD / KR_NEW), never argv. Writes one JSON line per committed write to
the log as it goes (the test watches it), with `after`: the checkpoint the write
followed, read inside its own write transaction, so each write falls between two known
batches of keyrotate. A final summary line counts the lock errors it saw.

    python tests/support/app_writer.py DB LOG STOPFILE ROWS
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import sys
import time

from keyrotate.crypto.envelope import seal
from keyrotate.crypto.keys import MasterKey
from keyrotate.demo.build import account_id


def checkpoint(conn: sqlite3.Connection) -> int | None:
    """The row index of keyrotate's last committed checkpoint; None before there is one."""
    try:
        row = conn.execute("SELECT last_key FROM keyrotate_checkpoints WHERE has_cursor = 1 "
                           "ORDER BY updated_at DESC LIMIT 1").fetchone()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return None
        raise
    return int(row[0].split("_")[1]) if row else None


def main() -> None:
    db, log_path, stop_file, rows = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    keys = [MasterKey.from_secret(os.environ["KR_OLD"]), MasterKey.from_secret(os.environ["KR_NEW"])]
    rng = random.Random(7)
    conn = sqlite3.connect(db, isolation_level=None, timeout=60)
    writes = locked = 0
    with open(log_path, "w", buffering=1) as log:
        while not os.path.exists(stop_file):
            payload = f'{{"access_token":"app-write-{writes}"}}'
            key = keys[writes % 2]  # half under the old key, half under the new one
            try:
                conn.execute("BEGIN IMMEDIATE")
                after = checkpoint(conn)
                cursor = after or 0
                i = cursor + rng.randint(1, 3000) if rng.random() < 0.8 else rng.randrange(rows)
                i = min(i, rows - 1)
                conn.execute("UPDATE accounts SET encrypted_tokens = ? WHERE account_id = ?",
                             (seal(payload.encode(), key, with_kid=False), account_id(i)))
                conn.execute("COMMIT")
            except sqlite3.OperationalError as e:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if "locked" in str(e) or "busy" in str(e):
                    locked += 1
                    continue
                raise
            writes += 1
            log.write(json.dumps({"id": account_id(i), "payload": payload, "after": after}) + "\n")
            time.sleep(rng.uniform(0, 0.004))  # a busy app, not a tight loop: ~400 writes/s at most
        log.write(json.dumps({"summary": True, "writes": writes, "locked": locked}) + "\n")


if __name__ == "__main__":
    main()
