"""`d1://ACCOUNT_ID/DATABASE_ID`: Cloudflare D1 over its REST API.

Facts it is built on (SPEC §5; Cloudflare's D1 and API docs):
- POST /accounts/{a}/d1/database/{id}/query takes {"sql","params"} or
  {"batch": [{"sql","params"}, ...]}; a batch runs as one transaction; each statement's
  result carries meta.changes, which is how a compare-and-swap learns whether it hit.
- at most 100 bound parameters and 100 KB per statement, 30 s per request; BEGIN is
  refused (the batch is the transaction).
- the API allows 1,200 requests per 5 minutes per user; past that it answers 429 with
  Retry-After. keyrotate paces itself under a budget (a sliding window) and carries
  hundreds of rows per request, so a rotation costs a few requests per thousand rows.
- CLOUDFLARE_API_TOKEN authenticates; CLOUDFLARE_API_BASE_URL overrides the API base,
  as wrangler honours it.

httpx gives pooled keep-alive connections and precise timeouts; the retry loop is ours
because it must honour Retry-After and the request budget, not just back off.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import deque
from typing import Any, Sequence
from urllib.parse import urlparse

import httpx

from keyrotate.errors import ConfigError, StoreError
from keyrotate.store.base import (
    CasWrite, ColumnInfo, Statement, Target, Value, cas_sql, columns_from_pragma, quote_ident,
    unique_single_columns_via,
)

DEFAULT_API = "https://api.cloudflare.com/client/v4"
MAX_PARAMS = 100
MAX_STATEMENT_BYTES = 100_000
STATEMENTS_PER_REQUEST = 2_500  # a page of CAS (~1 KB each) plus its checkpoint: one request
BUDGET_REQUESTS, BUDGET_WINDOW = 1_100, 300.0  # under the 1,200 / 5 min API limit
ATTEMPTS = 8

CF_ERRORS = {
    7500: "SQL error",
    10214: "the latest version of the Worker is not deployed",
    10215: "the latest version of the Worker is not deployed",
    10220: "secrets changed since that version (rolling back would restore old secret values)",
}


class RequestBudget:
    """A sliding window: at most `limit` requests in any `window` seconds, shared by threads."""

    def __init__(self, limit: int, window: float):
        self.limit, self.window = limit, window
        self.sent: deque[float] = deque()
        self.lock = threading.Lock()

    def wait_turn(self) -> None:
        while True:
            with self.lock:
                now = time.monotonic()
                while self.sent and now - self.sent[0] >= self.window:
                    self.sent.popleft()
                if len(self.sent) < self.limit:
                    self.sent.append(now)
                    return
                delay = self.window - (now - self.sent[0])
            time.sleep(min(delay, 5.0))


def cf_error_text(body: Any) -> str:
    """Cloudflare's error envelope as one line: codes named, messages kept (they hold no values)."""
    errors = body.get("errors") if isinstance(body, dict) else None
    if not errors:
        return "no error details"
    parts = []
    for e in errors[:3]:
        code = e.get("code")
        label = CF_ERRORS.get(code)
        parts.append(f"{code}" + (f" ({label})" if label else "") + f": {str(e.get('message', ''))[:200]}")
    return "; ".join(parts)


