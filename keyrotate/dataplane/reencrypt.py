"""Streaming re-encryption: keyset pages in, crypto in parallel, CAS batches + checkpoint out,
and a census at the end that proves the result.

The pipeline keeps a few pages in flight: while the workers rotate pages k+1 and k+2, the
main process writes page k in one transaction together with its checkpoint. Memory is
bounded by pages in flight x page size (rows and bytes), never by the table.

Done means done: the run ends with a census of the whole table. It is "completed" (exit
0) only if every row opens under the new key or is NULL, and the census agrees with the
run's counters; rows that open under neither key are listed (exit 1); anything else (a
row under the old key written meanwhile, rows paging did not reach, counters that do not
add up) is "incomplete": exit 3, run the same command again. The census reads every
row, and opens every row but those holding exactly a value this run's pass verified opens
under the new key (dataplane/vouch.py).
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from keyrotate.crypto.codecs import Codec
from keyrotate.dataplane.census_ranges import Span
from keyrotate.dataplane.journal import (
    Counts,
    Journal,
    RunIdentity,
    RunState,
    rewrap_runs_to,
    run_failures,
    unfinished_runs,
)
from keyrotate.dataplane.lease import Lease
from keyrotate.dataplane.outcome import ROWS, Outcome
from keyrotate.dataplane.pipeline import (
    Carrier,
    InFlight,
    page_results,
    page_size,
    scan_statement,
)
from keyrotate.dataplane.verify import Census, take_census
from keyrotate.dataplane.vouch import Vouched
from keyrotate.dataplane.workers import CryptoRunner, PageResult, default_workers, process_page
from keyrotate.dataplane.writer import OrderedWriter
from keyrotate.db.base import (
    PAGE_BYTES,
    CasWrite,
    ReadAhead,
    RowStore,
    Statement,
    Target,
    Value,
    bounded_scan_params,
    bounded_scan_sql,
    count_after,
    count_statement,
    display_key,
    quiet,
    read_rows,
)
from keyrotate.db.own_schema import ensure_journal_schema, journal_exists
from keyrotate.errors import (
    EXIT_FAILURES,
    EXIT_INCOMPLETE,
    ConfigError,
    Interrupted,
    KeyrotateError,
    StoreError,
)
from keyrotate.progress import NoProgress, Progress
from keyrotate.results import failure_lines
from keyrotate.timeutil import now_iso

log = logging.getLogger("keyrotate.reencrypt")
CONFLICT_ROUNDS = 3
LISTED_FAILURES = 100
PROBE_ROWS = 200


@dataclass(frozen=True)
class ReencryptOptions:
    fmt: str = "tminus-envelope"
    mode: str = "rewrap"
    batch_size: int | None = None  # None: the store's preferred page size
    dry_run: bool = False
    workers: int | None = None  # None: decide by table size
    page_bytes: int = PAGE_BYTES
    census: bool = True         # False: the caller takes the census that proves the run
                                # (rotate's verify step, right after): not taken twice


@dataclass
class ReencryptResult:
    run_id: str | None
    status: str          # completed | completed_with_failures | incomplete | dry-run, or
                         # rewritten: every row passed, the census left to the caller
    target: str
    counts: Counts
    seconds: float
    resumed: bool
    dry_run: bool
    rows_unsettled: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    census: Census | None = None          # the final census (not for a dry run)
    problems: list[str] = field(default_factory=list)   # why the run is incomplete
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.status == "incomplete":
            return EXIT_INCOMPLETE
        return EXIT_FAILURES if self.failures or self.counts.rows_failed else 0

    def as_dict(self) -> dict[str, Any]:
        rate = self.counts.rows_scanned / self.seconds if self.seconds > 0 else None
        census = None if self.census is None else {
            k: v for k, v in self.census.as_dict().items() if k not in ("failures", "target")}
        return {"run_id": self.run_id, "status": self.status, "target": self.target,
                **self.counts.as_dict(), "rows_unsettled": self.rows_unsettled,
                "seconds": round(self.seconds, 3),
                "rows_per_second": round(rate) if rate else None,
                "resumed": self.resumed, "dry_run": self.dry_run,
                "failures": self.failures, "census": census, "problems": self.problems,
                **self.extra}

    def text(self) -> str:
        r = self.as_dict()
        lines = [
            f"{'dry run: ' if r['dry_run'] else ''}{r['target']}: {r['status']}"
            + (f" (run {r['run_id']}{', resumed' if r['resumed'] else ''})" if r["run_id"] else ""),
            f"  scanned {r['rows_scanned']:,}  rewritten {r['rows_rewritten']:,}  "
            f"already current {r['rows_already_current']:,}  null {r['rows_null']:,}  "
            f"failed {r['rows_failed']:,}  conflicts {r['rows_conflicted']:,}",
            f"  {r['seconds']:.2f} s"
            + (f", {r['rows_per_second']:,} rows/s" if r["rows_per_second"] else "")
            + f"  (mode {r['mode']}, kid {r['old_kid']} -> {r['new_kid']})",
        ]
        lines += failure_lines(r["failures"], r["rows_failed"])
        lines += [f"  WARNING: {w}" for w in r.get("warnings", [])]
        if r["rows_unsettled"]:
            lines.append(f"  {r['rows_unsettled']} rows kept changing during the run: run again")
        return "\n".join(lines)

    def outcome(self) -> Outcome:
        c = self.counts
        return Outcome(self.target, ROWS, run_id=self.run_id, status=self.status,
                       scanned=c.rows_scanned, rewritten=c.rows_rewritten,
                       already_current=c.rows_already_current, null=c.rows_null,
                       failed=c.rows_failed, conflicted=c.rows_conflicted,
                       unreached=self.rows_unsettled, failures=list(self.failures))


def _delta(page: PageResult) -> Counts:
    """Counters for a page, assuming every write lands (misses are corrected after)."""
    return Counts(rows_scanned=page.rows, rows_rewritten=len(page.writes),
                  rows_already_current=page.current, rows_null=page.null,
                  rows_failed=len(page.failures))


def probe_reads(target: Target, page_bytes: int = PAGE_BYTES) -> list[Statement]:
    """What probe() reads: the first non-NULL rows and the table's count."""
    return [Statement(bounded_scan_sql(target, True, non_null=True),
                      bounded_scan_params(None, True, PROBE_ROWS, page_bytes)),
            count_statement(target)]


