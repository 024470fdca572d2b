"""The census that ends a reencrypt run, without paying for every row twice.

The census proves, after the last batch, that every row of the table opens under the
new key (payload included), is NULL, or is one of the failures listed. Opening a row
costs the same as rotating it; this module opens only the rows whose state the pass
does not already prove. The argument, page by page of the pass:

- every row of the page was opened by the pass, payload included (codec.rotate opens the
  payload before it says "already current" or makes a new value), and the verdict is a
  function of the value alone;
- a row the pass rewrote holds a value keyrotate made from an envelope whose payload
  authenticated: the same iv and ciphertext (rewrap) or a fresh seal (fresh-dek), under
  a DEK now wrapped by the new key; compare-and-swap confirmed the write landed;
- so if the key range of the page holds, after the last batch, exactly the (key, value)
  rows the pass left there (read back and compared by a SHA-256 over them, or shown
  untouched wholesale, below), the census's verdict on each row is the pass's, and
  opening them again would only repeat it.

Whatever else the census meets it opens as `verify` does: pages whose digest differs
(the application wrote there meanwhile), pages where a write did not land as planned,
rows before the point a resumed run started from, and rows after the last page.

On an SQLite file nobody else touched during the run (PRAGMA data_version: see
SqliteFileStore.unchanged_since), the table holds exactly what the pass read plus what
it wrote, so no page needs reading back at all. The census still counts the table
before and after, as `verify` does, to find rows paging could not reach.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from keyrotate.crypto.codecs import Codec
from keyrotate.dataplane.digest import page_digest
from keyrotate.dataplane.pipeline import page_size, scan_statement
from keyrotate.dataplane.verify import LISTED, Census
from keyrotate.dataplane.workers import CryptoRunner, PageResult, default_workers
from keyrotate.db.base import (
    PAGE_BYTES,
    RowStore,
    Statement,
    Target,
    Value,
    count_statement,
    range_statement,
    read_many,
)
from keyrotate.errors import Interrupted
from keyrotate.progress import NoProgress, Progress


@dataclass(frozen=True)
class PageProof:
    """What one page of the pass left in its key range (after, last]."""

    after: Value
    first: bool                 # the range starts at the start of the table
    last: Value
    rows: int
    ok: int                     # rewritten or already current: opens under the new key
    null: int
    failed: int
    failures: tuple[tuple[Value, str], ...]   # the first LISTED of them
    digest: bytes | None        # None: a write did not land as planned; open it again
    bytes: int


def page_proof(page: PageResult, landed: bool = True) -> PageProof:
    return PageProof(page.after, page.first, page.last_key, page.rows,
                     len(page.writes) + page.current, page.null, len(page.failures),
                     tuple(page.failures[:LISTED]), page.digest if landed else None, page.bytes)


class PassProof:
    """The pages one pass committed, in key order, and since when it holds."""

    def __init__(self, store: RowStore):
        mark = getattr(store, "change_mark", None)
        self.mark = mark() if mark is not None else None   # before the pass reads anything
        self.start_after: Value = None
        self.start_first = True
        self.pages: list[PageProof] = []

    def starts(self, after: Value, first: bool) -> None:
        """Where this invocation's pass began (a resumed run begins after its cursor)."""
        self.start_after, self.start_first = after, first

    def add(self, page: PageResult, landed: bool) -> None:
        """A committed page; `landed`: every write of it hit, none was retried."""
        self.pages.append(page_proof(page, landed))

    def untouched(self, store: RowStore) -> bool:
        """Nobody but this process wrote to the database since the pass began."""
        since = getattr(store, "unchanged_since", None)
        return self.mark is not None and since is not None and bool(since(self.mark))


def census_read_bytes(store: RowStore, page_bytes: int) -> int:
    """What one census request reads back: a page where requests are cheap; on a store
    where each costs (D1), two pages, about what a write request of the pass carries (a
    compare-and-swap sends each value twice). A page ends a row past its byte budget,
    hence the half page of slack."""
    return page_bytes * 5 // 2 if getattr(store, "carries_reads", False) else page_bytes


