"""A canary for new secrets: the Workers try them on a little traffic before all of it.

Per Worker, one at a time: a new version is made from the deployed one with the new
secrets (Cloudflare API) and deployed at 0% beside it; it is asked which keys it holds and
smoke-tested through the health URL with `Cloudflare-Workers-Version-Overrides:
<worker>="<version id>"`; then traffic ramps through the steps (10 -> 50 -> 100% by
default), health checked at each. The previous version stays in the deployment (at 0% at
the end) until the new one is accepted: going back to it is then a plain deployment,
never a rollback across a secret change (Cloudflare 10220).

For a key with a previous (MASTER_KEY, JWT_SECRET), only the *switch* is a canary: the
previous version already reads the new key (the rotation introduced it first, at 100%), and
the canary reads the old one, so the two read each other's writes at every share.

Any failure once the canary version exists, whatever it is (a failed health check, a
Cloudflare 5xx, a SIGTERM), takes the same path: the previous version back to 100%, and
exit 3; running the same command again makes a fresh canary. A canary left split by a
kill is recognised (keyrotate recorded its version) and undone the same way first.
"""

from __future__ import annotations

from dataclasses import dataclass

from keyrotate.cloudflare.wrangler import wrangler_for
from keyrotate.config.context import Context
from keyrotate.controlplane.health import check
from keyrotate.controlplane.pushes import Pushed, Pusher, changes
from keyrotate.controlplane.serving import expect
from keyrotate.dataplane.objects.wire import VERSION_OVERRIDES
from keyrotate.errors import ConfigError, DeployError, Incomplete
from keyrotate.evidence.worker_log import canary_versions, confirm, intend, record_version
from keyrotate.progress import Say

DEFAULT_STEPS = (10, 50, 100)
PROBES = 20   # health requests per step: enough that a 10% share is seen


@dataclass(frozen=True)
class Canary:
    steps: tuple[int, ...] = DEFAULT_STEPS
    probes: int = PROBES


def undo_split_canary(ctx: Context, pusher: Pusher, worker: str, say: Say) -> None:
    """A deployment split between a canary keyrotate made and the version before it (a
    canary cut short by a kill): the version before it goes back to 100%."""
    full = ctx.worker_name(worker)
    state = pusher.observe(worker)
    if state.deployed is not None or len(state.traffic) != 2:
        return
    ours = canary_versions(ctx, full)
    canaries = [v for v, _ in state.traffic if v in ours]
    if len(canaries) != 1:
        return
    previous = next(v for v, _ in state.traffic if v != canaries[0])
    say(f"{full} was left split by a canary cut short: {previous[:12]} back to 100%")
    wrangler_for(ctx).versions_deploy(full, [(previous, 100.0)], "keyrotate canary: undone")
    pusher.observe(worker)


def canary_push(ctx: Context, pusher: Pusher, worker: str, values: dict[str, str | None],
                canary: Canary, say: Say,
                expect_keys: tuple[str, str | None] | None = None) -> Pushed:
    """Push `values` to one Worker as a canary; `expect_keys` (kid, previous kid): what
    the canary version must answer when asked, before any traffic reaches it."""
    full = ctx.worker_name(worker)
    url = ctx.env.health.get(worker)
    if url is None:
        raise ConfigError(f"a canary needs a health URL for {worker} in [environments."
                          f"{ctx.env.name}] health; nothing was pushed")
    undo_split_canary(ctx, pusher, worker, say)
    pusher.check([worker], copies=True)
    state = pusher.states[worker]
    previous = state.deployed or state.latest
    if previous is None:
        raise DeployError(f"{full} has no version to make a canary from: deploy it first; "
                          "nothing was pushed")
    at = intend(ctx, full, changes(ctx, values), state.latest_number)
    version = pusher.api.copy(full, previous, previous, values, "keyrotate canary: new secrets")
    record_version(ctx, full, "canary", version)
    try:
        _ramp(ctx, worker, previous, version, url, canary, say, expect_keys)
    except BaseException as e:
        if _back(ctx, full, previous):
            confirm(ctx, full, at, "failed")   # the canary version serves nothing any more
        if not isinstance(e, Incomplete):   # a health failure already says what happened
            raise Incomplete(f"the canary of {', '.join(sorted(values))} on {full} was cut short "
                             f"({type(e).__name__}: {e}); {full} serves its previous version at "
                             "100% again. Run the same command again.") from e
        raise
    after = pusher.observe(worker)
    confirm(ctx, full, at, "done", version, after.number(version))
    return Pushed(full, version, after.number(version) or 0, at)


def _ramp(ctx: Context, worker: str, previous: str, version: str, url: str, canary: Canary,
          say: Say, expect_keys: tuple[str, str | None] | None) -> None:
    full = ctx.worker_name(worker)
    deploy = wrangler_for(ctx).versions_deploy
    say(f"canary on {full}: version {version[:12]} at 0%, beside {previous[:12]}")
    deploy(full, [(previous, 100.0), (version, 0.0)], "keyrotate canary")
    if expect_keys is not None:
        expect(ctx, worker, version, *expect_keys)
    failure = _probe(worker, url, canary.probes, {VERSION_OVERRIDES: f'{full}="{version}"'})
    share = 0
    for share in (s for s in canary.steps if not failure):
        say(f"canary on {full}: {share}% of traffic")
        deploy(full, [(version, float(share)), (previous, 100.0 - share)], f"keyrotate canary {share}%")
        failure = _probe(worker, url, canary.probes)
    if failure:
        raise Incomplete(f"the canary on {full} failed its health check at "
                         f"{share if share else 'the smoke test, 0'}% ({failure}); {full} serves "
                         "its previous version at 100% again. Fix the cause, then run the same "
                         "command again.")
    deploy(full, [(version, 100.0)], "keyrotate canary: accepted")


def _back(ctx: Context, full: str, previous: str) -> bool:
    """The previous version to 100%: a canary must never be left splitting traffic."""
    try:
        wrangler_for(ctx).versions_deploy(full, [(previous, 100.0)], "keyrotate canary: aborted")
        return True
    except BaseException:
        return False   # the next run finds the split (its canary is recorded) and undoes it


def _probe(worker: str, url: str, probes: int, headers: dict[str, str] | None = None) -> str | None:
    """None when every probe is healthy, else what the first failure said."""
    for _ in range(probes):
        h = check(worker, url, headers=headers)
        if not h.ok:
            return f"{h.status} {h.detail}".strip()
    return None