def probe(store: RowStore, target: Target, codec: Codec, page_bytes: int = PAGE_BYTES,
          ahead: ReadAhead = ReadAhead()) -> int:
    """Refuse before writing anything when none of the first non-NULL rows opens under
    either key: a wrong --old-key would otherwise fail every row and record each failure.
    NULL rows prove nothing either way, so they are skipped (by the query, however many).
    Returns the table's row count, read with them (one request on D1, or none when they
    rode with the lease's claim: `ahead`)."""
    sample, counted = ahead.read_many(store, probe_reads(target, page_bytes))
    rows = [(r[0], r[1]) for r in sample]
    page = process_page(codec, "rotate", rows)
    if page.rows - page.null and not (page.writes or page.current):
        reason, _ = Counter(r for _, r in page.failures).most_common(1)[0]
        raise ConfigError(f"none of the first {page.rows - page.null} non-NULL rows of "
                          f"{target.name} opens under the keys given ({reason}): a wrong "
                          "--old-key, or the wrong column? Nothing was written.")
    return int(counted[0][0])


def reconcile_unsettled(unsettled: int) -> list[str]:
    return [f"{unsettled} rows kept changing during the run"] if unsettled else []


def reconcile(census: Census, counts: Counts, unsettled: int) -> list[str]:
    """Why the end state does not prove the run (empty: it does)."""
    problems = []
    if census.old:
        problems.append(f"{census.old} rows still open under the old key (written meanwhile?)")
    if census.witness == "differs":
        problems.append(f"the rows the census visited are not the rows {census.target} holds "
                        f"at the end ({census.unreached} or more not visited): paging missed "
                        "rows, or the application inserted or deleted rows during the census")
    elif census.unreached:
        problems.append(f"{census.unreached} rows of the table were not reached by paging "
                        f"on {census.target}'s key")
    problems += reconcile_unsettled(unsettled)
    expected = {"rows": counts.rows_scanned, "under the new key":
                counts.rows_rewritten + counts.rows_already_current,
                "NULL": counts.rows_null, "failed": counts.rows_failed}
    found = {"rows": census.rows, "under the new key": census.ok, "NULL": census.null,
             "failed": census.failed}
    off = [f"{k} {expected[k]} counted, {found[k]} found" for k in expected if expected[k] != found[k]]
    if off:
        problems.append("the census disagrees with the run's counters (" + "; ".join(off)
                        + "): the application changed rows during the run")
    return problems