@dataclass(frozen=True)
class _Read:
    """One read of the census: a page's range read back, the rows after the pass's last
    page (`tail`: after, first), or (neither) the table's count."""

    page: PageProof | None = None
    tail: tuple[Value, bool] | None = None


def _plan(proof: PassProof, read_bytes: int, pages: list[PageProof] | None = None
          ) -> list[list[_Read]]:
    """The census's reads, one list per request: pages whose values add up to about
    `read_bytes` each, the table's count first, and last the rows after the pass's last
    page and the count again."""
    pages = proof.pages if pages is None else pages
    groups = list(_groups(pages, read_bytes)) or [[]]
    tail = _tail(proof, pages)
    return [[*([_Read()] if n == 0 else []), *(_Read(page=p) for p in group),
             *([_Read(tail=tail), _Read()] if n == len(groups) - 1 else [])]
            for n, group in enumerate(groups)]


def _statement(target: Target, r: _Read, batch_size: int, page_bytes: int) -> Statement:
    if r.page is not None:
        p = r.page
        return range_statement(target, p.after, p.first, p.last, p.rows + 1, p.bytes + 1)
    if r.tail is not None:
        return scan_statement(target, r.tail[0], r.tail[1], batch_size, page_bytes)
    return count_statement(target)


def _perform(store: RowStore, target: Target, reads: list[_Read], batch_size: int,
             page_bytes: int) -> list[list[tuple[Value, ...]]]:
    """The answers to `reads`: in one request where the store takes a batch; off a
    cursor, page by page, where it offers scan_range (an SQLite file: cheaper than the
    whole-result statement)."""
    scan_range = getattr(store, "scan_range", None)
    if scan_range is None:
        return read_many(store, [_statement(target, r, batch_size, page_bytes) for r in reads])
    out: list[list[tuple[Value, ...]]] = []
    for r in reads:
        if r.page is not None:
            p = r.page
            out.append(scan_range(target, p.after, p.first, p.last, p.rows + 1, p.bytes + 1))
        elif r.tail is not None:
            out.append(store.scan_page(target, r.tail[0], r.tail[1], batch_size, page_bytes))
        else:
            out.append([(_count(store, count_statement(target)),)])
    return out


def census_reads(target: Target, proof: PassProof, batch_size: int, page_bytes: int,
                 read_bytes: int, pages: list[PageProof] | None = None) -> list[Statement]:
    """The census's first request, planned before the pass's last page is committed
    (`pages`: the pass's pages, that one included), so it can ride on that commit."""
    return [_statement(target, r, batch_size, page_bytes)
            for r in _plan(proof, read_bytes, pages)[0]]


def proven_census(store: RowStore, target: Target, codec: Codec, runner: CryptoRunner,
                  proof: PassProof, batch_size: int, page_bytes: int, read_bytes: int,
                  progress: Progress, between_pages: Callable[[], None],
                  first_answers: list[list[tuple[Value, ...]]] | None = None) -> Census:
    """The census after the pass that `proof` describes. `read_bytes`: how much one
    request may read back (several pages' ranges go in one request on D1).
    `first_answers`: census_reads' first request, already made (it rode on the pass's
    last write, in the same transaction, after it)."""
    started = time.monotonic()
    census = Census(target.name, key_kid=codec.new_kid, old_kid=codec.old_kid)
    progress.start(sum(p.rows for p in proof.pages))

    def tally(page: PageResult) -> None:
        census.tally(page)
        progress.advance(page.rows)
        between_pages()

    if proof.untouched(store):
        before = _count(store, count_statement(target))
        for page in _resumed(store, target, runner, proof, batch_size, page_bytes):
            tally(page)
        for p in proof.pages:
            tally(_as_result(p, census))
        after = _count(store, count_statement(target))
    else:
        for n, reads in enumerate(_plan(proof, read_bytes)):
            answers = (first_answers if n == 0 and first_answers is not None
                       else _perform(store, target, reads, batch_size, page_bytes))
            if n == 0:
                before, answers = int(answers[0][0][0]), answers[1:]
                for page in _resumed(store, target, runner, proof, batch_size, page_bytes):
                    tally(page)
            group = [r.page for r in reads if r.page is not None]
            for p, rows in zip(group, answers, strict=False):
                pairs = [(r[0], r[1]) for r in rows]
                if p.digest is not None and len(pairs) == p.rows and page_digest(pairs) == p.digest:
                    tally(_as_result(p, census))
                else:   # the application wrote here meanwhile, or a write was retried
                    for page in _opened(store, target, runner, batch_size, page_bytes,
                                        p.after, p.first, p.last):
                        tally(page)
        tail = [(r[0], r[1]) for r in answers[-2]]
        after = int(answers[-1][0][0])
        if tail:   # rows after the pass's last page (written since, or never reached): opened
            tally(runner.submit(tail, "census").result())
            for page in _opened(store, target, runner, batch_size, page_bytes, tail[-1][0],
                                False, None):
                tally(page)
            after = _count(store, count_statement(target))
    census.unreached = max(0, min(before, after) - census.rows)
    census.seconds = time.monotonic() - started
    return census


