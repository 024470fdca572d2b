"""`keyrotate demo`: the whole data-plane story on a local file, no cloud account needed."""

from __future__ import annotations

import os
import time
from typing import Any, Callable

from keyrotate.demo import build_reference_db
from keyrotate.engine.reencrypt import ReencryptOptions, reencrypt
from keyrotate.engine.verify import verify
from keyrotate.keygen import generate
from keyrotate.keys_from_refs import codec_from_refs
from keyrotate.progress_bar import progress_for
from keyrotate.secrets.files import atomic_write_secret
from keyrotate.store import open_store
from keyrotate.store.base import resolve_target

TARGET = "accounts.encrypted_tokens"


def run_demo(rows: int, directory: str, workers: int | None,
             say: Callable[[str], None]) -> dict[str, Any]:
    os.makedirs(directory, exist_ok=True)
    db_path = os.path.join(directory, "demo.db")
    env_path = os.path.join(directory, ".env")
    for stale in (db_path, env_path):
        if os.path.exists(stale):
            os.unlink(stale)
    # old key like `openssl rand -base64 32` (SHA-256 derived), new key 64 hex (raw)
    atomic_write_secret(env_path, f"# keyrotate demo keys (mode 0600)\n"
                                  f"MASTER_KEY={generate('base64')}\n"
                                  f"MASTER_KEY_NEXT={generate('hex')}\n")
    old_ref, new_ref = f"dotenv:{env_path}#MASTER_KEY", f"dotenv:{env_path}#MASTER_KEY_NEXT"
    db_url = f"file:{db_path}"

    say(f"building {rows:,} accounts sealed under MASTER_KEY in {db_path} ...")
    t0 = time.monotonic()
    from keyrotate.refs import resolve

    build_reference_db(db_path, rows, resolve(old_ref))
    build_s = time.monotonic() - t0

    codec = codec_from_refs("tminus-envelope", new_ref, old_ref, "rewrap")
    store = open_store(db_url)
    try:
        target = resolve_target(store, TARGET, None)
        say("rotating MASTER_KEY -> MASTER_KEY_NEXT ...")
        rot = reencrypt(store, target, codec, ReencryptOptions(workers=workers),
                        progress_for("reencrypt")).as_dict()
        say("verifying every row opens under MASTER_KEY_NEXT ...")
        census = verify(store, target, codec, workers=workers,
                        progress=progress_for("verify")).as_dict()
    finally:
        store.close()

    commands = [
        f"keyrotate reencrypt --db {db_url} --target {TARGET} --old-key {old_ref} --new-key {new_ref}",
        f"keyrotate verify --db {db_url} --target {TARGET} --key {new_ref} --old-key {old_ref}",
        f"keyrotate runs --db {db_url}",
    ]
    text = [
        f"demo: {rows:,} synthetic accounts in {db_path} (built in {build_s:.1f} s)",
        f"reencrypt: {rot['rows_rewritten']:,} rows rewrapped in {rot['seconds']:.2f} s "
        f"({rot['rows_per_second'] or 0:,} rows/s, {rot['workers']} crypto workers), "
        f"{rot['rows_failed']} failed",
        f"verify: {census['ok']:,} ok, {census['old']} old, {census['failed']} failed -> "
        + ("clean" if census["clean"] else "NOT clean"),
        "keys are in " + env_path + " (0600); try it yourself:",
        *("  " + c for c in commands),
    ]
    return {"rows": rows, "database": db_url, "build_seconds": round(build_s, 3),
            "reencrypt": rot, "verify": census, "clean": census["clean"],
            "rows_per_second": rot["rows_per_second"], "commands": commands, "text_lines": text}
