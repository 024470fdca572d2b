"""The closing census of a reencrypt run over a local SQLite file, spread over the crypto
workers: each reads, checks and witnesses key ranges of its own (the pass's pages, in
order, then whatever lies past the last), so the census runs on every core instead of on
the reader's alone. It is the paged census cut at other places: every row of the table is
in exactly one range, each range is read in keyset pages, and the one witness aggregate
at the end (in the main process) proves the ranges visited every row the table holds, as
it does for the paged census (dataplane/verify.py).

Only where a worker can open the database itself (a file, `parallel_reads`), for a census
with a rowid witness, after a pass that saw the table from its first row (its pages are
the ranges, and its digests of each page check that range: vouch.py).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from keyrotate.dataplane import workers
from keyrotate.dataplane.vouch import Vouch, Vouched
from keyrotate.dataplane.workers import CryptoRunner, PageResult, process_page, vouched_part
from keyrotate.db.base import RowStore, Salt, Target, Value
from keyrotate.errors import StoreUnavailable


@dataclass(frozen=True)
class Span:
    """One page of the pass: the last key it reached and how many rows it read."""

    last_key: Value
    rows: int


@dataclass(frozen=True)
class KeyRange:
    """Keys after `after` (unless `first`) up to `upto` included (unless `last`); the
    pass read `rows` rows of it, from its `start`-th row on."""

    after: Value
    first: bool
    upto: Value
    last: bool
    start: int
    rows: int


def key_ranges(spans: Sequence[Span]) -> list[KeyRange]:
    """The pass's pages as ranges that cover every key: the first from the table's
    start, the last past the pass's last key (rows inserted behind it meanwhile)."""
    out, start, after = [], 0, None
    for n, span in enumerate(spans):
        out.append(KeyRange(after, n == 0, span.last_key, False, start, span.rows))
        start, after = start + span.rows, span.last_key
    out.append(KeyRange(after, not spans, None, True, start, 0))
    return out


def usable(store: RowStore, runner: CryptoRunner, rowid: str | None, vouched: Vouched | None,
           spans: Sequence[Span] | None) -> bool:
    return bool(spans and runner.pool is not None and rowid and vouched is not None
                and vouched.offset == 0 and getattr(store, "parallel_reads", False))


def census_in_ranges(store: RowStore, target: Target, runner: CryptoRunner,
                     spans: Sequence[Span], salt: Salt, vouched: Vouched, page_rows: int,
                     page_bytes: int) -> Iterator[PageResult]:
    """One PageResult per range, in key order, a few ranges in flight."""
    url, identity = store.display_url, getattr(store, "identity", None)
    inflight: deque["Future[Any]"] = deque()
    for r in key_ranges(spans):
        vouch = vouched.window(r.start, r.rows) if r.rows else (vouched.key, b"", 0)
        inflight.append(runner.call(range_census, url, identity, target, r, salt, vouch,
                                    page_rows, page_bytes))
        if len(inflight) >= runner.depth:
            yield runner.wait(inflight.popleft())
    while inflight:
        yield runner.wait(inflight.popleft())


_READERS: dict[str, RowStore] = {}


def _reader(url: str, identity: Any) -> RowStore:
    """This worker's own connection to the database (kept for its next range): the very
    file the main process holds, or StoreUnavailable (exit 3): one put in its place
    meanwhile would be censused while the witness counts the other."""
    if url not in _READERS:
        from keyrotate.db.connect import open_database

        _READERS[url] = open_database(url)
    store = _READERS[url]
    if getattr(store, "identity", None) != identity:
        raise StoreUnavailable(f"{url}: the file at that path is no longer the one this run "
                               "opened (replaced while the census read it); run the same "
                               "command again")
    return store


def range_census(url: str, identity: Any, target: Target, r: KeyRange, salt: Salt,
                 vouch: Vouch, page_rows: int, page_bytes: int) -> PageResult:
    """In a worker: one range, page by page, each row checked against the pass's digests
    of that range or opened, every rowid witnessed."""
    codec = workers.worker_codec()
    store = _reader(url, identity)
    total = PageResult()
    after, first = r.after, r.first
    while True:
        rows = store.scan_page(target, after, first, page_rows, page_bytes,  # type: ignore[call-arg]
                               upto=None if r.last else r.upto)
        if not rows:
            return total
        mine, rest = vouched_part(codec.new_kid, rows, salt, vouch)
        total.add(mine)
        if rest:
            total.add(process_page(codec, "census", rest, salt))
        total.last_key, after, first = rows[-1][0], rows[-1][0], False
