"""`objects census|rewrap`: a Durable Object target of the manifest on one environment.

The endpoint's URL comes from the environment (`objects = { AccountDO = URL }`), its
bearer token from the environment's store, and the key ids keyrotate trusts from the
store too: during a rotation the new key is the pending value and the old one the
current; otherwise the current value and the previous one. A standalone rewrap uses
`rewrap-<old kid>-<new kid>` as its rotation id, so running it again continues it and
the next rotation starts fresh.

A standalone rewrap ends the way every keyrotate command that claims "completed" does:
with a census of every object, the proof (the ledger is a shortcut: an object still
running an older version can write under the old key after it was confirmed). Ids the
census finds behind are sent once more, ledger or not, and counted again.
"""

from __future__ import annotations

import time
from typing import Sequence

from keyrotate.config.context import Context
from keyrotate.config.manifest import ObjectTarget
from keyrotate.crypto.keys import MasterKey
from keyrotate.dataplane.objects.driver import (
    IdSource,
    Keys,
    ObjectsCensus,
    ObjectsOptions,
    ObjectsRewrap,
    census,
    rewrap,
)
from keyrotate.dataplane.objects.wire import Endpoint
from keyrotate.errors import ConfigError
from keyrotate.evidence.event import Event
from keyrotate.evidence.record import audit_trail
from keyrotate.progress import Progress
from keyrotate.secrets.refs import required


def endpoint_for(ctx: Context, target: ObjectTarget) -> Endpoint:
    url = ctx.env.objects.get(target.object)
    if url is None:
        raise ConfigError(f"[environments.{ctx.env.name}] objects has no endpoint for {target.object}")
    token = required(ctx.secrets.ref(target.token), ctx.secrets.read(target.token))
    return Endpoint(url, token)


def store_keys(ctx: Context, secret: str) -> Keys:
    """The key ids to trust, from the store's slots (values never leave this process)."""
    store = ctx.secrets
    current, pending = store.read(secret), store.read(secret, "pending")
    new = pending or current
    old = current if pending else store.read(secret, "previous")
    if new is None:
        raise ConfigError(f"{secret} has no value in {store.ref(secret)}")
    return Keys(MasterKey.from_secret(new).kid, MasterKey.from_secret(old).kid if old else None)


def ids_of(target: ObjectTarget) -> IdSource:
    return IdSource(target.ids_table, target.ids_column)


def objects_census(ctx: Context, target: ObjectTarget, options: ObjectsOptions,
                   progress: Progress | None = None, new_kid: str | None = None,
                   only: Sequence[str] | None = None) -> ObjectsCensus:
    endpoint = endpoint_for(ctx, target)
    try:
        kid = new_kid or store_keys(ctx, target.secret).new
        return census(ctx.db, endpoint, ids_of(target), target.name, kid, options, progress,
                      only)
    finally:
        endpoint.close()


def objects_rewrap(ctx: Context, target: ObjectTarget, options: ObjectsOptions,
                   progress: Progress | None = None, rotation_id: str | None = None,
                   only: Sequence[str] | None = None, keys: Keys | None = None) -> ObjectsRewrap:
    """`keys`: the kids to trust (default: from the store's slots, as a rotation in
    progress or a finished one has them)."""
    keys = keys or store_keys(ctx, target.secret)
    if keys.old is None:
        raise ConfigError(f"nothing to rewrap: {target.secret} has neither a pending value "
                          "(a rotation in progress) nor a previous one in the store")
    endpoint = endpoint_for(ctx, target)
    try:
        return rewrap(ctx.db, endpoint, ids_of(target), target.ledger, target.name,
                      rotation_id or f"rewrap-{keys.old}-{keys.new}", keys, options, progress, only)
    finally:
        endpoint.close()


def objects_rewrap_proven(ctx: Context, target: ObjectTarget, options: ObjectsOptions,
                          progress: Progress | None = None) -> ObjectsRewrap:
    """`objects rewrap`, recorded in the environment's trail: that it started (which keys),
    and what the census at its end found (a rewrap killed midway leaves the first)."""
    if options.dry_run:
        return _rewrap_proven(ctx, target, options, progress)
    keys = store_keys(ctx, target.secret)
    trail = audit_trail(ctx)
    trail.append(Event("objects.rewrap", ctx.env.name, f"rewrap of {target.name} objects from key "
                       f"{keys.old} to {keys.new} started", target.secret,
                       detail={"target": target.name, "state": "started", "old_kid": keys.old,
                               "new_kid": keys.new}))
    result = _rewrap_proven(ctx, target, options, progress)
    ints = {k: v for k, v in result.outcome().as_dict().items()
            if isinstance(v, int) and not isinstance(v, bool)}
    proof = result.census.outcome().as_dict() if result.census is not None else {}
    trail.append(Event("objects.rewrap", ctx.env.name, f"rewrap of {target.name} objects "
                       f"{result.status}", target.secret, result.run_id,
                       detail={"target": target.name, "state": "done", "status": result.status,
                               "new_kid": keys.new, "counts": ints,
                               "census": {k: proof[k] for k in ("total", "current", "old", "stale",
                                                                "missing", "failed") if k in proof}}))
    return result


def _rewrap_proven(ctx: Context, target: ObjectTarget, options: ObjectsOptions,
                   progress: Progress | None = None) -> ObjectsRewrap:
    """The ledger pass, then a census of every object; one sweep of the ids it finds
    behind, and a census again. The status and exit code follow the census.

    The census asks every object, those that answered this run's rewrap with the new
    key's id too (an instance still on an older version can write under the old key after
    that answer); every id is listed from D1 (the census's rowid witness)."""
    started = time.monotonic()
    result = objects_rewrap(ctx, target, options, progress)
    if options.dry_run or result.status == "incomplete":
        return result
    final = objects_census(ctx, target, options, progress)
    if final.behind:
        result.swept = len(final.behind)
        sweep = objects_rewrap(ctx, target, options, progress, result.run_id, final.behind)
        result.requests += final.requests + sweep.requests
        result.failed.update(sweep.failed)
        final = objects_census(ctx, target, options, progress)
    result.requests += final.requests
    result.census = final
    result.seconds = time.monotonic() - started   # the whole command, proof included
    return result
