"""Cloudflare's REST API, shared by the D1 row store and the control plane.

Where the API is and how to authenticate follow wrangler: CLOUDFLARE_API_TOKEN, and
CLOUDFLARE_API_BASE_URL to point somewhere else (the test suite's local stand-in).
Facts the client respects (Cloudflare API docs; docs/cloudflare.md):
- errors come as {"success": false, "errors": [{"code", "message"}]};
- the API allows 1,200 requests per 5 minutes per user and answers 429 with
  Retry-After past it: the client paces itself under a sliding-window budget;
- 429, 5xx and dropped connections are worth another try, with backoff.

httpx gives pooled keep-alive connections and precise timeouts; the retry loop is ours
because it must honour Retry-After and the request budget, not just back off.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import threading
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx

from keyrotate.errors import ConfigError, StoreError, StoreUnavailable
from keyrotate.tls import tls_context

log = logging.getLogger("keyrotate.cloudflare")
DEFAULT_API = "https://api.cloudflare.com/client/v4"
BUDGET_REQUESTS, BUDGET_WINDOW = 1_100, 300.0  # under the 1,200 / 5 min API limit
ATTEMPTS = 8

CF_ERRORS = {
    7500: "SQL error",
    10214: "the latest version of the Worker is not deployed",
    10215: "the latest version of the Worker is not deployed",
    10220: "secrets changed since that version (rolling back would restore old secret values)",
}


def api_base() -> str:
    return os.environ.get("CLOUDFLARE_API_BASE_URL", DEFAULT_API).rstrip("/")


def account_id(why: str) -> str:
    account = os.environ.get("CLOUDFLARE_ACCOUNT_ID")
    if not account:
        raise ConfigError(f"CLOUDFLARE_ACCOUNT_ID is not set (needed for {why})")
    return account


def api_token(why: str) -> str:
    token = os.environ.get("CLOUDFLARE_API_TOKEN")
    if not token:
        raise ConfigError(f"CLOUDFLARE_API_TOKEN is not set (needed for {why})")
    return token


class RequestBudget:
    """A sliding window: at most `limit` requests in any `window` seconds, shared by threads."""

    def __init__(self, limit: int = BUDGET_REQUESTS, window: float = BUDGET_WINDOW):
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


# The longest Retry-After keyrotate sleeps through. A server asking for more (a 429 with
# Retry-After: 86400) gets no request until then: the command stops with exit 3 and says
# when to run it again, rather than hang for a day.
MAX_RETRY_AFTER = 120.0


def retry_after(resp: httpx.Response) -> float | None:
    """Seconds the server asks to wait: delta-seconds, or an HTTP-date (RFC 9110 10.2.3)."""
    value = resp.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def wait_too_long(where: str, seconds: float) -> str | None:
    """Why a Retry-After is not slept through (None: it is short enough to wait)."""
    if seconds <= MAX_RETRY_AFTER:
        return None
    until = (datetime.now(timezone.utc) + timedelta(seconds=seconds)).replace(microsecond=0)
    return (f"{where} asked keyrotate to wait {seconds:,.0f} s before its next request "
            f"(HTTP 429, Retry-After), longer than the {MAX_RETRY_AFTER:.0f} s it waits; "
            f"run the same command again after {until.isoformat()}")


class CloudflareClient:
    """Paced, retried calls to the API; every failure names `where`, never the token."""

    def __init__(self, where: str, why: str, budget: RequestBudget | None = None,
                 timeout: float = 35.0):
        self.where = where
        self.base = api_base()
        self.budget = budget or RequestBudget()
        self.requests = 0
        self.http = httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0), verify=tls_context(),
                                 headers={"Authorization": f"Bearer {api_token(why)}"})

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The `result` of one API call (path relative to the API base), retried on 429,
        5xx and dropped connections; StoreError on anything else."""
        resp = self.request(method, path, **kwargs)
        try:
            payload = resp.json()
        except ValueError:
            raise StoreError(f"{self.where}: Cloudflare API answered HTTP {resp.status_code} "
                             "without JSON") from None
        if resp.status_code >= 400 or not payload.get("success", False):
            raise StoreError(f"{self.where}: Cloudflare refused the request: "
                             f"{cf_error_text(payload)}")
        return payload.get("result")

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One API request, paced and retried on 429, 5xx and dropped connections; the
        response as it came (for the few endpoints that do not answer JSON)."""
        delay = 0.5
        for attempt in range(1, ATTEMPTS + 1):
            self.budget.wait_turn()
            self.requests += 1
            try:
                resp = self.http.request(method, self.base + path, **kwargs)
            except (httpx.TransportError, httpx.TimeoutException) as e:
                log.debug("%s: attempt %d: %s", self.where, attempt, type(e).__name__)
                if attempt == ATTEMPTS:
                    raise StoreUnavailable(f"{self.where}: Cloudflare API unreachable after "
                                           f"{ATTEMPTS} attempts ({type(e).__name__})") from None
                time.sleep(delay + random.uniform(0, delay))
                delay = min(delay * 2, 30)
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                log.debug("%s: attempt %d: HTTP %d", self.where, attempt, resp.status_code)
                if attempt == ATTEMPTS:
                    raise StoreUnavailable(f"{self.where}: Cloudflare API kept failing "
                                           f"(HTTP {resp.status_code}) after {ATTEMPTS} attempts")
                wait = retry_after(resp) if resp.status_code == 429 else None
                too_long = wait_too_long(self.where, wait) if wait is not None else None
                if too_long:
                    raise StoreUnavailable(too_long)
                time.sleep(wait if wait is not None else delay + random.uniform(0, delay))
                delay = min(delay * 2, 30)
                continue
            return resp
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.http.close()
