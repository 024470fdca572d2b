"""A lease held for a whole command: the data plane's lease (keyrotate_leases in the
environment's database), on a connection of its own, kept alive by the lease's heartbeat.

`rollover` holds `rollover:<env>` while it runs, `rotate` holds `rotate:<env>:<secret>`: a
second run refuses, naming the holder. `rollback` and `secrets push` hold the rotation
leases of every secret the Workers they change hold: neither runs beside a rotation's
canary or between its pushes. One step can take longer than any fixed lifetime (a
reencrypt of millions of rows): the heartbeat renews the lease meanwhile. A holder killed
with SIGKILL stops beating; the lease module decides when another run may take it over
(by the heartbeat, never by a process id).
"""

from __future__ import annotations

import logging
from contextlib import ExitStack, contextmanager
from types import TracebackType
from typing import Iterable, Iterator

from keyrotate.config.context import Context
from keyrotate.dataplane.lease import Lease
from keyrotate.db.base import RowStore
from keyrotate.db.connect import open_database
from keyrotate.errors import KeyrotateError

log = logging.getLogger("keyrotate.lease")


class HeldLease:
    def __init__(self, ctx: Context, name: str):
        self.ctx, self.name = ctx, name
        self._db: RowStore | None = None
        self._lease: Lease | None = None

    def __enter__(self) -> "HeldLease":
        self.ctx.db   # keyrotate's tables (the lease table among them) exist before the lease
        self._db = open_database(self.ctx.database_url())
        try:
            lease = Lease(self._db, self.name)
            lease.acquire()
            self._lease = lease
        except BaseException:
            self._db.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._db is not None and self._lease is not None
        try:
            if self._lease.lost:
                log.warning("the lease %s was taken over by another run while this one "
                            "stalled", self.name)
            self._lease.release()
        except KeyrotateError as e:       # the next run watches its heartbeat stand still
            log.warning("could not release the lease %s: %s", self.name, e)
        finally:
            self._db.close()


def rotation_lease(ctx: Context, secret: str) -> HeldLease:
    return HeldLease(ctx, f"rotate:{ctx.env.name}:{secret}")


@contextmanager
def rotation_leases(ctx: Context, workers: Iterable[str]) -> Iterator[None]:
    """The leases `rotate` holds, for every secret any of `workers` holds, in name order:
    refused (exit 2, naming the holder) while a rotation of one of them is running."""
    chosen = set(workers)
    names = sorted(n for n in ctx.manifest.secrets if chosen & set(ctx.manifest.workers_holding(n)))
    with ExitStack() as stack:
        for name in names:
            stack.enter_context(rotation_lease(ctx, name))
        yield
