"""`d1://ACCOUNT_ID/DATABASE_ID`: Cloudflare D1 over its REST API.

Facts it is built on (Cloudflare's D1 and API docs; docs/cloudflare.md):
- POST /accounts/{a}/d1/database/{id}/query takes {"sql","params"} or
  {"batch": [{"sql","params"}, ...]}; a batch runs as one transaction; each statement's
  result carries meta.changes, which is how a compare-and-swap learns whether it hit.
- at most 100 bound parameters and 100 KB per statement, 30 s per request; BEGIN is
  refused (the batch is the transaction).
- Time Travel keeps 30 days of history: GET .../time_travel/bookmark answers
  {"bookmark": "..."} for now; `wrangler d1 time-travel restore NAME --bookmark=B` (by
  database name) or POST .../time_travel/restore?bookmark=B goes back to it.
- every request spends the account's API budget (1,200 requests / 5 minutes), so
  keyrotate carries hundreds of rows per request: a rotation costs a few requests per
  thousand rows. Pacing and retries live in keyrotate.cloudflare_api.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Sequence
from urllib.parse import urlparse

from keyrotate.cloudflare_api import CloudflareClient, RequestBudget
from keyrotate.db.base import (
    MAX_BOUND_PARAMS,
    CasWrite,
    RestorePoint,
    Statement,
    Target,
    Value,
    bounded_scan_page,
    cas_statements,
)
from keyrotate.errors import ConfigError, StoreError

MAX_STATEMENT_BYTES = 100_000
TIME_TRAVEL_DAYS = 30
# A page of CAS writes (one statement per row) plus its journal: one request
STATEMENTS_PER_REQUEST = 5_100


class D1Store:
    # every request spends API budget: fewer, fuller pages (most stop at the page's
    # byte budget first: 2 MB is about 2,900 rows of 700-byte tokens)
    preferred_batch_size = 5_000

    def __init__(self, url: str, budget: RequestBudget | None = None):
        parsed = urlparse(url)
        account, database = parsed.netloc, parsed.path.strip("/")
        if not account or not database or "/" in database:
            raise ConfigError(f"bad D1 URL {url!r}: expected d1://ACCOUNT_ID/DATABASE_ID")
        self.display_url = url
        self.database_path = f"/accounts/{account}/d1/database/{database}"
        self.database_id = database
        self.path = f"{self.database_path}/query"
        self.api = CloudflareClient(url, "d1:// databases", budget)

    @property
    def requests(self) -> int:
        return self.api.requests

    def _post(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """One query request; the result list (one entry per statement)."""
        return self.api.call("POST", self.path, json=body) or []

    # -- the store contract --------------------------------------------------------------
    def query(self, sql: str, params: Sequence[Value] = ()) -> list[tuple[Value, ...]]:
        _check_statement(Statement(sql, tuple(params)))
        result = self._post({"sql": sql, "params": list(params)})
        return _rows(result[0]) if result else []

    def scan_page(self, target: Target, after: Value, first: bool, limit: int,
                  max_bytes: int) -> list[tuple[Value, Value]]:
        return bounded_scan_page(self, target, after, first, limit, max_bytes)

    def apply(self, writes: Sequence[CasWrite], target: Target | None,
              statements: Sequence[Statement]) -> list[bool]:
        """CAS writes and journal statements. One request (one transaction) when they fit;
        larger batches are split, CAS chunks first and the journal with the last chunk, so
        a checkpoint never commits before the writes it records."""
        return self.exchange(writes, target, statements, ())[0]

    # Reads can ride on a write: every request costs API budget, so the pass reads its
    # next page in the request that commits the page before (dataplane.pipeline).
    carries_reads = True

    def exchange(self, writes: Sequence[CasWrite], target: Target | None,
                 statements: Sequence[Statement], reads: Sequence[Statement]
                 ) -> tuple[list[bool], list[list[tuple[Value, ...]]]]:
        """`apply`, and `reads` after the writes in the same transaction (the last request
        when the batch is split): which writes hit, and each read's rows."""
        stmts = cas_statements(target, writes) + list(statements)
        for st in [*stmts, *reads]:
            _check_statement(st)
        changes: list[int] = []
        rows: list[list[tuple[Value, ...]]] = []
        chunks = [stmts[i:i + STATEMENTS_PER_REQUEST]
                  for i in range(0, len(stmts), STATEMENTS_PER_REQUEST)] or [[]]
        for n, chunk in enumerate(chunks):
            carried = list(reads) if n == len(chunks) - 1 else []
            result = self._post({"batch": [{"sql": s.sql, "params": list(s.params)}
                                           for s in [*chunk, *carried]]})
            changes += [int((r.get("meta") or {}).get("changes", 0)) for r in result[:len(chunk)]]
            rows += [_rows(r) for r in result[len(chunk):]]
        return [c == 1 for c in changes[:len(writes)]], rows

    def query_many(self, statements: Sequence[Statement]) -> list[list[tuple[Value, ...]]]:
        """Several reads in one request."""
        if not statements:
            return []
        return self.exchange([], None, [], statements)[1]

    def restore_point(self) -> RestorePoint:
        """The current Time Travel bookmark, and how to restore to it (two requests)."""
        taken = datetime.now(timezone.utc).replace(microsecond=0)
        result = self.api.call("GET", f"{self.database_path}/time_travel/bookmark") or {}
        bookmark = result.get("bookmark") if isinstance(result, dict) else None
        if not isinstance(bookmark, str) or not bookmark:
            raise StoreError(f"{self.display_url}: Time Travel answered no bookmark")
        info = self.api.call("GET", self.database_path) or {}
        name = info.get("name") if isinstance(info, dict) else None
        return RestorePoint(
            bookmark, taken.isoformat(),
            (taken + timedelta(days=TIME_TRAVEL_DAYS)).isoformat(),
            f"wrangler d1 time-travel restore {name or self.database_id} --bookmark={bookmark}")

    def close(self) -> None:
        self.api.close()


def _rows(result: dict[str, Any]) -> list[tuple[Value, ...]]:
    rows = result.get("results") or []
    return [tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in rows]


def _check_statement(st: Statement) -> None:
    if len(st.params) > MAX_BOUND_PARAMS:
        raise StoreError(f"statement has {len(st.params)} parameters; D1 allows {MAX_BOUND_PARAMS}")
    size = len(st.sql.encode()) + sum(len(str(p).encode()) for p in st.params if p is not None)
    if size > MAX_STATEMENT_BYTES:
        raise StoreError(f"statement is {size} bytes; D1 allows {MAX_STATEMENT_BYTES}")

