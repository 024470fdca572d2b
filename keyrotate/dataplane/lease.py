"""One reencrypt run at a time per target: a lease row in the database, kept alive by a
heartbeat.

Two concurrent runs on one target would share one journal run and double its counters,
so the second one refuses, naming the holder. Whether a holder is alive is judged only by
its heartbeat, never by its process id: a pid means nothing across hosts, containers or
PID namespaces (a run in another namespace on the same host saw a live holder's pid as
gone, took the lease, and both ran at once). The holder renews the lease from a thread of
its own every few seconds (`beats` counts the renewals); a run that finds the lease held
watches it for a few heartbeats. If it moves, the holder is alive: refuse. If it stands
still, the holder is dead or frozen: take the lease over (the usual `kill -9`, then run
again, costs those few seconds of watching).

A holder that was frozen (SIGSTOP, a suspended VM) and lost its lease must not write on
as if it held it: every batch it commits carries a guard statement that fails, rolling
the whole batch back, unless the lease is still its own. Its heartbeat notices too. The
run then stops with exit 3 (`LeaseLost`); nothing it wrote after the takeover applies.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Sequence

from keyrotate.db.base import ReadAhead, RowStore, Statement
from keyrotate.errors import ConfigError, Interrupted, KeyrotateError, StoreError

log = logging.getLogger("keyrotate.lease")
TTL = timedelta(seconds=120)   # informational (expires_at), and for runs before heartbeats
BEAT_LOCAL, BEAT_REMOTE, BEAT_D1 = 1.0, 2.0, 10.0   # seconds between renewals (D1: API budget)
WATCHED_BEATS = 3              # a holder is dead after this many heartbeats without one


_CURRENT = ("SELECT holder, host, pid, acquired_at, beats, expires_at FROM keyrotate_leases "
            "WHERE target = ?")


class LeaseLost(Interrupted):
    """Another run took this run's lease while it was frozen or cut off: this run stops,
    and nothing it wrote after that applied (exit 3)."""


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="microseconds")


def beat_seconds(db: RowStore) -> float:
    url = db.display_url
    if url.startswith("file:"):
        return BEAT_LOCAL
    return BEAT_D1 if url.startswith("d1:") else BEAT_REMOTE


class Lease:
    def __init__(self, db: RowStore, target: str):
        self.db, self.target = db, target
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.holder = f"{self.host}:{self.pid}:{secrets.token_hex(8)}"
        self.beat = beat_seconds(db)
        self.lost = False
        self.released = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- taking it -------------------------------------------------------------------------
    def acquire(self, reads: Sequence[Statement] = ()) -> ReadAhead:
        """Claim it; when another run holds it, watch that holder's heartbeat, and take
        over only a holder that is dead. An uncontended claim is one request on D1, which
        also carries `reads` (made after the claim, in its transaction): their answers come
        back, or none if the lease had to be taken over (then read them now)."""
        row, ahead = self._claim(reads)
        if row is not None and row[0] != self.holder:
            holder, host, pid, acquired, beats, expires = row
            if self._alive(row):
                raise ConfigError(
                    f"another keyrotate run holds {self.target}: pid {pid} on {host} (holder "
                    f"{holder}), since {acquired}, and it is alive (its heartbeat moves). Wait "
                    f"for it to finish; nothing was changed.")
            log.info("taking over %s from %s (no heartbeat for %.0f s)", self.target, holder,
                     WATCHED_BEATS * self.beat)
            # exactly that stale holder, as it stood: a racing run taking it too loses
            self.db.apply([], None, [Statement(
                "DELETE FROM keyrotate_leases WHERE target = ? AND holder = ? AND beats = ? "
                "AND expires_at = ?", (self.target, holder, beats, expires))])
            row, ahead = self._claim(())
        if row is None or row[0] != self.holder:
            raise ConfigError(f"another keyrotate run took {self.target} at the same moment; "
                              "nothing was changed")
        self._thread = threading.Thread(target=self._heartbeat, name="keyrotate-lease",
                                        daemon=True)
        self._thread.start()
        return ahead

    def _claim(self, reads: Sequence[Statement]) -> tuple[tuple | None, ReadAhead]:
        """The lease taken if it is free (never from another holder), and whoever holds
        it after: one request where the store exchanges writes for reads (D1), with
        `reads` after them."""
        now = datetime.now(timezone.utc)
        claim = Statement(
            "INSERT OR IGNORE INTO keyrotate_leases (target, holder, host, pid, started, "
            "acquired_at, expires_at, beats) VALUES (?, ?, ?, ?, '', ?, ?, 0)",
            (self.target, self.holder, self.host, self.pid, _iso(now), _iso(now + TTL)))
        whose = Statement(_CURRENT, (self.target,))
        exchange = getattr(self.db, "exchange", None)
        ahead = ReadAhead()
        if exchange is not None:
            got, *answers = exchange([], None, [claim], [whose, *reads])[1]
            ahead = ReadAhead(reads, answers)
        else:
            self.db.apply([], None, [claim])
            got = self.db.query(whose.sql, whose.params)
        return (tuple(got[0]) if got else None), ahead

    def _current(self) -> tuple | None:
        rows = self.db.query(_CURRENT, (self.target,))
        return tuple(rows[0]) if rows else None

    def _alive(self, seen: tuple) -> bool:
        """Watch the holder's heartbeat for WATCHED_BEATS beats: alive if it moves (or the
        lease changes hands, or is released: then it is not for us to judge stale)."""
        deadline = time.monotonic() + WATCHED_BEATS * self.beat + 1.0
        while time.monotonic() < deadline:
            time.sleep(self.beat / 2)
            now = self._current()
            if now is None:
                return False            # released meanwhile: free to take
            if now != seen:
                return True
        return False

    # -- keeping it ------------------------------------------------------------------------
    def guard(self) -> Statement:
        """Fails (NOT NULL), rolling its whole batch back, unless this run holds the lease:
        put it in every batch, so a run that lost its lease writes nothing more."""
        return Statement(
            "INSERT INTO keyrotate_leases (target, holder, host, pid, acquired_at, expires_at) "
            "SELECT ?, NULL, '', 0, '', '' WHERE NOT EXISTS (SELECT 1 FROM keyrotate_leases "
            "WHERE target = ? AND holder = ?)", (self.target, self.target, self.holder))

    def renewal(self) -> Statement:
        return Statement("UPDATE keyrotate_leases SET beats = beats + 1, expires_at = ? WHERE "
                         "target = ? AND holder = ?",
                         (_iso(datetime.now(timezone.utc) + TTL), self.target, self.holder))

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.beat):
            try:
                self.db.apply([], None, [self.guard(), self.renewal()])
            except KeyrotateError as e:
                if self._taken():
                    self.lost = True
                    log.warning("lost the lease on %s to another run", self.target)
                    return
                log.debug("lease heartbeat on %s failed (%s); trying again", self.target, e)

    def _taken(self) -> bool:
        try:
            now = self._current()
        except KeyrotateError:
            return False
        return now is None or now[0] != self.holder

    def check(self) -> None:
        """Raise LeaseLost if another run has taken the lease."""
        if self.lost:
            raise self.lost_error()

    def lost_error(self) -> LeaseLost:
        self.lost = True
        return LeaseLost(f"another keyrotate run took over {self.target} while this one was "
                         "stalled; this run stopped, and nothing it wrote after that applied. "
                         "The other run carries on")

    def explain(self, error: StoreError) -> KeyrotateError:
        """A batch failed: LeaseLost if it was the guard (the lease is gone), else the error."""
        return self.lost_error() if self._taken() else error

    # -- giving it back --------------------------------------------------------------------
    def release(self) -> None:
        self.stop_heartbeat()
        if not self.released:
            self.db.apply([], None, [self.releasing()])
            self.released = True

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def releasing(self) -> Statement:
        """The lease given back, as a statement for the caller's last batch (with its
        guard first): stop the heartbeat before, and mark it `released` once it committed."""
        return Statement("DELETE FROM keyrotate_leases WHERE target = ? AND holder = ?",
                         (self.target, self.holder))
