"""`keyrotate keys destroy KID`: destroy every copy of a retired key in the stores keyrotate
controls (Vault `destroy` of each KV version holding it; the NAME_PREVIOUS entry of a .env
file or the keyring), record `destroyed` in the trail with what was destroyed where and
what remains outside keyrotate's reach (and until when), and report that.

It refuses (exit 2, naming each blocker) while the key is still needed:
- any row or Durable Object opens under it, or could not be checked (a census of every
  [[encrypted]] target): never destroyed then, not even with `--force` (no key a row is
  sealed under ever leaves the store);
and, unless `--force`, while
- any Worker version serving traffic holds it (as keyrotate's pushes made that version);
- the version `keyrotate rollback` would go back to seals under it (rolling back would
  write rows under a key no store holds);
- a push of it was never confirmed (it may be on a Worker).
It never destroys a key the store uses (the current or a pending value), nor the audit key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from keyrotate.config.context import Context
from keyrotate.dataplane.outcome import OBJECTS
from keyrotate.errors import EXIT_USAGE, ConfigError, SecretStoreError
from keyrotate.evidence.lifecycle import key_state_event
from keyrotate.evidence.record import Evidence
from keyrotate.progress import Say
from keyrotate.rotation.key_inventory import KnownKey, find
from keyrotate.rotation.keys import WorkerHistories, holds
from keyrotate.rotation.residue import (
    Place,
    WorkerVersions,
    names_holding,
    residue,
    worker_versions,
)
from keyrotate.secrets.audit_key import AUDIT_KEY
from keyrotate.secrets.base import same_value
from keyrotate.targets.secret_targets import KeyRefs, SecretTargets


def census_blockers(ctx: Context, k: KnownKey) -> list[str]:
    """Rows and objects that open under the key, or that could not be checked."""
    if k.kind != "master-key" or not ctx.manifest.targets_of(k.key.secret) or not k.copies:
        return []
    readable = [c.ref for c in k.copies if c.slot in ("previous", "earlier version")]
    if not readable:
        return [f"no store slot reads it back for a census ({', '.join(c.ref for c in k.copies)})"]
    refs = KeyRefs(ctx.secrets.ref(k.key.secret), readable[0])
    out = []
    for target in SecretTargets(ctx, k.key.secret, refs):
        c = target.census()
        kid = k.key.kid if c.unit == OBJECTS else target.key_ids()[1]
        if c.by_kid.get(str(kid)):
            out.append(f"{c.by_kid[str(kid)]} {c.unit} of {target.name} open under it")
        if c.unreached or c.stale:
            out.append(f"{c.unreached + c.stale} {c.unit} of {target.name} could not be checked")
    return out


def sealing_workers(ctx: Context, k: KnownKey, workers: list[WorkerVersions]) -> list[str]:
    """Serving versions that hold the key as the secret itself: they seal new rows under it
    now, so it is never destroyed while they serve, --force or not."""
    return [f"{wv.worker} version {vid}, serving {pct:g}% of traffic, seals new rows under it "
            f"(as {k.key.secret})"
            for wv in workers for vid, pct in wv.serving
            if k.key.secret in names_holding(ctx, k, wv.held(vid))]


def worker_blockers(ctx: Context, k: KnownKey, workers: list[WorkerVersions]) -> list[str]:
    """What --force may go past: versions that only read the key (as PREVIOUS), versions
    whose secrets cannot be told, a rollback target holding it, unconfirmed pushes."""
    out = []
    for wv in workers:
        for vid, pct in wv.serving:
            held = wv.held(vid)
            reading = [n for n in names_holding(ctx, k, held) if n != k.key.secret]
            if held is None:
                out.append(f"{wv.worker} serves version {vid} ({pct:g}%), which Cloudflare does "
                           "not list: what it holds cannot be told")
            elif reading:
                out.append(f"{wv.worker} version {vid}, serving {pct:g}% of traffic, holds it "
                           f"(as {', '.join(reading)})")
        target = wv.rollback_target
        if target is not None and holds(k, (wv.held(target) or {}).get(k.key.secret), ctx):
            out.append(f"{wv.worker}'s rollback target, version {target}, seals under it "
                       f"(as {k.key.secret}): rolling back would write rows no store can open")
        if wv.unconfirmed(k, ctx):
            out.append(f"a push of it to {wv.worker} was never confirmed (it may be there)")
    return out


@dataclass(frozen=True)
class DestroyResult:
    env: str
    key: dict[str, Any]
    done: bool
    destroyed: list[str] = field(default_factory=list)   # done: what was destroyed; else the plan
    forced: list[str] = field(default_factory=list)      # blockers --force went past
    remains: list[Place] = field(default_factory=list)   # outside keyrotate's reach

    @property
    def exit_code(self) -> int:
        return 0 if self.done else EXIT_USAGE

    def as_dict(self) -> dict[str, Any]:
        out = {"env": self.env, "key": self.key, "done": self.done,
               ("destroyed" if self.done else "would_destroy"): self.destroyed,
               "forced": self.forced, "remains": [p.as_dict() for p in self.remains]}
        return out if self.done else {**out, "note": "nothing destroyed: re-run with --yes"}

    def text(self) -> str:
        k = self.key
        lines = [f"{'destroyed' if self.done else 'would destroy (nothing changed; add --yes)'} "
                 f"{k['secret']} key {k['key']} in {self.env}:"]
        lines += [f"  {ref}" for ref in self.destroyed] or ["  (no copy in the store)"]
        if self.forced:
            lines.append("forced past: " + "; ".join(self.forced))
        if self.remains:
            lines.append("remains outside keyrotate's reach:")
            lines += [p.text() for p in self.remains]
        return "\n".join(lines)


def destroy_key(ctx: Context, kid: str, yes: bool, force: bool, say: Say) -> DestroyResult:
    k = find(ctx, kid)
    what = f"{k.key.secret} key {k.key.id}"
    if k.key.secret == AUDIT_KEY:
        raise ConfigError(f"{what} is the audit key: it authenticates the trail, and keyrotate "
                          "never destroys it")
    if k.in_use:
        slot = "current" if k.in_use == "current" else "pending"
        raise ConfigError(f"{what} is the {slot} value of {k.key.secret} "
                          f"({ctx.secrets.ref(k.key.secret, slot)}): rotate it first; "
                          "nothing was destroyed")
    histories = WorkerHistories(ctx)
    workers = worker_versions(ctx, k.key.secret, histories)
    say(f"checking that nothing needs {what} any more (a census of its targets, the Workers)")
    sealed = census_blockers(ctx, k) + sealing_workers(ctx, k, workers)
    if sealed:
        raise ConfigError(f"refusing to destroy {what}: " + "; ".join(sealed) + ". Nothing was "
                          "destroyed, --force or not: rows sealed under a key stay readable "
                          "(rotate them to the current key first; keyrotate status shows where).")
    blockers = worker_blockers(ctx, k, workers)
    if blockers and not force:
        raise ConfigError(f"refusing to destroy {what}: " + "; ".join(blockers) + ". Nothing was "
                          "destroyed (--force destroys it anyway: whatever is sealed under it is "
                          "then lost for good).")
    before = residue(ctx, k, histories, workers)
    if not yes:
        return DestroyResult(ctx.env.name, before.key, False, [c.ref for c in k.copies],
                             blockers, before.outside)
    destroyed = ctx.secrets.destroy(k.key.secret, k.value) if k.value is not None else []
    left = [c.ref for c in ctx.secrets.copies(k.key.secret)
            if c.value is not None and k.value is not None and same_value(c.value, k.value)]
    if left:
        raise SecretStoreError(f"{what} is still in {', '.join(left)} after destroying it")
    k.copies = []
    after = residue(ctx, k, histories, workers)
    evidence = Evidence(ctx)
    try:
        evidence.record(key_state_event(
            ctx.env.name, k.key, "destroyed", why=f"keys destroy ({len(destroyed)} in the store)",
            destroyed=destroyed, forced=blockers, remains=[p.as_dict() for p in after.outside]))
    finally:
        evidence.close()
    return DestroyResult(ctx.env.name, {**after.key, "state": "destroyed"}, True, destroyed,
                         blockers, after.outside)