class Reencryptor:
    def __init__(self, store: RowStore, target: Target, codec: Codec, options: ReencryptOptions,
                 progress: Progress | None = None):
        self.store, self.target, self.codec, self.opt = store, target, codec, options
        self.progress = progress or NoProgress()
        self.ident = RunIdentity(target, options.fmt, options.mode, codec.old_kid or "-",
                                 codec.new_kid, tuple(codec.old_kids))
        self.journal = None if options.dry_run else Journal(store)
        self.lease = None if options.dry_run else Lease(store, target.name)
        self.listed: list[dict[str, str]] = []  # dry run only: failures seen
        self.unsettled = 0
        # on D1 the pass reads its next page in the request that writes the page before
        self.carrier = Carrier(store)
        # counters and the cursor of pages that changed nothing wait for the next
        # checkpoint: a page with no write and no failure commits nothing
        self.unsaved = Counts()
        self.unsaved_key: Value | None = None

    # -- writing -------------------------------------------------------------------------
    def _commit(self, run: RunState, writes: list[CasWrite], delta: Counts,
                fails: list[tuple[Value, str]], last_key: Value | None, seconds: float) -> list[bool]:
        """Row writes and their checkpoint in one transaction, behind the lease's guard;
        which writes landed. A page that changed nothing writes nothing: its counters and
        cursor go with the next checkpoint (a run killed meanwhile reads it again)."""
        run.counts.add(delta)
        if self.journal is None or self.lease is None:
            for key, reason in fails[:LISTED_FAILURES - len(self.listed)]:
                self.listed.append({"id": display_key(key), "reason": reason})
            return [True] * len(writes)
        self.lease.check()
        self.unsaved.add(delta)
        if last_key is not None:
            self.unsaved_key = last_key
        if not writes and not fails:
            return []
        return self._save(run, writes, fails, seconds, [])

    def _save(self, run: RunState, writes: list[CasWrite], fails: list[tuple[Value, str]],
              seconds: float, then: list[Statement]) -> list[bool]:
        """Writes, the checkpoint of everything unsaved, and `then`, in one transaction
        that the lease's guard fails unless this run still holds the lease."""
        assert self.lease is not None
        stmts: list[Statement] = [self.lease.guard(),
                                  *Journal.checkpoint(run, self.unsaved, seconds,
                                                      self.unsaved_key, fails), *then]
        try:
            hits = self.carrier.apply(writes, self.target, stmts)
        except StoreError as e:
            raise self.lease.explain(e) from None
        self.unsaved, self.unsaved_key = Counts(), None
        return hits

    def _settle_conflicts(self, run: RunState, missed: list[CasWrite], seconds: float) -> None:
        """Re-read rows whose compare-and-swap missed. A row holding exactly the value we
        wrote did land (a batch replayed after a lost answer misses its own writes); the
        others were changed by the application: rotate them again. A row the application
        deleted leaves nothing to prove: it leaves the counters too, so they still agree
        with the census."""
        for _ in range(CONFLICT_ROUNDS):
            if not missed:
                return
            wrote = {w[1]: w[0] for w in missed}
            now = read_rows(self.store, self.target, list(wrote))
            changed = [(k, v) for k, v in now if v != wrote[k]]
            page = process_page(self.codec, "rotate", changed)
            delta = _delta(page)
            not_landed = len(missed) - (len(now) - len(changed))  # changed or deleted
            delta.rows_scanned = len(now) - len(missed)  # counted when first scanned; minus deleted
            delta.rows_conflicted = not_landed
            delta.rows_rewritten -= not_landed
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
        """Lease, then which run (a refusal writes nothing), then the probe, then the work."""
        if self.journal is None or self.lease is None:
            if journal_exists(self.store):   # a dry run is refused as the real run would be
                Journal(self.store).plan_run(self.ident, create=False)
            rows = probe(self.store, self.target, self.codec, self.opt.page_bytes)
            return self._run(RunState("dry-run", self.ident, False), rows)
        ensure_journal_schema(self.store)
        ahead = self.lease.acquire([unfinished_runs(self.target),
                                    *probe_reads(self.target, self.opt.page_bytes)])
        log.debug("lease on %s taken by %s", self.target.name, self.lease.holder)
        try:
            plan = self.journal.plan_run(self.ident, ahead=ahead)
            log.debug("run plan for %s: %s; retiring %s", self.target.name,
                      f"resume {plan.resume}" if plan.resume else "a new run",
                      [u.run_id for u in plan.supersede] or "nothing")
            rows = probe(self.store, self.target, self.codec, self.opt.page_bytes, ahead)
            first_page = scan_statement(self.target, None, True,
                                        page_size(self.store, self.opt.batch_size),
                                        self.opt.page_bytes)
            return self._run(self.journal.start_run(self.ident, plan, [first_page]), rows)
        finally:
            self._give_back(failing=sys.exc_info()[1] is not None)

    def _give_back(self, failing: bool) -> None:
        """The lease, if the run's end did not give it back already. If that fails too
        while the run is `failing` (the database is what failed), the error that stopped
        the run is the one told: the next run takes the lease over once its heartbeat
        stands still."""
        assert self.lease is not None
        try:
            self.lease.release()
        except KeyrotateError as e:
            if not failing:
                raise
            log.warning("could not give back the lease on %s: %s", self.target.name, e)

    def _ended(self, run: RunState, status: str, at: str, seconds: float) -> bool:
        """Whether this run's end committed though its request failed: on D1 a lost answer
        is sent again, and the replay meets the lease already given back. Its own end,
        not that of a run that took the lease over and finished the same run."""
        assert self.journal is not None
        try:
            return self.journal.finished_as(run) == (status, at, seconds)
        except StoreError:
            return False

    def _run(self, run: RunState, rows: int) -> ReencryptResult:
        """`rows`: the table's rows, counted by the probe a moment ago."""
        started = time.monotonic()
        warnings = self.warnings()
        first, after = not run.has_cursor, run.last_key
        total = rows if first else count_after(self.store, self.target, after, first)
        workers = self.opt.workers if self.opt.workers is not None else default_workers(total)
        with quiet(self.store):   # the lease's heartbeat is not committing as it forks
            runner = CryptoRunner(self.codec, workers)
        self.progress.start(total)
        base = run.seconds
        # what the pass verifies opens under the new key, for this run's census only; a
        # resumed run's earlier rows (before the cursor) are opened by it
        vouched = (Vouched(offset=run.counts.rows_scanned) if self.journal is not None
                   and self.opt.census else None)

        def commit_pages(pages: list[PageResult]) -> None:
            """Pages the writer has in hand, in order: one transaction, one checkpoint."""
            try:
                secs = base + (time.monotonic() - started)
                delta = Counts()
                for page in pages:
                    delta.add(_delta(page))
                hits = self._commit(run, [w for p in pages for w in p.writes], delta,
                                    [f for p in pages for f in p.failures], pages[-1].last_key,
                                    secs)
                missed = [w for w, hit in zip([w for p in pages for w in p.writes], hits,
                                              strict=True) if not hit]
                if missed:
                    self._settle_conflicts(run, missed, secs)
                self.carrier.page_done()
            except BaseException as e:
                self.carrier.fail(e)
                raise
            for page in pages:
                self.progress.advance(page.rows)

        budget = InFlight()
        # with worker processes the timing is theirs anyway: a writer that falls behind
        # commits the pages waiting together (inline, every page is its own commit), unless
        # an application writes to the file too: then every page gets its own commit, and
        # the application its turn at the write lock between them
        gather = 3 if runner.pool is not None else 1
        writer: OrderedWriter[PageResult] = OrderedWriter(
            commit_pages, depth=2, release=lambda page: budget.give(page.bytes),
            gather=lambda: 1 if getattr(self.store, "contended", False) else gather)
        census = None
        spans: list[Span] = []   # the pass's pages: the census's ranges (census_ranges.py)
        try:
            for page in page_results(self.store, self.target, runner, "rotate",
                                     page_size(self.store, self.opt.batch_size), after, first,
                                     self.opt.page_bytes, budget=budget,
                                     carrier=self.carrier, vouched=vouched, ahead=run.ahead):
                spans.append(Span(page.last_key, page.rows))
                writer.put(page)
                del page
            writer.finish()
            self.progress.close()
            if self.journal is not None and self.lease is not None and self.opt.census:
                census = take_census(self.store, self.target, self.codec, runner,
                                     self.opt.batch_size, self.progress, self.lease.check,
                                     rows_hint=run.counts.rows_scanned, vouched=vouched,
                                     spans=spans)
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
            if vouched is not None:
                vouched.close()
        seconds = base + (time.monotonic() - started)
        c = run.counts
        extra = {"format": self.opt.fmt, "mode": self.opt.mode, "old_kid": self.ident.old_kid,
                 "new_kid": self.ident.new_kid, "workers": workers, "warnings": warnings,
                 "superseded": run.superseded}
        if self.journal is None:
            return ReencryptResult(None, "dry-run", self.target.name, c, seconds, False, True,
                                   self.unsettled, self.listed, extra=extra)
        if census is None:   # the caller's census is the proof
            problems = reconcile_unsettled(self.unsettled)
            status = "incomplete" if problems else "rewritten"
            failures = (run_failures(self.store, run.run_id, LISTED_FAILURES)
                        if c.rows_failed else [])   # recorded with the counts that count them
        else:
            problems = reconcile(census, c, self.unsettled)
            log.debug("census of %s: %d rows, %d ok, %d old, %d null, %d failed, %d unreached",
                      self.target.name, census.rows, census.ok, census.old, census.null,
                      census.failed, census.unreached)
            status = ("incomplete" if problems else
                      "completed_with_failures" if census.failed else "completed")
            failures = census.failures
        assert self.lease is not None
        # the last checkpoint, the verdict and the lease given back: one transaction
        self.lease.stop_heartbeat()
        at = now_iso()
        try:
            self.store.apply([], None, [self.lease.guard(),
                                        *Journal.checkpoint(run, self.unsaved, seconds,
                                                            self.unsaved_key, []),
                                        Journal.finish(run, status, at), self.lease.releasing()])
        except StoreError as e:
            if not self._ended(run, status, at, seconds):
                raise self.lease.explain(e) from None
        self.lease.released = True
        self.unsaved, self.unsaved_key = Counts(), None
        return ReencryptResult(run.run_id, status, self.target.name, c, seconds, run.resumed,
                               False, self.unsettled, failures, census, problems, extra)


def reencrypt(store: RowStore, target: Target, codec: Codec, options: ReencryptOptions,
              progress: Progress | None = None) -> ReencryptResult:
    """Rotate every row of `target` to the codec's new key; resumes an unfinished run."""
    return Reencryptor(store, target, codec, options, progress).run()
