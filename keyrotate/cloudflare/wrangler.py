"""The wrangler CLI, driven through the one subprocess runner.

Secret values only ever travel on wrangler's stdin (`secret put`, `secret bulk` read
it). Worker names are resolved by keyrotate and passed with --name, because
`wrangler rollback --env E` (4.x) targets the unsuffixed Worker (docs/cloudflare.md).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from keyrotate.cloudflare.runner import Completed, run
from keyrotate.cloudflare_api import CF_ERRORS
from keyrotate.config.context import Context
from keyrotate.errors import DeployError, DeployUnavailable

# Worth another try: rate limits, 5xx (wrangler shows Cloudflare's code 10013, "An unknown
# error has occurred", rather than the HTTP status), dropped connections. Every wrangler
# call keyrotate makes is idempotent (put/bulk the same values, deploy, roll back to a
# given version), so a retry cannot do harm.
TRANSIENT = re.compile(r"\b(429|500|502|503|504)\b|\[code: 10013\]|Too Many Requests|"
                       r"Internal Server Error|Bad Gateway|Service Unavailable|ECONNRESET|"
                       r"ETIMEDOUT|fetch failed|socket hang up|timed out", re.I)
RETRY_DELAY = 2.0   # seconds before the second try of a transient failure, doubled after
_CODE = re.compile(r"\[code: (\d+)\]|\"code\":\s*(\d+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


WRANGLER_CONFIGS = ("wrangler.toml", "wrangler.jsonc", "wrangler.json")


def wrangler_config(worker_dir: Path) -> Path | None:
    """The Worker folder's wrangler configuration, if it has one."""
    return next((worker_dir / n for n in WRANGLER_CONFIGS if (worker_dir / n).is_file()), None)


def explain(output: str) -> str:
    """The useful part of wrangler's output: Cloudflare error codes named, ANSI stripped."""
    text = _ANSI.sub("", output)
    codes = {int(a or b) for a, b in _CODE.findall(text)}
    named = [f"Cloudflare error {c}: {CF_ERRORS[c]}" for c in sorted(codes) if c in CF_ERRORS]
    lines = [ln.strip() for ln in text.splitlines() if "ERROR" in ln or "✘" in ln]
    return "; ".join(named + lines[:2]) or text.strip()[-300:]


@dataclass(frozen=True)
class Deployment:
    """One deployment: which versions serve traffic, by percentage (largest first)."""

    id: str
    created_on: str
    versions: tuple[tuple[str, float], ...]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Deployment":
        versions = sorted(((str(v["version_id"]), float(v.get("percentage", 100)))
                           for v in d.get("versions", [])), key=lambda v: -v[1])
        return cls(str(d.get("id", "")), str(d.get("created_on", "")), tuple(versions))

    @property
    def version_id(self) -> str:
        return self.versions[0][0]


@dataclass(frozen=True)
class DeploymentState:
    """Which version is the Worker's latest, what serves its traffic, and each version's
    number (Cloudflare numbers a Worker's versions in the order it made them: versions are
    compared by number, never by a clock)."""

    worker: str
    latest: str | None
    traffic: tuple[tuple[str, float], ...]
    numbers: dict[str, int] = field(default_factory=dict, compare=False)

    @property
    def latest_number(self) -> int:
        return self.numbers.get(self.latest or "", 0)

    def number(self, version_id: str) -> int | None:
        return self.numbers.get(version_id)

    @property
    def serving(self) -> list[str]:
        """Versions that take a share of traffic (percentage > 0)."""
        return [vid for vid, pct in self.traffic if pct > 0]

    @property
    def latest_fully_deployed(self) -> bool:
        return self.latest is not None and list(self.traffic) == [(self.latest, 100.0)]

    @property
    def deployed(self) -> str | None:
        """The version at 100%, if one is."""
        return self.traffic[0][0] if len(self.traffic) == 1 and self.traffic[0][1] == 100.0 else None

    def explain(self) -> str:
        if self.latest_fully_deployed:
            return "its latest version is deployed at 100%"
        serving = ", ".join(f"{vid[:12]} at {pct:g}%" for vid, pct in self.traffic) or "nothing"
        return (f"its latest version {str(self.latest)[:12]} is not the one deployed at 100% "
                f"(serving: {serving})")


