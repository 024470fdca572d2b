"""The baseline keyrotate must beat: a naive single-threaded in-memory rewrap loop.

Reads every row into memory, rewraps each with the same codec keyrotate uses (so the
comparison measures the engine, not the crypto), and writes all rows back with one
executemany in one transaction. No streaming, no checkpoints, no CAS, no resume.

    KR_OLD=... KR_NEW=... python scripts/naive_rewrap.py DB_PATH [rewrap|fresh-dek]
"""

from __future__ import annotations

import os
import sqlite3
import sys

from keyrotate.crypto.codecs import make_codec


def main() -> None:
    path = sys.argv[1]
    mode = sys.argv[2] if len(sys.argv) > 2 else "rewrap"
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
    conn.close()
    print(len(updates))


if __name__ == "__main__":
    main()
