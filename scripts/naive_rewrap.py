"""The baseline keyrotate must beat: a naive single-threaded in-memory rewrap loop.

Reads every row into memory, rewraps each with the same codec keyrotate uses (so the
comparison measures the engine, not the crypto), and writes all rows back with one
executemany in one transaction. No streaming, no checkpoints, no CAS, no resume.
With --verify it then proves its result as keyrotate's final census does: every row
read back and opened (payload too) under the new key.

    KR_OLD=... KR_NEW=... python scripts/naive_rewrap.py DB_PATH [rewrap|fresh-dek] [--verify]
"""

from __future__ import annotations

import os
import sqlite3
import sys

from keyrotate.crypto.codecs import make_codec


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--verify"]
    path = args[0]
    mode = args[1] if len(args) > 1 else "rewrap"
    codec = make_codec("tminus-envelope", os.environ["KR_NEW"], os.environ["KR_OLD"], mode)
    conn = sqlite3.connect(path, isolation_level=None)
    rows = conn.execute("SELECT account_id, encrypted_tokens FROM accounts").fetchall()
    updates = []
    for key, value in rows:
        if value is None:
            continue
        new = codec.rotate(value)
        if new is not None:
            updates.append((new, key))
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("UPDATE accounts SET encrypted_tokens = ? WHERE account_id = ?", updates)
    conn.execute("COMMIT")
    if "--verify" in sys.argv:
        new_kid = codec.new_kid
        rows = conn.execute("SELECT encrypted_tokens FROM accounts").fetchall()
        wrong = sum(1 for (value,) in rows if value is not None and codec.census(value) != new_kid)
        if wrong:
            raise SystemExit(f"{wrong} rows do not open under the new key")
    conn.close()
    print(len(updates))


if __name__ == "__main__":
    main()
