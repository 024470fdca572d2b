"""A lease held for a whole command: the data plane's lease (keyrotate_leases in the
environment's database), kept alive by a heartbeat on a connection of its own.

`rollover` holds `rollover:<env>` while it runs: a second run refuses, naming the holder.
One step can take longer than the lease lives (a reencrypt of millions of rows): the
heartbeat renews it meanwhile, so it never expires under a live run. A holder killed with
SIGKILL stops renewing; the lease module decides when another run may take it over.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from keyrotate.config.context import Context
from keyrotate.dataplane.lease import RENEW_EVERY, Lease
from keyrotate.db.connect import open_database
from keyrotate.errors import KeyrotateError

log = logging.getLogger("keyrotate.lease")


class HeldLease:
    def __init__(self, ctx: Context, name: str, renew_every: float = RENEW_EVERY):
        self.ctx, self.name, self.renew_every = ctx, name, renew_every
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._hold, name=f"lease {name}", daemon=True)

    def __enter__(self) -> "HeldLease":
        self.ctx.db   # keyrotate's tables (the lease table among them) exist before the heartbeat
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def _hold(self) -> None:
        """Acquire, renew until told to stop, release: all on this thread's connection."""
        try:
            db = open_database(self.ctx.database_url())
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        try:
            lease = Lease(db, self.name)
            try:
                lease.acquire()
            except BaseException as e:
                self._error = e
                return
            finally:
                self._ready.set()
            try:
                while not self._stop.wait(self.renew_every):
                    try:
                        db.apply([], None, [lease.renewal()])
                    except KeyrotateError as e:   # the next beat tries again
                        log.warning("could not renew the lease %s: %s", self.name, e)
            finally:
                try:
                    lease.release()
                except KeyrotateError as e:       # it expires on its own
                    log.warning("could not release the lease %s: %s", self.name, e)
        finally:
            db.close()
