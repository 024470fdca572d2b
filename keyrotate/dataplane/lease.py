"""One reencrypt run at a time per target: a lease row in the database.

Two concurrent runs on one target would share one journal run and double its counters,
so the second one refuses, naming the holder. The lease is renewed with every checkpoint
(in the same transaction) and released at the end. A holder killed with SIGKILL cannot
release it: on the same host, a holder whose process is gone is taken over at once (the
usual `kill -9`, then run again); a holder on another host, only after it expires.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from datetime import datetime, timedelta, timezone

from keyrotate.db.base import RowStore, Statement
from keyrotate.errors import ConfigError

TTL = timedelta(seconds=120)
RENEW_EVERY = 30.0  # seconds, when no checkpoint renews it


def _process_start(pid: int) -> str:
    """Boot id and start time of a process (Linux), so a reused pid is not taken for it."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
        with open(f"/proc/{pid}/stat") as fh:
            start = fh.read().rsplit(")", 1)[1].split()[19]
        return f"{boot}:{start}"
    except (OSError, IndexError):
        return ""


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not started or _process_start(pid) in ("", started)


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="microseconds")


class Lease:
    def __init__(self, db: RowStore, target: str):
        self.db, self.target = db, target
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.holder = f"{self.host}:{self.pid}:{secrets.token_hex(4)}"
        self.renewed = 0.0

    def acquire(self) -> None:
        now = datetime.now(timezone.utc)
        row = self.db.query("SELECT holder, host, pid, started, acquired_at, expires_at FROM "
                            "keyrotate_leases WHERE target = ?", (self.target,))
        if row:
            holder, host, pid, started, acquired, expires = row[0]
            stale = (str(expires) < _iso(now) or
                     (host == self.host and not _alive(int(pid), started)))
            if not stale:
                raise ConfigError(
                    f"another keyrotate run holds {self.target}: pid {pid} on {host}, since "
                    f"{acquired}. Wait for it to finish (if that process is gone, its lease "
                    f"expires at {expires}); nothing was changed.")
            # take over exactly that stale holder: a racing run taking it too loses
            self.db.apply([], None, [Statement(
                "DELETE FROM keyrotate_leases WHERE target = ? AND holder = ?",
                (self.target, holder))])
        self.db.apply([], None, [self.claim(ignore=True)])
        got = self.db.query("SELECT holder FROM keyrotate_leases WHERE target = ?", (self.target,))
        if not got or got[0][0] != self.holder:
            raise ConfigError(f"another keyrotate run took {self.target} at the same moment; "
                              "nothing was changed")
        self.renewed = time.monotonic()

    def claim(self, ignore: bool = False) -> Statement:
        """Take the lease if nobody holds it. Without `ignore` the statement fails (UNIQUE)
        when someone does, and with it the transaction it is in: a run's first batch can
        carry its own claim, and then nothing of it lands unless the lease was free."""
        now = datetime.now(timezone.utc)
        self.renewed = time.monotonic()
        return Statement(
            f"INSERT{' OR IGNORE' if ignore else ''} INTO keyrotate_leases (target, holder, host, "
            "pid, started, acquired_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (self.target, self.holder, self.host, self.pid, _process_start(self.pid),
             _iso(now), _iso(now + TTL)))

    @staticmethod
    def lost_claim(error: Exception) -> bool:
        return "UNIQUE constraint failed: keyrotate_leases" in str(error)

    def ours(self) -> bool:
        """This process holds the lease (a claim whose answer was lost did land)."""
        got = self.db.query("SELECT holder FROM keyrotate_leases WHERE target = ?", (self.target,))
        return bool(got) and got[0][0] == self.holder

    def renewal(self) -> Statement:
        """Commit with a checkpoint: the lease lives on while batches commit."""
        self.renewed = time.monotonic()
        return Statement("UPDATE keyrotate_leases SET expires_at = ? WHERE target = ? AND holder = ?",
                         (_iso(datetime.now(timezone.utc) + TTL), self.target, self.holder))

    def renew_if_due(self) -> None:
        if time.monotonic() - self.renewed > RENEW_EVERY:
            self.db.apply([], None, [self.renewal()])

    def release(self) -> None:
        self.db.apply([], None, [self.releasing()])

    def releasing(self) -> Statement:
        return Statement("DELETE FROM keyrotate_leases WHERE target = ? AND holder = ?",
                         (self.target, self.holder))