def _tail(proof: PassProof, pages: list[PageProof]) -> tuple[Value, bool]:
    """Where the rows after the pass begin."""
    return (pages[-1].last, False) if pages else (proof.start_after, proof.start_first)


def _resumed(store: RowStore, target: Target, runner: CryptoRunner, proof: PassProof,
             batch_size: int, page_bytes: int) -> Iterator[PageResult]:
    """The rows behind a resumed run's cursor, which this invocation's pass never saw:
    opened."""
    if not proof.start_first:
        yield from _opened(store, target, runner, batch_size, page_bytes, None, True,
                           proof.start_after)


def _count(store: RowStore, count: Statement) -> int:
    return int(store.query(count.sql, count.params)[0][0])


def _groups(pages: list[PageProof], read_bytes: int) -> Iterator[list[PageProof]]:
    """Consecutive pages whose values add up to about `read_bytes` (at least one)."""
    group: list[PageProof] = []
    size = 0
    for p in pages:
        if group and size + p.bytes > read_bytes:
            yield group
            group, size = [], 0
        group.append(p)
        size += p.bytes
    if group:
        yield group


def _as_result(p: PageProof, census: Census) -> PageResult:
    """The census's verdict on a page the pass proves: the pass's own. Only the first
    LISTED failures are kept, so the count comes from the proof."""
    census.failed += p.failed - len(p.failures)
    return PageResult(rows=p.rows, null=p.null, failures=list(p.failures),
                      by_kid={census.key_kid: p.ok} if p.ok else {})


def _opened(store: RowStore, target: Target, runner: CryptoRunner, batch_size: int,
            page_bytes: int, after: Value, first: bool, upto: Value | None
            ) -> Iterator[PageResult]:
    """Every row of the range (after, upto] (to the end when upto is None) opened,
    page by page, a few pages in flight."""
    inflight: deque[Any] = deque()
    done = False
    while True:
        while not done and len(inflight) < runner.depth:
            if upto is None:
                rows = store.scan_page(target, after, first, batch_size, page_bytes)
            else:
                st = range_statement(target, after, first, upto, batch_size, page_bytes)
                rows = [(r[0], r[1]) for r in store.query(st.sql, st.params)]
            if not rows:
                done = True
                break
            inflight.append(runner.submit(rows, "census"))
            first, after = False, rows[-1][0]
        if not inflight:
            return
        yield inflight.popleft().result()


def recheck(store: RowStore, target: Target, codec: Codec, proof: PassProof,
            batch_size: int | None = None, page_bytes: int = PAGE_BYTES,
            workers: int | None = None, progress: Progress | None = None) -> Census:
    """A census taken now, after a pass that left `proof` (a rotation's verify step after
    its reencrypt step): what verify() says, at the cost of reading the pages back."""
    progress = progress or NoProgress()
    size = page_size(store, batch_size)
    n = workers if workers is not None else default_workers(sum(p.rows for p in proof.pages))
    runner = CryptoRunner(codec, n)
    try:
        return proven_census(store, target, codec, runner, proof, size, page_bytes,
                             census_read_bytes(store, page_bytes), progress, lambda: None)
    except KeyboardInterrupt:
        runner.close(cancel=True)
        raise Interrupted("verify interrupted; nothing was written") from None
    finally:
        runner.close()
        progress.close()