class D1Store:
    def __init__(self, url: str, budget: RequestBudget | None = None):
        parsed = urlparse(url)
        account, database = parsed.netloc, parsed.path.strip("/")
        if not account or not database or "/" in database:
            raise ConfigError(f"bad D1 URL {url!r}: expected d1://ACCOUNT_ID/DATABASE_ID")
        token = os.environ.get("CLOUDFLARE_API_TOKEN")
        if not token:
            raise ConfigError("CLOUDFLARE_API_TOKEN is not set (needed for d1:// databases)")
        base = os.environ.get("CLOUDFLARE_API_BASE_URL", DEFAULT_API).rstrip("/")
        self.display_url = url
        self.endpoint = f"{base}/accounts/{account}/d1/database/{database}/query"
        self.budget = budget or RequestBudget(BUDGET_REQUESTS, BUDGET_WINDOW)
        self.requests = 0
        self.http = httpx.Client(timeout=httpx.Timeout(35.0, connect=10.0),
                                 headers={"Authorization": f"Bearer {token}"})

    # every request spends API budget: fewer, fuller pages
    preferred_batch_size = 2_000

    # -- transport -----------------------------------------------------------------------
    def _post(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """One API call with pacing and retries; the result list (one entry per statement)."""
        delay = 0.5
        for attempt in range(1, ATTEMPTS + 1):
            self.budget.wait_turn()
            self.requests += 1
            try:
                resp = self.http.post(self.endpoint, json=body)
            except (httpx.TransportError, httpx.TimeoutException) as e:
                if attempt == ATTEMPTS:
                    raise StoreError(f"{self.display_url}: D1 API unreachable after {ATTEMPTS} "
                                     f"attempts ({type(e).__name__})") from None
                time.sleep(delay + random.uniform(0, delay))
                delay = min(delay * 2, 30)
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                if attempt == ATTEMPTS:
                    raise StoreError(f"{self.display_url}: D1 API kept failing "
                                     f"(HTTP {resp.status_code}) after {ATTEMPTS} attempts")
                wait = _retry_after(resp) if resp.status_code == 429 else None
                time.sleep(wait if wait is not None else delay + random.uniform(0, delay))
                delay = min(delay * 2, 30)
                continue
            try:
                payload = resp.json()
            except ValueError:
                raise StoreError(f"{self.display_url}: D1 API answered HTTP {resp.status_code} "
                                 "without JSON") from None
            if resp.status_code >= 400 or not payload.get("success", False):
                raise StoreError(f"{self.display_url}: D1 refused the request: {cf_error_text(payload)}")
            return payload.get("result") or []
        raise AssertionError("unreachable")

    # -- the store contract --------------------------------------------------------------
    def columns(self, table: str) -> list[ColumnInfo]:
        return columns_from_pragma(self.query(f"PRAGMA table_info({quote_ident(table)})"))

    def unique_single_columns(self, table: str) -> set[str]:
        return unique_single_columns_via(self, table)

    def query(self, sql: str, params: Sequence[Value] = ()) -> list[tuple[Value, ...]]:
        _check_statement(Statement(sql, tuple(params)))
        result = self._post({"sql": sql, "params": list(params)})
        rows = result[0].get("results", []) if result else []
        return [tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in rows]

    def apply(self, writes: Sequence[CasWrite], target: Target | None,
              statements: Sequence[Statement]) -> list[bool]:
        """CAS writes and journal statements. One request (one transaction) when they fit;
        larger batches are split, CAS chunks first and the journal with the last chunk, so
        a checkpoint never commits before the writes it records."""
        stmts = [Statement(cas_sql(target), tuple(w)) for w in writes]  # type: ignore[arg-type]
        stmts += list(statements)
        for st in stmts:
            _check_statement(st)
        changes: list[int] = []
        for i in range(0, len(stmts), STATEMENTS_PER_REQUEST):
            chunk = stmts[i:i + STATEMENTS_PER_REQUEST]
            result = self._post({"batch": [{"sql": s.sql, "params": list(s.params)} for s in chunk]})
            changes += [int((r.get("meta") or {}).get("changes", 0)) for r in result]
        return [c == 1 for c in changes[:len(writes)]]

    def close(self) -> None:
        self.http.close()


def _check_statement(st: Statement) -> None:
    if len(st.params) > MAX_PARAMS:
        raise StoreError(f"statement has {len(st.params)} parameters; D1 allows {MAX_PARAMS}")
    size = len(st.sql.encode()) + sum(len(str(p).encode()) for p in st.params if p is not None)
    if size > MAX_STATEMENT_BYTES:
        raise StoreError(f"statement is {size} bytes; D1 allows {MAX_STATEMENT_BYTES}")


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return max(0.0, float(resp.headers.get("retry-after", "")))
    except ValueError:
        return None
