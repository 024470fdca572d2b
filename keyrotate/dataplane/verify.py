"""The census: how many rows open under the key, under an old key, are NULL, or fail.

Reads only. Opens the payload too, not just the DEK: a row is only 'ok' if a Worker
holding the key could actually read it. It also counts the table's rows before and after
and reports any that paging did not reach: a census that did not see every row proves
nothing.

Failed rows are listed by id, the first LISTED of them; `--failed-ids FILE` streams every
failed id to a file (ids are not secret), written atomically when the census ends.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

from keyrotate.crypto.codecs import Codec
from keyrotate.dataplane.outcome import ROWS, Outcome
from keyrotate.dataplane.pipeline import page_results, page_size
from keyrotate.dataplane.workers import CryptoRunner, PageResult, default_workers
from keyrotate.db.base import RowStore, Target, count_rows
from keyrotate.errors import EXIT_FAILURES, Interrupted
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
    by_kid: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    failures: list[dict[str, str]] = field(default_factory=list)   # the first LISTED
    failed_ids_file: str | None = None   # where every failed id went (--failed-ids)

    @property
    def clean(self) -> bool:
        """Nothing depends on the old key, nothing is broken, every row was seen."""
        return self.failed == 0 and self.old == 0 and self.unreached == 0

    @property
    def exit_code(self) -> int:
        return 0 if self.clean else EXIT_FAILURES

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "rows": self.rows, "ok": self.ok, "old": self.old,
                "null": self.null, "failed": self.failed, "unreached": self.unreached,
                "clean": self.clean, "seconds": round(self.seconds, 3), "kid": self.key_kid,
                "old_kid": self.old_kid, "by_kid": self.by_kid, "failures": self.failures,
                "failures_total": self.failed,
                "failures_truncated": len(self.failures) < self.failed,
                "failed_ids_file": self.failed_ids_file}

    def tally(self, page: PageResult) -> None:
        self.rows += page.rows
        self.null += page.null
        self.failed += len(page.failures)
        for kid, n in page.by_kid.items():
            self.by_kid[kid] = self.by_kid.get(kid, 0) + n
            if kid == self.key_kid:
                self.ok += n
            else:
                self.old += n
        for key, reason in page.failures[:LISTED - len(self.failures)]:
            self.failures.append({"id": str(key), "reason": reason})

    def text(self) -> str:
        verdict = "clean" if self.clean else "NOT clean"
        lines = [f"{self.target}: {verdict}: {self.rows:,} rows, {self.ok:,} ok (kid {self.key_kid}), "
                 f"{self.old:,} old, {self.null:,} null, {self.failed:,} failed"]
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
                failed_ids: TextIO | None = None) -> Census:
    """A census with a runner the caller owns (reencrypt reuses its worker processes);
    every failed id also goes to `failed_ids`, one per line, if given."""
    started = time.monotonic()
    census = Census(target.name, key_kid=codec.new_kid, old_kid=codec.old_kid)
    before = count_rows(store, target)
    progress.start(before)
    for page in page_results(store, target, runner, "census", page_size(store, batch_size)):
        census.tally(page)
        if failed_ids is not None:
            failed_ids.writelines(_id_line(key) for key, _ in page.failures)
        progress.advance(page.rows)
        between_pages()
    census.unreached = max(0, min(before, count_rows(store, target)) - census.rows)
    census.seconds = time.monotonic() - started
    return census


def _id_line(key: Any) -> str:
    """One id per line; an id holding a line break is written as a JSON string."""
    text = str(key)
    return (json.dumps(text) if "\n" in text or "\r" in text else text) + "\n"


def verify(store: RowStore, target: Target, codec: Codec, batch_size: int | None = None,
           workers: int | None = None, progress: Progress | None = None,
           failed_ids: str | None = None) -> Census:
    progress = progress or NoProgress()
    n = workers if workers is not None else default_workers(count_rows(store, target))
    runner = CryptoRunner(codec, n)
    try:
        if failed_ids is None:
            return take_census(store, target, codec, runner, batch_size, progress)
        with atomic_file(failed_ids) as sink:
            census = take_census(store, target, codec, runner, batch_size, progress,
                                 failed_ids=sink)
        census.failed_ids_file = failed_ids
        return census
    except KeyboardInterrupt:
        runner.close(cancel=True)
        raise Interrupted("verify interrupted; nothing was written") from None
    finally:
        runner.close()
        progress.close()
