"""`keyrotate demo`: the whole data-plane story on a local file, no cloud account needed."""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from keyrotate.dataplane.codec_refs import codec_from_refs
from keyrotate.dataplane.reencrypt import ReencryptOptions, ReencryptResult, reencrypt
from keyrotate.dataplane.verify import Census, verify
from keyrotate.db.connect import open_database
from keyrotate.db.table_shape import resolve_target
from keyrotate.demo.build import build_reference_db
from keyrotate.errors import ConfigError
from keyrotate.files import atomic_write_secret
from keyrotate.progress import Progress
from keyrotate.secrets.keygen import generate
from keyrotate.secrets.refs import resolve

TARGET = "accounts.encrypted_tokens"
FRESH = "MASTER_KEY_FRESH"


@dataclass(frozen=True)
class NextStep:
    """A command the demo suggests, what it does, and what its output will show."""
    does: str
    shows: str
    command: str

    def as_dict(self) -> dict[str, str]:
        return {"does": self.does, "shows": self.shows, "command": self.command}


@dataclass(frozen=True)
class DemoResult:
    rows: int
    database: str
    env_file: str
    build_seconds: float
    reencrypt: ReencryptResult
    verify: Census
    next_steps: list[NextStep] = field(default_factory=list)
    note: str | None = None          # how to run keyrotate, when it is not on PATH

    @property
    def commands(self) -> list[str]:
        return [s.command for s in self.next_steps]

    @property
    def clean(self) -> bool:
        return self.verify.clean

    @property
    def exit_code(self) -> int:
        return self.verify.exit_code

    def as_dict(self) -> dict[str, Any]:
        rot = self.reencrypt.as_dict()
        return {"rows": self.rows, "database": self.database, "build_seconds": self.build_seconds,
                "reencrypt": rot, "verify": self.verify.as_dict(), "clean": self.clean,
                "rows_per_second": rot["rows_per_second"], "commands": self.commands,
                "next_steps": [s.as_dict() for s in self.next_steps], "note": self.note}

    def text(self) -> str:
        rot = self.reencrypt.as_dict()
        return "\n".join([
            f"demo: {self.rows:,} synthetic accounts in {self.database} (built in "
            f"{self.build_seconds:.1f} s)",
            f"reencrypt: {rot['rows_rewritten']:,} rows rewrapped in {rot['seconds']:.2f} s "
            f"({rot['rows_per_second'] or 0:,} rows/s, {rot['workers']} crypto workers), "
            f"{rot['rows_failed']} failed",
            f"verify: {self.verify.ok:,} ok, {self.verify.old} old, {self.verify.failed} failed -> "
            + ("clean" if self.clean else "NOT clean"),
            f"keys are in {self.env_file} (0600). Rotate once more yourself; each command "
            "runs as printed:",
            *(line for i, s in enumerate(self.next_steps, 1)
              for line in (f"  {i}. {s.does}:", f"       {s.command}", f"     it shows: {s.shows}")),
            *([self.note] if self.note else []),
        ])


MARKER = ".keyrotate-demo"
DEMO_FILES = {MARKER, ".env", "demo.db", "demo.db-journal", "demo.db-wal", "demo.db-shm"}


def _claim(directory: str, force: bool) -> None:
    """The demo replaces its own database and .env: a folder holding anything the demo did
    not make (a real .env, a real database) is refused unless --force."""
    present = set(os.listdir(directory)) if os.path.isdir(directory) else set()
    ours = MARKER in present and present <= DEMO_FILES
    if present and not ours and not force:
        raise ConfigError(f"{directory} holds files the demo did not make "
                          f"({', '.join(sorted(present - {MARKER})[:5])}): the demo replaces "
                          "demo.db and .env there. Use an empty or new folder (or --force).")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, MARKER), "w") as fh:
        fh.write("made by `keyrotate demo`; the demo may replace this folder's demo.db and .env\n")


def next_steps(program: str, rows: int, db_url: str, env_path: str) -> list[NextStep]:
    """A rotation that does something: the rows are under MASTER_KEY_NEXT now, so the next
    step makes a fresh key and moves every row to it."""
    current, fresh = (shlex.quote(f"dotenv:{env_path}#{n}") for n in ("MASTER_KEY_NEXT", FRESH))
    db, target = shlex.quote(db_url), f"--target {TARGET}"
    return [
        NextStep("make a fresh key in the demo's .env (stored, never printed)",
                 f"wrote a new 32-byte hex secret to dotenv:{env_path}#{FRESH}",
                 f"{program} keygen --format hex --to {fresh}"),
        NextStep("move every row from MASTER_KEY_NEXT to it", f"rewritten {rows:,}",
                 f"{program} reencrypt --db {db} {target} --old-key {current} --new-key {fresh}"),
        NextStep("prove every row opens under the fresh key", f"clean: {rows:,} rows, {rows:,} ok",
                 f"{program} verify --db {db} {target} --key {fresh} --old-key {current}"),
        NextStep("list the journal: your run above the demo's, both completed", "completed",
                 f"{program} runs --db {db}"),
    ]


def run_demo(rows: int, directory: str, workers: int | None, say: Callable[[str], None],
             progress: Callable[[str], Progress], force: bool = False,
             program: str = "keyrotate", note: str | None = None) -> DemoResult:
    """`program` is how to run this keyrotate from here (the CLI knows how it was run)."""
    _claim(directory, force)
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
    build_reference_db(db_path, rows, resolve(old_ref))
    build_s = time.monotonic() - t0

    codec = codec_from_refs("tminus-envelope", new_ref, old_ref, "rewrap")
    store = open_database(db_url)
    try:
        target = resolve_target(store, TARGET, None)
        say("rotating MASTER_KEY -> MASTER_KEY_NEXT ...")
        rot = reencrypt(store, target, codec, ReencryptOptions(workers=workers),
                        progress("reencrypt"))
        say("verifying every row opens under MASTER_KEY_NEXT ...")
        census = verify(store, target, codec, workers=workers, progress=progress("verify"))
    finally:
        store.close()
    return DemoResult(rows, db_url, env_path, round(build_s, 3), rot, census,
                      next_steps(program, rows, db_url, env_path), note)
