"""The census: how many rows open under the key, under an old key, are NULL, or fail.

Reads only. Opens the payload too, not just the DEK: a row is only 'ok' if a Worker
holding the key could actually read it. A census that did not see every row proves
nothing, and counts cannot show it did (a skipped row and a row deleted meanwhile cancel
out): it sums a keyed hash of every rowid it visits and compares the sum with the same
sum over the whole table at the end, taken by one SQL aggregate that pages nothing (the
witness, db/base.py; on D1 it rides in the request of the last page read, after that
read, when the count at the start says that page should end the table). Any difference
makes the census unclean ("unreached"): rows paging missed, or rows inserted or deleted
while it ran; exit 3, run it again. (A delete and an insert that reuses the deleted
rowid is a change of that row, like an update: written behind the census's cursor, it
is not seen. No census sees a row rewritten under the old key after it read it: the
writers must seal under the new key first, README "What no census sees".) A WITHOUT ROWID table has no rowid to witness: it is
paged by its primary key, which is unique and NOT NULL under its own collation by
construction, and only its count is compared: the rows visited, and the count at the
start, must both equal the count at the end.

At the end of a reencrypt run the census reads and witnesses every row just the same, but
a row holding exactly a value that run's pass verified opens under the new key is counted
unopened (`vouched`; the argument is in dataplane/vouch.py): the verdict is a function of
the value alone, and opening it again would only repeat it.

Failed rows are listed by id, the first LISTED of them; `--failed-ids FILE` streams every
failed id to a file (ids are not secret), written atomically when the census ends.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TextIO

from keyrotate.crypto.codecs import Codec
from keyrotate.dataplane.census_ranges import Span, census_in_ranges, usable
from keyrotate.dataplane.outcome import ROWS, Outcome
from keyrotate.dataplane.pipeline import InFlight, Tail, page_results, page_size
from keyrotate.dataplane.vouch import Vouched
from keyrotate.dataplane.workers import CryptoRunner, PageResult, default_workers
from keyrotate.db.base import (
    PAGE_BYTES,
    RowStore,
    Statement,
    Target,
    count_rows,
    display_key,
    new_salt,
    quiet,
    witness_sql,
)
from keyrotate.errors import EXIT_FAILURES, EXIT_INCOMPLETE, Interrupted
from keyrotate.files import atomic_file
from keyrotate.progress import NoProgress, Progress
from keyrotate.results import failure_lines

LISTED = 100


@dataclass
class Census:
    target: str
    key_kid: str = ""
    old_kid: str | None = None
    rows: int = 0
    ok: int = 0
    old: int = 0
    null: int = 0
    failed: int = 0
    unreached: int = 0          # rows in the table that paging did not visit
    witness: str = "counted"    # matched | differs (by rowid witness) | counted (no rowid)
    vouched: int = 0            # rows counted under the key unopened: this run's pass had
                                # verified their very value (dataplane/vouch.py)
    by_kid: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    failures: list[dict[str, str]] = field(default_factory=list)   # the first LISTED
    failed_ids_file: str | None = None   # where every failed id went (--failed-ids)
    visited_witness: int = field(default=0, repr=False)   # sum of h(rowid) visited

    @property
    def clean(self) -> bool:
        """Nothing depends on the old key, nothing is broken, every row was seen."""
        return self.failed == 0 and self.old == 0 and self.unreached == 0

    @property
    def exit_code(self) -> int:
        """1 for rows a key does not open (or the old key does); 3 when the only doubt is
        rows it could not account for: run it again."""
        if self.clean:
            return 0
        return EXIT_FAILURES if self.failed or self.old else EXIT_INCOMPLETE

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "rows": self.rows, "ok": self.ok, "old": self.old,
                "null": self.null, "failed": self.failed, "unreached": self.unreached,
                "witness": self.witness, "vouched": self.vouched, "clean": self.clean,
                "seconds": round(self.seconds, 3), "kid": self.key_kid,
                "old_kid": self.old_kid, "by_kid": self.by_kid, "failures": self.failures,
                "failures_total": self.failed,
                "failures_truncated": len(self.failures) < self.failed,
                "failed_ids_file": self.failed_ids_file}

    def tally(self, page: PageResult) -> None:
        self.rows += page.rows
        self.visited_witness += page.witness
        self.null += page.null
        self.vouched += page.trusted
        self.failed += len(page.failures)
        for kid, n in page.by_kid.items():
            self.by_kid[kid] = self.by_kid.get(kid, 0) + n
            if kid == self.key_kid:
                self.ok += n
            else:
                self.old += n
        for key, reason in page.failures[:LISTED - len(self.failures)]:
            self.failures.append({"id": display_key(key), "reason": reason})

    def text(self) -> str:
        verdict = "clean" if self.clean else "NOT clean"
        lines = [f"{self.target}: {verdict}: {self.rows:,} rows, {self.ok:,} ok (kid {self.key_kid}), "
                 f"{self.old:,} old, {self.null:,} null, {self.failed:,} failed"]
        if self.unreached:
            lines.append(f"  the rows visited are not the rows the table holds at the end "
                         f"({self.unreached:,} or more not visited, or rows inserted or deleted "
                         "meanwhile): run it again")
        if self.failed_ids_file:
            more = f"every failed id is in {self.failed_ids_file}"
        else:
            more = "`--failed-ids FILE` writes every failed id, one per line"
        return "\n".join(lines + failure_lines(self.failures, self.failed, more))

    def outcome(self) -> Outcome:
        return Outcome(self.target, ROWS, total=self.rows, current=self.ok, old=self.old,
                       null=self.null, failed=self.failed, unreached=self.unreached,
                       by_kid=dict(self.by_kid), failures=list(self.failures))


def take_census(store: RowStore, target: Target, codec: Codec, runner: CryptoRunner,
                batch_size: int | None, progress: Progress,
                between_pages: Callable[[], None] = lambda: None,
                failed_ids: TextIO | None = None, rows_hint: int | None = None,
                vouched: Vouched | None = None, spans: Sequence[Span] | None = None) -> Census:
    """A census with a runner the caller owns (reencrypt reuses its worker processes);
    every failed id also goes to `failed_ids`, one per line, if given. `rows_hint`: about
    how many rows to expect (for the progress bar), so a census with a rowid witness
    need not count them first (the witness compares the whole table at the end).
    `vouched`: what this run's pass verified opens under the new key; a row holding
    exactly such a value is counted unopened (every row is still read and witnessed).
    `spans`: the pass's pages, in order: on a file the workers can open, each takes key
    ranges of its own (census_ranges.py)."""
    started = time.monotonic()
    census = Census(target.name, key_kid=codec.new_kid, old_kid=codec.old_kid)
    witnessed = target.with_witness()
    proven_by_witness = witnessed.witnessed and witnessed.rowid is not None
    before = (rows_hint if rows_hint is not None and proven_by_witness
              else count_rows(store, target))
    progress.start(before)
    salt = new_salt() if witnessed.witnessed else None
    witness = (Statement(witness_sql(target.table, witnessed.rowid, salt))
               if salt is not None and witnessed.rowid is not None else None)
    # where every request costs (D1), the witness rides on the page read likely to be the
    # last, after it; its answer counts only if no read came after (else it is read alone)
    tail = (Tail(witness, before) if witness is not None
            and getattr(store, "carries_reads", False) else None)
    budget = InFlight()
    rows, weight = census_page(store, batch_size)
    if salt is not None and vouched is not None and spans is not None and usable(
            store, runner, witnessed.rowid, vouched, spans):
        pages = census_in_ranges(store, witnessed, runner, spans, salt, vouched, rows, weight)
    else:
        pages = page_results(store, witnessed, runner, "census", rows, page_bytes=weight,
                             salt=salt, budget=budget, vouched=vouched, tail=tail)
    for page in pages:
        census.tally(page)
        budget.give(page.bytes)
        if failed_ids is not None:
            failed_ids.writelines(_id_line(key) for key, _ in page.failures)
        progress.advance(page.rows)
        between_pages()
    if witness is not None:
        carried = tail.answer if tail is not None else None
        n, total = (int(v) for v in (carried or store.query(witness.sql))[0])
        if (n, total) == (census.rows, census.visited_witness):
            census.witness = "matched"
        else:
            census.witness, census.unreached = "differs", max(1, n - census.rows)
    else:
        # counts only: any difference is doubt (a row inserted behind the cursor, another
        # deleted after it was visited); equal counts cannot show changes that cancel out
        # (an insert and a delete, two primary keys moved), which only a rowid witness can
        end = count_rows(store, target)
        if end != census.rows or end != before:
            census.unreached = max(1, end - census.rows)
    census.seconds = time.monotonic() - started
    return census


def census_page(store: RowStore, batch_size: int | None) -> tuple[int, int]:
    """Rows and bytes of one census read. Where every request costs (D1), pages twice as
    many rows and two and a half times the bytes of the pass's (5 MB, a tenth of D1's
    50 MB result limit): the census only reads, and its pass wrote each value twice per
    request (the compare-and-swap). The bytes in flight stay bounded (one such page)."""
    if batch_size is None and getattr(store, "carries_reads", False):
        return 2 * store.preferred_batch_size, PAGE_BYTES * 5 // 2
    return page_size(store, batch_size), PAGE_BYTES


def _id_line(key: Any) -> str:
    """One id per line, printable; an id holding a line break is written as a JSON string."""
    text = display_key(key)
    return (json.dumps(text) if "\n" in text or "\r" in text else text) + "\n"


def verify(store: RowStore, target: Target, codec: Codec, batch_size: int | None = None,
           workers: int | None = None, progress: Progress | None = None,
           failed_ids: str | None = None, rows_hint: int | None = None) -> Census:
    """`rows_hint`: about how many rows there are, if known (else counted first): it sizes
    the workers and the progress; a census that can only count counts anyway."""
    progress = progress or NoProgress()
    rows = rows_hint if rows_hint is not None or workers is not None else count_rows(store, target)
    with quiet(store):
        runner = CryptoRunner(codec, workers if workers is not None else default_workers(rows or 0))
    try:   # that count serves the progress too (one request less on D1)
        if failed_ids is None:
            return take_census(store, target, codec, runner, batch_size, progress,
                               rows_hint=rows)
        with atomic_file(failed_ids) as sink:
            census = take_census(store, target, codec, runner, batch_size, progress,
                                 failed_ids=sink, rows_hint=rows)
        census.failed_ids_file = failed_ids
        return census
    except KeyboardInterrupt:
        runner.close(cancel=True)
        raise Interrupted("verify interrupted; nothing was written") from None
    finally:
        runner.close()
        progress.close()
