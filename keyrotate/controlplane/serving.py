"""Which keys each serving version of a Worker reads, decided from Cloudflare.

Where a Worker exposes keyrotate's route (`key_routes` in the environment; the route's
`ping` answers the kids of its MASTER_KEY and MASTER_KEY_PREVIOUS), keyrotate asks each
version of the current deployment itself, through `Cloudflare-Workers-Version-Overrides`
(which reaches any version in the current deployment, even at 0%). Where it does not,
keyrotate knows a version's keys only from the pushes it recorded (by version number);
that is said wherever it matters.

The invariant every control-plane command keeps, and checks here:
1. every version that serves traffic opens every row and object with its MASTER_KEY or
   MASTER_KEY_PREVIOUS;
2. two versions that split traffic each open what the other seals (each one's MASTER_KEY
   is among the other's two keys);
3. no key any row or object is sealed under leaves the secret store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from keyrotate.cloudflare.wrangler import DeploymentState, wrangler_for
from keyrotate.config.context import Context
from keyrotate.crypto.keys import MasterKey
from keyrotate.dataplane.objects.wire import Endpoint
from keyrotate.errors import ConfigError, DeployError
from keyrotate.secrets.base import SLOTS
from keyrotate.secrets.refs import required
from keyrotate.targets.secret_targets import slots_in_use


@dataclass(frozen=True)
class VersionKeys:
    """The kids of the keys one version holds, as the version itself answered."""

    version_id: str
    kid: str
    previous_kid: str | None

    def reads(self, kid: str) -> bool:
        return kid in (self.kid, self.previous_kid)

    def as_dict(self) -> dict[str, str | None]:
        return {"version_id": self.version_id, "kid": self.kid, "previous_kid": self.previous_kid}


def kid_of(value: str) -> str:
    """The kid a Worker computes for this MASTER_KEY value."""
    return MasterKey.from_secret(value).kid


def can_ask(ctx: Context, worker: str) -> bool:
    return worker in ctx.env.key_routes and ctx.manifest.route_token is not None


def _route(ctx: Context, worker: str) -> Endpoint:
    token_name = ctx.manifest.route_token
    if token_name is None or worker not in ctx.env.key_routes:
        raise ConfigError(f"{worker} has no key route in [environments.{ctx.env.name}] key_routes")
    token = required(ctx.secrets.ref(token_name), ctx.secrets.read(token_name))
    return Endpoint(ctx.env.key_routes[worker], token)


def ask(ctx: Context, worker: str, version_ids: Iterable[str]) -> dict[str, VersionKeys]:
    """Ask each version (of the current deployment) of `worker` which keys it holds."""
    full = ctx.worker_name(worker)
    endpoint = _route(ctx, worker)
    try:
        out = {}
        for vid in version_ids:
            ping = endpoint.ping((full, vid))
            out[vid] = VersionKeys(vid, ping.kid, ping.previous_kid)
        return out
    finally:
        endpoint.close()


@dataclass(frozen=True)
class Serving:
    """One Worker as Cloudflare serves it now, with the keys of each version asked."""

    worker: str
    state: DeploymentState
    keys: dict[str, VersionKeys]   # empty when the Worker has no key route

    @property
    def asked(self) -> bool:
        return bool(self.keys)

    def serving_keys(self) -> list[VersionKeys]:
        return [self.keys[v] for v in self.state.serving if v in self.keys]


def observe(ctx: Context, worker: str) -> Serving:
    """The Worker's current deployment from Cloudflare, and (where it has a key route) the
    keys of every version in it, each asked of that version."""
    state = wrangler_for(ctx).state(ctx.worker_name(worker))
    keys = ask(ctx, worker, [v for v, _ in state.traffic]) if can_ask(ctx, worker) else {}
    return Serving(worker, state, keys)


def problems(serving: Serving, row_kids: Iterable[str], store_kids: set[str] | None = None) -> list[str]:
    """What breaks the invariant on this Worker (empty: nothing), from its answers: a
    serving version that cannot open the rows, versions that cannot open each other's
    writes, and (given `store_kids`) one that seals under a key the store no longer holds."""
    out = []
    versions = serving.serving_keys()
    for vk in versions:
        if store_kids is not None and vk.kid not in store_kids:
            out.append(f"version {vk.version_id[:12]} (serving) seals under key {vk.kid}, which "
                       "the secret store no longer holds")
    for vk in versions:
        missing = sorted(k for k in row_kids if not vk.reads(k))
        if missing:
            out.append(f"version {vk.version_id[:12]} (serving) cannot open rows under key "
                       f"{', '.join(missing)} (it holds {vk.kid} and {vk.previous_kid})")
    for a in versions:
        for b in versions:
            if a is not b and not b.reads(a.kid):
                out.append(f"versions {a.version_id[:12]} and {b.version_id[:12]} split traffic, "
                           f"but {b.version_id[:12]} cannot open what {a.version_id[:12]} seals "
                           f"(key {a.kid})")
    return out


def expect(ctx: Context, worker: str, version_id: str, kid: str, previous_kid: str | None) -> None:
    """The version a push made must hold exactly the keys pushed (asked of it, where the
    Worker has a key route): otherwise stop before anything depends on it."""
    if not can_ask(ctx, worker):
        return
    got = ask(ctx, worker, [version_id])[version_id]
    if (got.kid, got.previous_kid) != (kid, previous_kid):
        raise DeployError(
            f"{ctx.worker_name(worker)} version {version_id[:12]} holds MASTER_KEY {got.kid} and "
            f"MASTER_KEY_PREVIOUS {got.previous_kid}, not {kid} and {previous_kid} as pushed: the "
            "route may read other secret names, or another push raced this one. Nothing more "
            "was changed; look at the Worker, then run the same command again.")


def master_key_of(ctx: Context, worker: str) -> str | None:
    """The master-key secret the Worker holds, if any (the one its route answers for)."""
    return next((s.name for s in ctx.manifest.secrets.values()
                 if s.kind == "master-key" and worker in s.workers), None)


def keys_in_use(ctx: Context, secret: str) -> set[str]:
    """The kids of the store's values some row or object opens under now (a census)."""
    return {kid_of(v) for slot in slots_in_use(ctx, secret)
            if (v := ctx.secrets.read(secret, slot)) is not None}


def store_kids(ctx: Context, secret: str) -> set[str]:
    """The kids of every value the store holds for `secret` (current, pending, previous)."""
    return {kid_of(v) for slot in SLOTS if (v := ctx.secrets.read(secret, slot)) is not None}


def check_serving(ctx: Context, workers: list[str]) -> None:
    """After the Workers changed: every serving version of every Worker that can be asked
    must read every key a row or object is under, and versions splitting traffic must read
    each other's writes (DeployError, exit 1, naming the version otherwise)."""
    found = []
    for worker in workers:
        secret = master_key_of(ctx, worker)
        if secret is None or not can_ask(ctx, worker):
            continue
        needed = keys_in_use(ctx, secret)
        found += [f"{ctx.worker_name(worker)}: {p}"
                  for p in problems(observe(ctx, worker), needed, store_kids(ctx, secret))]
    if found:
        raise DeployError("the Workers now break the serving-keys invariant: " + "; ".join(found))
