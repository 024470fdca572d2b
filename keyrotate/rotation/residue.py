"""`keyrotate keys residue KID`: every place a key still lives after its rotation, and
until when (README, "Keys"):

- the store: each slot and Vault KV version holding it (keyrotate destroys these);
- the Workers: each version that holds it, as keyrotate's pushes made them (Cloudflare can
  roll back to any of a Worker's latest 100 versions); those serving traffic, and a push
  of it never confirmed, first;
- D1 Time Travel (d1:// databases): rows sealed under it stay restorable for 30 days after
  the last one left it on Workers Paid, 7 on Free;
- Durable Objects' point-in-time recovery (SQLite-backed objects): 30 days, likewise;
- incident files that name it (its fingerprint: no key material).

Which versions hold the key is decided from keyrotate's own record of its pushes (as the
rollback guard does); what Cloudflare lists decides which versions exist and serve.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from keyrotate.cloudflare.wrangler import wrangler_for
from keyrotate.config.context import Context
from keyrotate.db.d1 import TIME_TRAVEL_DAYS
from keyrotate.evidence.record import audit_trail
from keyrotate.evidence.worker_log import SecretHistory
from keyrotate.rotation.key_inventory import KnownKey
from keyrotate.rotation.keys import WorkerHistories, holds, secret_names
from keyrotate.timeutil import parse_utc

TIME_TRAVEL_FREE_DAYS = 7
OBJECT_RECOVERY_DAYS = 30
ROLLBACK_VERSIONS = 100
PROOF_STEPS = ("verify", "re-verify")


@dataclass(frozen=True)
class Place:
    kind: str          # store | worker | worker-versions | time-travel | object-history | incident-file
    where: str
    in_reach: bool     # `keys destroy` removes it
    holds: str         # what it holds: the key, rows sealed under it, or only its name
    until: str | None = None   # the date it ages out, where one exists
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def text(self) -> str:
        when = f" until {self.until}" if self.until else ""
        return (f"  [{'in reach' if self.in_reach else 'outside'}] {self.kind}: {self.where}: "
                f"{self.holds}{when}" + (f" ({self.note})" if self.note else ""))


@dataclass
class WorkerVersions:
    """One Worker as Cloudflare lists it, and what keyrotate's pushes left on each version."""

    worker: str
    history: SecretHistory
    versions: list[dict[str, Any]]                  # newest first
    serving: tuple[tuple[str, float], ...]          # the current deployment
    rollback_target: str | None                     # what `keyrotate rollback` would go back to

    def held(self, version_id: str) -> dict[str, str | None] | None:
        """The secrets (fingerprints) this version holds per keyrotate's record, by
        Cloudflare's version number; None when Cloudflare does not list it (nothing can be
        said)."""
        listed = [v for v in self.versions if v.get("id") == version_id]
        return None if not listed else self.history.state_at(int(listed[0].get("number") or 0))

    def unconfirmed(self, k: KnownKey, ctx: Context) -> list[str]:
        """Secrets of pushes of this key that were never confirmed (they may be there)."""
        return [p.secret for p in self.history.pushes if p.state == "intent"
                and holds(k, p.fingerprint, ctx)]

    def number(self, version_id: str) -> int:
        return next((int(v.get("number") or 0) for v in self.versions if v.get("id") == version_id), 0)


def worker_versions(ctx: Context, secret: str, histories: WorkerHistories) -> list[WorkerVersions]:
    out = []
    for w in ctx.manifest.workers_holding(secret) if secret in ctx.manifest.secrets else []:
        full = ctx.worker_name(w)
        deployments = wrangler_for(ctx).deployments(full)
        current = deployments[0] if deployments else None
        earlier = next((d for d in deployments[1:] if current and d.version_id != current.version_id),
                       None)
        out.append(WorkerVersions(full, histories(full), wrangler_for(ctx).versions(full),
                                  current.versions if current else (),
                                  earlier.version_id if earlier else None))
    return out


def names_holding(ctx: Context, k: KnownKey, held: dict[str, str | None] | None) -> list[str]:
    return [n for n in secret_names(ctx, k.key.secret) if held and holds(k, held.get(n), ctx)]


def last_sealed(ctx: Context, k: KnownKey) -> datetime | None:
    """When rows were last proven to have left this key: the latest verify of a rotation
    away from it (None: never proven, or it is still in use)."""
    last = None
    for r in audit_trail(ctx).records("rotation.step"):
        if r.get("secret") == k.key.secret and r.get("step") in PROOF_STEPS \
                and holds(k, r.get("old_fingerprint"), ctx):
            last = parse_utc(r.get("at")) or last
    return last


