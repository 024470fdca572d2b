"""Health checks: the contract of SPEC §5. A Worker is healthy when its endpoint answers
JSON {"ok": true, "data": {"status": "healthy" | "degraded", ...}}; anything else fails."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Health:
    worker: str
    url: str
    ok: bool
    status: str      # healthy | degraded | unhealthy | unreachable | invalid
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"worker": self.worker, "url": self.url, "ok": self.ok, "status": self.status,
                "detail": self.detail}


def check(worker: str, url: str, timeout: float = 10.0) -> Health:
    try:
        resp = httpx.get(url, timeout=timeout, follow_redirects=False)
    except httpx.HTTPError as e:
        return Health(worker, url, False, "unreachable", type(e).__name__)
    try:
        body = resp.json()
    except ValueError:
        return Health(worker, url, False, "invalid", f"HTTP {resp.status_code}, not JSON")
    data = body.get("data") if isinstance(body, dict) else None
    status = data.get("status") if isinstance(data, dict) else None
    if resp.status_code == 200 and body.get("ok") is True and status in ("healthy", "degraded"):
        return Health(worker, url, True, status)
    return Health(worker, url, False, str(status or "unhealthy"), f"HTTP {resp.status_code}")
