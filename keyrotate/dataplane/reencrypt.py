"""Streaming re-encryption: keyset pages in, crypto in parallel, CAS batches + checkpoint out.

The pipeline keeps a few pages in flight: while the workers rotate pages k+1 and k+2, the
main process writes page k in one transaction together with its checkpoint. Memory is
bounded by (pages in flight x page size), never by the table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from keyrotate.crypto.codecs import Codec
from keyrotate.dataplane.journal import (
    Counts, Journal, RunIdentity, RunState, rewrap_runs_to, run_failures,
)
from keyrotate.dataplane.pipeline import page_results, page_size
from keyrotate.dataplane.progress import NoProgress, Progress
from keyrotate.dataplane.writer import OrderedWriter
from keyrotate.dataplane.workers import CryptoRunner, PageResult, default_workers, process_page
from keyrotate.errors import EXIT_FAILURES, EXIT_INCOMPLETE, Interrupted
from keyrotate.db.base import CasWrite, RowStore, Statement, Target, Value, count_after, read_rows

CONFLICT_ROUNDS = 3
LISTED_FAILURES = 100


@dataclass(frozen=True)
class ReencryptOptions:
    fmt: str = "tminus-envelope"
    mode: str = "rewrap"
    batch_size: int | None = None  # None: the store's preferred page size
    dry_run: bool = False
    workers: int | None = None  # None: decide by table size


@dataclass
class ReencryptResult:
    run_id: str | None
    status: str
    target: str
    counts: Counts
    seconds: float
    resumed: bool
    dry_run: bool
    rows_unsettled: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.counts.rows_failed:
            return EXIT_FAILURES
        return EXIT_INCOMPLETE if self.rows_unsettled else 0

    def as_dict(self) -> dict[str, Any]:
        rate = self.counts.rows_scanned / self.seconds if self.seconds > 0 else None
        return {"run_id": self.run_id, "status": self.status, "target": self.target,
                **self.counts.as_dict(), "rows_unsettled": self.rows_unsettled,
                "seconds": round(self.seconds, 3),
                "rows_per_second": round(rate) if rate else None,
                "resumed": self.resumed, "dry_run": self.dry_run,
                "failures": self.failures, **self.extra}


def _delta(page: PageResult) -> Counts:
    """Counters for a page, assuming every write lands (misses are corrected after)."""
    return Counts(rows_scanned=page.rows, rows_rewritten=len(page.writes),
                  rows_already_current=page.current, rows_null=page.null,
                  rows_failed=len(page.failures))


class Reencryptor:
    def __init__(self, store: RowStore, target: Target, codec: Codec, options: ReencryptOptions,
                 progress: Progress | None = None):
        self.store, self.target, self.codec, self.opt = store, target, codec, options
        self.progress = progress or NoProgress()
        self.ident = RunIdentity(target, options.fmt, options.mode, codec.old_kid or "-",
                                 codec.new_kid)
        self.journal = None if options.dry_run else Journal(store)
        self.listed: list[dict[str, str]] = []  # dry run only: failures seen
        self.unsettled = 0

    # -- writing -------------------------------------------------------------------------
    def _commit(self, run: RunState, writes: list[CasWrite], delta: Counts,
                fails: list[tuple[Value, str]], last_key: Value | None, seconds: float) -> list[bool]:
        """Row writes and their checkpoint in one transaction; which writes landed."""
        run.counts.add(delta)
        if self.journal is None:
            for key, reason in fails[:LISTED_FAILURES - len(self.listed)]:
                self.listed.append({"id": str(key), "reason": reason})
            return [True] * len(writes)
        stmts: list[Statement] = Journal.checkpoint(run, delta, seconds, last_key, fails)
        return self.store.apply(writes, self.target, stmts)

    def _settle_conflicts(self, run: RunState, missed: list[CasWrite], seconds: float) -> None:
        """Re-read rows the application changed under us and rotate them again."""
        for _ in range(CONFLICT_ROUNDS):
            if not missed:
                return
            page = process_page(self.codec, "rotate",
                                read_rows(self.store, self.target, [w[1] for w in missed]))
            delta = _delta(page)
            delta.rows_scanned = 0  # these rows were counted when first scanned
            delta.rows_conflicted = len(missed)
            delta.rows_rewritten -= len(missed)  # the earlier attempt did not land
            hits = self._commit(run, page.writes, delta, page.failures, None, seconds)
            missed = [w for w, hit in zip(page.writes, hits, strict=True) if not hit]
        if missed:  # still changing: leave them for the next run, correct the counters
            fix = Counts(rows_rewritten=-len(missed), rows_conflicted=len(missed))
            self._commit(run, [], fix, [], None, seconds)
            self.unsettled += len(missed)

    # -- the pipeline --------------------------------------------------------------------
    def warnings(self) -> list[str]:
        if self.opt.mode != "fresh-dek":
            return []
        earlier = rewrap_runs_to(self.store, self.target.name, self.ident.new_kid)
        if not earlier:
            return []
        return [f"run(s) {', '.join(earlier)} rewrapped rows to this same new key: those rows are "
                "already current and keep their old DEKs. After a compromise, rotate to a brand-new "
                "key with --mode fresh-dek."]

    def run(self) -> ReencryptResult:
        started = time.monotonic()
        warnings = self.warnings()
        run = (self.journal.open_run(self.ident) if self.journal
               else RunState("dry-run", self.ident, False))
        first, after = not run.has_cursor, run.last_key
        total = count_after(self.store, self.target, after, first)
        workers = self.opt.workers if self.opt.workers is not None else default_workers(total)
        runner = CryptoRunner(self.codec, "rotate", workers)
        self.progress.start(total)
        base = run.seconds

        def commit_page(page: PageResult) -> None:
            secs = base + (time.monotonic() - started)
            hits = self._commit(run, page.writes, _delta(page), page.failures, page.last_key, secs)
            if not all(hits):
                missed = [w for w, hit in zip(page.writes, hits, strict=True) if not hit]
                self._settle_conflicts(run, missed, secs)
            self.progress.advance(page.rows)

        writer: OrderedWriter[PageResult] = OrderedWriter(commit_page, depth=2)
        try:
            for page in page_results(self.store, self.target, runner, page_size(self.store,
                                     self.opt.batch_size), after, first):
                writer.put(page)
            writer.finish()
        except KeyboardInterrupt:
            writer.abandon()
            runner.close(cancel=True)
            raise Interrupted("interrupted; the checkpoint is committed: run the same "
                              "command again to resume") from None
        except BaseException:
            writer.abandon()
            raise
        finally:
            runner.close()
            self.progress.close()
        seconds = base + (time.monotonic() - started)
        c = run.counts
        status = "completed_with_failures" if c.rows_failed else "completed"
        failures = self.listed
        if self.journal is not None:
            self.store.apply([], None, [
                *Journal.checkpoint(run, Counts(), seconds, None, []),
                Journal.finish(run, status)])
            failures = run_failures(self.store, run.run_id, LISTED_FAILURES) if c.rows_failed else []
        else:
            status = "dry-run"
        return ReencryptResult(
            run_id=None if self.journal is None else run.run_id, status=status,
            target=self.target.name, counts=c, seconds=seconds, resumed=run.resumed,
            dry_run=self.journal is None, rows_unsettled=self.unsettled, failures=failures,
            extra={"format": self.opt.fmt, "mode": self.opt.mode, "old_kid": self.ident.old_kid,
                   "new_kid": self.ident.new_kid, "workers": workers, "warnings": warnings})


def reencrypt(store: RowStore, target: Target, codec: Codec, options: ReencryptOptions,
              progress: Progress | None = None) -> ReencryptResult:
    """Rotate every row of `target` to the codec's new key; resumes an unfinished run."""
    return Reencryptor(store, target, codec, options, progress).run()