def _store_places(ctx: Context, k: KnownKey) -> list[Place]:
    out = [Place("store", c.ref, False, "possibly the key", note="a deleted Vault version: it "
                 "cannot be read without undeleting it; destroy it in Vault if it may hold the key")
           for c in ctx.secrets.copies(k.key.secret) if c.value is None]
    for c in k.copies:
        if c.slot in ("current", "pending"):
            out.append(Place("store", c.ref, False, "the key", note=f"in use ({c.slot})"))
        else:
            out.append(Place("store", c.ref, True, "the key", note=c.slot))
    return out


def _worker_places(ctx: Context, k: KnownKey, workers: list[WorkerVersions]) -> list[Place]:
    out = []
    for wv in workers:
        for vid, pct in wv.serving:
            names = names_holding(ctx, k, wv.held(vid))
            if names:
                out.append(Place("worker", f"{wv.worker} version {vid}", False,
                                 f"the key (as {', '.join(names)})",
                                 note=f"serving {pct:g}% of traffic"))
        unconfirmed = wv.unconfirmed(k, ctx)
        if unconfirmed:
            out.append(Place("worker", f"{wv.worker}", False, "possibly the key",
                             note=f"a push of {unconfirmed[0]} was never confirmed"))
        serving = {vid for vid, _ in wv.serving}
        holding = [v for v in wv.versions if v.get("id") not in serving
                   and names_holding(ctx, k, wv.held(str(v.get("id"))))]
        if holding:
            numbers = sorted(int(v.get("number") or 0) for v in holding)
            latest = max((int(v.get("number") or 0) for v in wv.versions), default=0)
            left = ROLLBACK_VERSIONS - (latest - numbers[-1])
            out.append(Place("worker-versions", f"{wv.worker} versions "
                             + ", ".join(f"#{n}" for n in numbers), False, "the key",
                             note=f"Cloudflare can roll back to a Worker's latest "
                                  f"{ROLLBACK_VERSIONS} versions: these leave that window after "
                                  f"{max(left, 0)} more versions of {wv.worker}"))
    return out


def _history_places(ctx: Context, k: KnownKey) -> list[Place]:
    if k.kind != "master-key" or k.key.secret not in ctx.manifest.secrets:
        return []
    in_use = k.in_use is not None or k.state == "active"
    last = None if in_use else last_sealed(ctx, k)

    def until(days: int) -> str | None:
        return (last + timedelta(days=days)).date().isoformat() if last else None

    when = ("while rows are sealed under it, and 30 days after" if in_use else
            "30 days after the last row left it (keyrotate has no record of when)")
    out = []
    if ctx.manifest.columns_of(k.key.secret) and ctx.database_url().startswith("d1://"):
        out.append(Place("time-travel", f"D1 Time Travel of {ctx.env.database}", False,
                         "rows sealed under it", until(TIME_TRAVEL_DAYS),
                         note=(f"Workers Paid keeps {TIME_TRAVEL_DAYS} days; on Free, "
                               f"{TIME_TRAVEL_FREE_DAYS} days: until {until(TIME_TRAVEL_FREE_DAYS)}")
                         if last else when))
    for t in ctx.manifest.objects_of(k.key.secret):
        out.append(Place("object-history", f"{t.object} Durable Objects' point-in-time recovery",
                         False, "envelopes sealed under it", until(OBJECT_RECOVERY_DAYS),
                         note="" if last else when))
    return out


def _incident_places(ctx: Context, k: KnownKey) -> list[Place]:
    folder = ctx.state_dir / "incidents"
    names = [n for n in (k.key.fingerprint, k.key.kid) if n]
    return [Place("incident-file", str(p), False, "its fingerprint (no key material)",
                  note="kept until you delete it")
            for p in sorted(folder.glob("*")) if p.is_file()
            and any(n in p.read_text(encoding="utf-8", errors="replace") for n in names)]


@dataclass(frozen=True)
class ResidueReport:
    env: str
    key: dict[str, Any]
    places: list[Place] = field(default_factory=list)
    exit_code: int = 0

    @property
    def outside(self) -> list[Place]:
        return [p for p in self.places if not p.in_reach]

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.env, "key": self.key, "places": [p.as_dict() for p in self.places]}

    def text(self) -> str:
        head = (f"where {self.key['secret']} key {self.key['key']} ({self.key['state']}) still "
                f"lives in {self.env}:")
        return "\n".join([head, *(p.text() for p in self.places)] if self.places else
                         [head, "  nowhere keyrotate can see"])


def residue(ctx: Context, k: KnownKey, histories: WorkerHistories | None = None,
            workers: list[WorkerVersions] | None = None) -> ResidueReport:
    histories = histories or WorkerHistories(ctx)
    if workers is None:
        workers = worker_versions(ctx, k.key.secret, histories)
    places = (_store_places(ctx, k) + _worker_places(ctx, k, workers) + _history_places(ctx, k)
              + _incident_places(ctx, k))
    key = {"secret": k.key.secret, "key": k.key.id, "kid": k.key.kid,
           "fingerprint": k.key.fingerprint, "state": k.state}
    return ResidueReport(ctx.env.name, key, places)
