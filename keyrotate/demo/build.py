"""Synthetic data in the reference (tminus) schema: for `keyrotate demo`, tests and benchmarks."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from datetime import datetime, timedelta, timezone
from typing import Callable

from keyrotate.crypto.envelope import seal
from keyrotate.crypto.keys import MasterKey

REFERENCE_SCHEMA = """
CREATE TABLE accounts (
  account_id        TEXT PRIMARY KEY,
  user_id           TEXT NOT NULL,
  provider          TEXT NOT NULL DEFAULT 'google',
  email             TEXT,
  encrypted_tokens  TEXT,
  created_at        TEXT NOT NULL,
  updated_at        TEXT NOT NULL
);
CREATE TABLE org_delegations (
  delegation_id              TEXT PRIMARY KEY,
  org_id                     TEXT NOT NULL,
  encrypted_sa_key           TEXT,
  previous_encrypted_sa_key  TEXT
);
CREATE TABLE impersonation_token_cache (
  cache_id         TEXT PRIMARY KEY,
  encrypted_token  TEXT,
  expires_at       TEXT
);
"""


def token_payload(i: int) -> bytes:
    """An OAuth token bundle shaped like the app's: access, refresh, expiry."""
    expiry = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=i)
    return json.dumps({"access_token": "ya29." + secrets.token_urlsafe(60),
                       "refresh_token": "1//" + secrets.token_urlsafe(48),
                       "expiry": expiry.isoformat()}, separators=(",", ":")).encode()


def account_id(i: int) -> str:
    return f"acc_{i:08d}"


def build_reference_db(path: str, rows: int, key_secret: str, *, with_kid: bool = False,
                       null_every: int = 0, payload: Callable[[int], bytes] = token_payload) -> None:
    """Create `path` with `rows` accounts sealed under `key_secret` as the Workers seal them.

    with_kid=False writes rows exactly like unmodified Workers (no kid field).
    """
    if os.path.exists(path):
        raise FileExistsError(path)
    key = MasterKey.from_secret(key_secret)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    conn = sqlite3.connect(path)
    try:
        conn.executescript(REFERENCE_SCHEMA)
        chunk: list[tuple] = []
        for i in range(rows):
            value = None if null_every and i % null_every == 0 else seal(payload(i), key, with_kid=with_kid)
            chunk.append((account_id(i), f"usr_{i:08d}", f"user{i}@example.com", value, now, now))
            if len(chunk) >= 10_000:
                _insert(conn, chunk)
                chunk = []
        _insert(conn, chunk)
        conn.commit()
    finally:
        conn.close()


def _insert(conn: sqlite3.Connection, chunk: list[tuple]) -> None:
    conn.executemany("INSERT INTO accounts (account_id, user_id, email, encrypted_tokens, "
                     "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)", chunk)
