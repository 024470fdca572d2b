"""Wire protocol v1 of the Durable Object endpoint (docs/durable-objects.md).

    POST {"v": 1, "op": "ping" | "census" | "rewrap", "ids": [...], "rotation_id": "..."}
    Authorization: Bearer <token>

ping answers {"v": 1, "ok": true, "kid", "previous_kid"}; census and rewrap answer
{"v": 1, "results": [{"id", "status", "kid", "reason"}]}, one per id. 429, 5xx, timeouts
and dropped connections are retried with backoff, honouring Retry-After; 401/403 and
409 "no-previous" stop with exit 2; anything else is an error naming the endpoint and
the status. The token never appears in a message. No key material is ever sent.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

import httpx

from keyrotate.cloudflare_api import retry_after, wait_too_long
from keyrotate.errors import EndpointError, EndpointUnavailable
from keyrotate.tls import tls_context

log = logging.getLogger("keyrotate.objects")
VERSION = 1
STATUSES = ("current", "old", "rewrapped", "conflict", "retry", "missing", "failed")
ATTEMPTS = 8
VERSION_OVERRIDES = "Cloudflare-Workers-Version-Overrides"


@dataclass(frozen=True)
class ObjectResult:
    id: str
    status: str
    kid: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Ping:
    kid: str
    previous_kid: str | None


class Endpoint:
    """One Worker route; thread-safe (a few requests are kept in flight)."""

    def __init__(self, url: str, token: str, timeout: float = 30.0, attempts: int = ATTEMPTS):
        self.url, self.attempts = url, attempts
        self.http = httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0), verify=tls_context(),
                                 headers={"Authorization": f"Bearer {token}"})
        self._lock = threading.Lock()
        self.requests = 0

    def ping(self, version: tuple[str, str] | None = None) -> Ping:
        """The kids of the route's MASTER_KEY and MASTER_KEY_PREVIOUS; `version` (worker,
        version id) asks that version of the Worker, through Cloudflare's
        `Cloudflare-Workers-Version-Overrides` header (any version of the current
        deployment, even at 0%)."""
        headers = None if version is None else {VERSION_OVERRIDES: f'{version[0]}="{version[1]}"'}
        body = self._post({"v": VERSION, "op": "ping"}, headers)
        kid, prev = body.get("kid"), body.get("previous_kid")
        if body.get("ok") is not True or not isinstance(kid, str) or not (
                prev is None or isinstance(prev, str)):
            raise EndpointError(f"{self.url}: ping answered without ok, kid and previous_kid")
        return Ping(kid, prev)

    def census(self, ids: Sequence[str], rotation_id: str | None = None) -> list[ObjectResult]:
        return self._results("census", ids, rotation_id)

    def rewrap(self, ids: Sequence[str], rotation_id: str) -> list[ObjectResult]:
        return self._results("rewrap", ids, rotation_id)

    def close(self) -> None:
        self.http.close()

    # -- transport ---------------------------------------------------------------------
    def _results(self, op: str, ids: Sequence[str], rotation_id: str | None) -> list[ObjectResult]:
        request: dict[str, Any] = {"v": VERSION, "op": op, "ids": list(ids)}
        if rotation_id is not None:
            request["rotation_id"] = rotation_id
        body = self._post(request)
        raw = body.get("results")
        if not isinstance(raw, list) or len(raw) != len(ids):
            raise EndpointError(f"{self.url}: {op} answered {len(raw) if isinstance(raw, list) else 'no'}"
                                f" results for {len(ids)} ids")
        results = [_result(r, self.url) for r in raw]
        if sorted(r.id for r in results) != sorted(ids):
            raise EndpointError(f"{self.url}: {op} answered for other ids than it was sent")
        return results

    def _post(self, request: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
        delay = 0.25
        for attempt in range(1, self.attempts + 1):
            with self._lock:
                self.requests += 1
            try:
                resp = self.http.post(self.url, json=request, headers=headers)
            except (httpx.TransportError, httpx.TimeoutException) as e:
                log.debug("%s: attempt %d: %s", self.url, attempt, type(e).__name__)
                failure = type(e).__name__
                wait = None
            else:
                if resp.status_code == 200:
                    return self._json(resp)
                self._refuse(resp)
                failure, wait = f"HTTP {resp.status_code}", retry_after(resp)
                log.debug("%s: attempt %d: %s", self.url, attempt, failure)
                too_long = wait_too_long(self.url, wait) if wait is not None else None
                if too_long:
                    raise EndpointUnavailable(too_long)
            if attempt == self.attempts:
                raise EndpointUnavailable(f"{self.url} kept failing ({failure}) after "
                                          f"{self.attempts} attempts")
            time.sleep(wait if wait is not None else delay + random.uniform(0, delay))
            delay = min(delay * 2, 15)
        raise AssertionError("unreachable")

    def _refuse(self, resp: httpx.Response) -> None:
        """Answers no retry can change: exit 2 with the endpoint and the status."""
        code = resp.status_code
        if code in (401, 403):
            raise EndpointError(f"{self.url} refused the token (HTTP {code}): check the endpoint's "
                                "token secret in the store and on the Worker")
        if code == 409:
            body = self._json(resp, quiet=True)
            if body.get("error") == "no-previous":
                raise EndpointError(f"{self.url} has no MASTER_KEY_PREVIOUS (HTTP 409 no-previous): "
                                    "push the new key together with the previous one first")
        if code != 429 and code < 500:
            raise EndpointError(f"{self.url} answered HTTP {code}")

    def _json(self, resp: httpx.Response, quiet: bool = False) -> dict[str, Any]:
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("v") != VERSION:
            if quiet:
                return {}
            raise EndpointError(f"{self.url} answered HTTP {resp.status_code} without a "
                                f"protocol v{VERSION} JSON body")
        return body


def _result(raw: Any, url: str) -> ObjectResult:
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) or raw.get("status") not in STATUSES:
        raise EndpointError(f"{url}: a result without an id or with an unknown status")
    kid, reason = raw.get("kid"), raw.get("reason")
    return ObjectResult(raw["id"], raw["status"], kid if isinstance(kid, str) else None,
                        str(reason)[:200] if reason is not None else None)
