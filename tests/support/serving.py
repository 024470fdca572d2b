"""The serving-keys invariant, checked from the ground truth of the Cloudflare stand-in (the
secrets each deployed version really holds) and the rows in the database, and an
application that seals rows under the key of whichever version serves it.

1. every version that serves traffic opens every row with its MASTER_KEY or PREVIOUS;
2. versions that serve traffic (of one Worker, and across the Workers sharing the rows)
   each open what the others seal (their MASTER_KEY);
3. every key a row is sealed under is still in the secret store.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from keyrotate.crypto.envelope import parse, seal, unwrap_dek
from keyrotate.crypto.keys import MasterKey
from keyrotate.demo.build import token_payload
from keyrotate.secrets.base import SLOTS
from keyrotate.secrets.dotenv import DotenvStore
from tests.support.cf_api import CloudflareStandIn

NAME, PREVIOUS = "MASTER_KEY", "MASTER_KEY_PREVIOUS"


def serving_keys(cf: CloudflareStandIn, workers: list[str]) -> list[tuple[str, str | None, str | None]]:
    """(worker, MASTER_KEY, PREVIOUS) of every version serving traffic (share > 0)."""
    out = []
    for w in workers:
        for secrets, share in cf.deployed(f"tminus-{w}-staging"):
            if share > 0:
                out.append((w, secrets.get(NAME), secrets.get(PREVIOUS)))
    return out


def opener(value: str, candidates: list[str]) -> str | None:
    """The candidate key that opens the row's data key, if any."""
    env = parse(value)
    for secret in candidates:
        if unwrap_dek(env, MasterKey.from_secret(secret)) is not None:
            return secret
    return None


def row_keys(db: Path, candidates: list[str]) -> dict[str, str | None]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT account_id, encrypted_tokens FROM accounts "
                            "WHERE encrypted_tokens IS NOT NULL").fetchall()
    finally:
        conn.close()
    return {k: opener(v, candidates) for k, v in rows}


def store_values(store: DotenvStore) -> set[str]:
    return {v for slot in SLOTS if (v := store.read(NAME, slot)) is not None}


def problems(cf: CloudflareStandIn, db: Path, store: DotenvStore, workers: list[str],
             known: set[str]) -> list[str]:
    """Every way the invariant fails now (empty: it holds). `known`: every MASTER_KEY value
    the test has seen anywhere (rows are opened by trial with them)."""
    serving = serving_keys(cf, workers)
    keys = row_keys(db, sorted(known))
    out = []
    for w, mk, prev in serving:
        if mk is None:
            out.append(f"a serving version of {w} holds no {NAME}")
            continue
        unreadable = sorted(k for k, key in keys.items() if key not in (mk, prev))
        if unreadable:
            out.append(f"a serving version of {w} cannot open {len(unreadable)} rows "
                       f"(e.g. {unreadable[0]})")
    for w, mk, _ in serving:
        for other, mk2, prev2 in serving:
            if mk is not None and mk not in (mk2, prev2):
                out.append(f"a serving version of {other} cannot open what one of {w} seals")
    in_store = store_values(store)
    lost = sorted(k for k, key in keys.items() if key is not None and key not in in_store)
    if lost:
        out.append(f"{len(lost)} rows are under a key no longer in the store (e.g. {lost[0]})")
    sealing = {mk for _, mk, _ in serving if mk is not None} - in_store
    if sealing:
        out.append("a serving version seals under a key that is not in the store")
    return out


class App:
    """The application: writes rows sealed under the MASTER_KEY of the version that serves
    the request, as the Workers do (no kid)."""

    def __init__(self, cf: CloudflareStandIn, db: Path):
        self.cf, self.db, self.n = cf, db, 0

    def seal_as(self, worker: str, rows: int = 3) -> str:
        """New rows through the version serving `worker` now (the largest share)."""
        secrets, _ = max(self.cf.deployed(f"tminus-{worker}-staging"), key=lambda d: d[1])
        key = secrets[NAME]
        conn = sqlite3.connect(self.db)
        try:
            for _ in range(rows):
                self.n += 1
                conn.execute("INSERT INTO accounts (account_id, user_id, encrypted_tokens, "
                             "created_at, updated_at) VALUES (?, ?, ?, 'now', 'now')",
                             (f"app_{worker}_{self.n:05d}", f"u{self.n}",
                              seal(token_payload(self.n), MasterKey.from_secret(key),
                                   with_kid=False)))
            conn.commit()
        finally:
            conn.close()
        return key