@dataclass
class Wrangler:
    argv: tuple[str, ...]
    root: Path
    attempts: int = 3

    def _argv(self) -> list[str]:
        first = self.argv[0]
        if "/" in first and not first.startswith("/"):
            first = str((self.root / first).resolve())  # relative to the manifest
        return [first, *self.argv[1:]]

    def _run(self, args: Sequence[str], what: str, cwd: Path | None = None,
             stdin_secret: str | None = None, redact_values: Sequence[str] = ()) -> Completed:
        delay = RETRY_DELAY
        for attempt in range(1, self.attempts + 1):
            res = run([*self._argv(), *args], cwd=cwd or self.root, stdin_secret=stdin_secret,
                      redact_values=redact_values)
            if res.returncode == 0:
                return res
            output = res.stdout + res.stderr
            transient = TRANSIENT.search(_ANSI.sub("", output))
            if attempt < self.attempts and transient:
                time.sleep(delay)
                delay *= 2
                continue
            if transient:
                raise DeployUnavailable(f"wrangler {what} kept failing: {explain(output)}")
            raise DeployError(f"wrangler {what} failed: {explain(output)}")
        raise AssertionError("unreachable")

    def secret_put(self, worker: str, name: str, value: str) -> None:
        self._run(["secret", "put", name, "--name", worker], f"secret put {name} on {worker}",
                  stdin_secret=value)

    def secret_bulk(self, worker: str, values: dict[str, str]) -> None:
        """Several secrets in one new version (JSON on stdin, never a file)."""
        self._run(["secret", "bulk", "--name", worker], f"secret bulk on {worker}",
                  stdin_secret=json.dumps(values), redact_values=list(values.values()))

    def secret_delete(self, worker: str, name: str) -> None:
        self._run(["secret", "delete", name, "--name", worker], f"secret delete {name} on {worker}")

    def secret_names(self, worker: str) -> list[str]:
        res = self._run(["secret", "list", "--name", worker, "--format", "json"],
                        f"secret list on {worker}")
        return sorted(item["name"] for item in _json_tail(res.stdout))

    def deploy(self, worker_dir: Path, env: str) -> None:
        if wrangler_config(worker_dir) is None:
            raise DeployError(f"no wrangler configuration in {worker_dir}")
        self._run(["deploy", "--env", env], f"deploy in {worker_dir}", cwd=worker_dir)

    def deployments(self, worker: str) -> list["Deployment"]:
        """The Worker's deployments, newest first."""
        res = self._run(["deployments", "list", "--name", worker, "--json"], f"deployments list on {worker}")
        found = [Deployment.from_json(d) for d in _json_tail(res.stdout)]
        return sorted(found, key=lambda d: d.created_on, reverse=True)

    def active_version(self, worker: str) -> str | None:
        deployments = self.deployments(worker)
        return deployments[0].version_id if deployments else None

    def versions(self, worker: str) -> list[dict[str, Any]]:
        """The Worker's versions, newest first."""
        res = self._run(["versions", "list", "--name", worker, "--json"], f"versions list on {worker}")
        return sorted(_json_tail(res.stdout), key=lambda v: -int(v.get("number") or 0))

    def version_created_on(self, worker: str, version_id: str) -> str | None:
        return next((v.get("metadata", {}).get("created_on") for v in self.versions(worker)
                     if v.get("id") == version_id), None)

    def state(self, worker: str) -> "DeploymentState":
        deployments = self.deployments(worker)
        versions = self.versions(worker)
        return DeploymentState(worker, str(versions[0]["id"]) if versions else None,
                               deployments[0].versions if deployments else (),
                               {str(v["id"]): int(v.get("number") or 0) for v in versions})

    def versions_deploy(self, worker: str, traffic: Sequence[tuple[str, float]], message: str) -> None:
        """Route traffic to versions by percentage, in one deployment."""
        specs = [f"{vid}@{pct:g}%" for vid, pct in traffic]
        self._run(["versions", "deploy", *specs, "--name", worker, "--yes", "--message", message],
                  f"versions deploy on {worker}")

    def rollback(self, worker: str, version_id: str, message: str) -> None:
        self._run(["rollback", version_id, "--name", worker, "--yes", "--message", message],
                  f"rollback of {worker}")


def _json_tail(stdout: str) -> Any:
    """wrangler --json prints JSON, sometimes after banner lines: parse from the first [ or {."""
    text = _ANSI.sub("", stdout)
    starts = [i for i in (text.find("["), text.find("{")) if i >= 0]
    if not starts:
        raise DeployError("wrangler printed no JSON")
    try:
        return json.loads(text[min(starts):])
    except ValueError:
        raise DeployError("wrangler printed JSON keyrotate cannot read") from None


def wrangler_for(ctx: Context) -> Wrangler:
    """The manifest's wrangler command, run from the manifest's folder (stateless: each
    call is a fresh handle on the same program)."""
    return Wrangler(ctx.manifest.wrangler, ctx.manifest.root)
