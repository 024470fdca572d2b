"""Health checks (`validate`). A Worker is healthy when its endpoint answers JSON
{"ok": true, "data": {"status": "healthy" | "degraded", ...}}; anything else fails
(the runbook's contract; docs/cloudflare.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from keyrotate.config.context import Context
from keyrotate.errors import EXIT_FAILURES
from keyrotate.tls import tls_context


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


def check(worker: str, url: str, timeout: float = 10.0,
          headers: dict[str, str] | None = None) -> Health:
    try:
        resp = httpx.get(url, timeout=timeout, follow_redirects=False, headers=headers,
                         verify=tls_context())
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


@dataclass(frozen=True)
class ValidateResult:
    env: str
    workers: list[Health]

    @property
    def ok(self) -> bool:
        return all(w.ok for w in self.workers)

    @property
    def failing(self) -> list[str]:
        return [w.worker for w in self.workers if not w.ok]

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else EXIT_FAILURES

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.env, "workers": [w.as_dict() for w in self.workers], "ok": self.ok}

    def text(self) -> str:
        lines = [f"health of {self.env}: {'ok' if self.ok else 'FAILED'}"]
        lines += [f"  {w.worker:<16} {w.status:<12} {w.url} {w.detail}" for w in self.workers]
        return "\n".join(lines)


def validate(ctx: Context, workers: list[str] | None = None) -> ValidateResult:
    """Every Worker with a health URL (or just `workers`)."""
    return ValidateResult(ctx.env.name, [check(w, url) for w, url in ctx.env.health.items()
                                         if workers is None or w in workers])
