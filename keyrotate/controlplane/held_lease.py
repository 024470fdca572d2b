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
from typing import Iterable, Iterator, Sequence

from keyrotate.config.context import Context
from keyrotate.dataplane.lease import Lease
from keyrotate.db.base import ReadAhead, RowStore, Statement
from keyrotate.db.connect import open_database
from keyrotate.errors import KeyrotateError, StoreError

log = logging.getLogger("keyrotate.lease")


class HeldLease:
    """`reads`: read in the claim's request (D1: no request of their own), after the
    lease is held; their answers are `ahead` (empty when the claim was contended)."""

    def __init__(self, ctx: Context, name: str, reads: Sequence[Statement] = ()):
        self.ctx, self.name, self.reads = ctx, name, list(reads)
        self._db: RowStore | None = None
        self._lease: Lease | None = None
        self.ahead = ReadAhead()

    def __enter__(self) -> "HeldLease":
        self.ctx.db   # keyrotate's tables (the lease table among them) exist before the lease
        self._db = open_database(self.ctx.database_url())
        try:
            lease = Lease(self._db, self.name)
            self.ahead = lease.acquire(self.reads)
            self._lease = lease
        except BaseException:
            self._db.close()
            raise
        return self

    def give_back_with(self) -> list[Statement]:
        """The lease given back in the caller's last transaction (one request less on
        D1), behind its guard: if another run took the lease over meanwhile (the heartbeat
        stops now, and a slow commit could outlast it), that transaction fails
        (`explain`). Call `given_back` once it committed, or leaving gives it back."""
        assert self._lease is not None
        self._lease.stop_heartbeat()
        return [self._lease.guard(), self._lease.releasing()]

    def given_back(self) -> None:
        assert self._lease is not None
        self._lease.released = True

    def explain(self, error: StoreError) -> KeyrotateError:
        """A transaction carrying give_back_with failed: LeaseLost if the lease is gone."""
        assert self._lease is not None
        return self._lease.explain(error)

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


def rotation_lease(ctx: Context, secret: str, reads: Sequence[Statement] = ()) -> HeldLease:
    return HeldLease(ctx, f"rotate:{ctx.env.name}:{secret}", reads)


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
