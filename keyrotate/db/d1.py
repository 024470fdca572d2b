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
STATEMENTS_PER_REQUEST = 2_500  # a page of CAS (~1 KB each) plus its checkpoint: one request


class D1Store:
    # every request spends API budget: fewer, fuller pages
    preferred_batch_size = 2_000

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
        rows = result[0].get("results", []) if result else []
        return [tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in rows]

    def scan_page(self, target: Target, after: Value, first: bool, limit: int,
                  max_bytes: int) -> list[tuple[Value, Value]]:
        return bounded_scan_page(self, target, after, first, limit, max_bytes)

    def apply(self, writes: Sequence[CasWrite], target: Target | None,
              statements: Sequence[Statement]) -> list[bool]:
        """CAS writes and journal statements. One request (one transaction) when they fit;
        larger batches are split, CAS chunks first and the journal with the last chunk, so
        a checkpoint never commits before the writes it records."""
        stmts = cas_statements(target, writes) + list(statements)
        for st in stmts:
            _check_statement(st)
        changes: list[int] = []
        for i in range(0, len(stmts), STATEMENTS_PER_REQUEST):
            chunk = stmts[i:i + STATEMENTS_PER_REQUEST]
            result = self._post({"batch": [{"sql": s.sql, "params": list(s.params)} for s in chunk]})
            changes += [int((r.get("meta") or {}).get("changes", 0)) for r in result]
        return [c == 1 for c in changes[:len(writes)]]

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


def _check_statement(st: Statement) -> None:
    if len(st.params) > MAX_BOUND_PARAMS:
        raise StoreError(f"statement has {len(st.params)} parameters; D1 allows {MAX_BOUND_PARAMS}")
    size = len(st.sql.encode()) + sum(len(str(p).encode()) for p in st.params if p is not None)
    if size > MAX_STATEMENT_BYTES:
        raise StoreError(f"statement is {size} bytes; D1 allows {MAX_STATEMENT_BYTES}")

