"""A canary for new secrets: the Workers try them on a little traffic before all of it.

Per Worker, one at a time: a new version is made from the deployed one with the new
secrets (Cloudflare API) and deployed at 0% beside it; it is smoke-tested through the
health URL with `Cloudflare-Workers-Version-Overrides: <worker>="<version id>"`; then
traffic ramps through the steps (10 -> 50 -> 100% by default), health checked at each.
The previous version stays in the deployment (at 0% at the end) until the new one is
accepted: going back to it is then a plain deployment, never a rollback across a secret
change (Cloudflare 10220). On any failed check the previous version gets 100% again and
the rotation stops (exit 3) with the reason. Version ids are recorded in keyrotate's own
events: the deployment history lists only ten deployments, and a canary uses four.
"""

from __future__ import annotations

from dataclasses import dataclass

from keyrotate.cloudflare.wrangler import wrangler_for
from keyrotate.config.context import Context
from keyrotate.controlplane.health import check
from keyrotate.controlplane.pushes import PUSHED, Pusher, changes
from keyrotate.errors import ConfigError, DeployError, Incomplete, KeyrotateError
from keyrotate.evidence.worker_log import confirm, intend, record_version
from keyrotate.progress import Say

DEFAULT_STEPS = (10, 50, 100)
PROBES = 20   # health requests per step: enough that a 10% share is seen


@dataclass(frozen=True)
class Canary:
    steps: tuple[int, ...] = DEFAULT_STEPS
    probes: int = PROBES


def canary_push(ctx: Context, pusher: Pusher, worker: str, values: dict[str, str | None],
                canary: Canary, say: Say) -> str:
    full = ctx.worker_name(worker)
    url = ctx.env.health.get(worker)
    if url is None:
        raise ConfigError(f"a canary needs a health URL for {worker} in [environments."
                          f"{ctx.env.name}] health; nothing was pushed")
    pusher.check([worker])
    state = pusher.states[worker]
    previous = state.deployed or state.latest
    if previous is None:
        raise DeployError(f"{full} has no version to make a canary from: deploy it first; "
                          "nothing was pushed")
    at = intend(ctx, full, changes(ctx, values))
    try:
        version = pusher.api.copy(full, previous, previous, values, "keyrotate canary: new secrets")
        record_version(ctx, full, "canary", version)
        say(f"canary on {full}: version {version[:12]} at 0%, beside {previous[:12]}")
        wrangler_for(ctx).versions_deploy(full, [(previous, 100.0), (version, 0.0)], "keyrotate canary")
        failure = _probe(worker, url, canary.probes, {"Cloudflare-Workers-Version-Overrides":
                                                      f'{full}="{version}"'})
        share = 0
        for share in (s for s in canary.steps if not failure):
            say(f"canary on {full}: {share}% of traffic")
            wrangler_for(ctx).versions_deploy(full, [(version, float(share)), (previous, 100.0 - share)],
                                         f"keyrotate canary {share}%")
            failure = _probe(worker, url, canary.probes)
        if failure:
            wrangler_for(ctx).versions_deploy(full, [(previous, 100.0)], "keyrotate canary: aborted")
            confirm(ctx, full, at, "failed")
            raise Incomplete(f"the canary of {', '.join(sorted(values))} on {full} failed its "
                             f"health check at {share if share else 'the smoke test, 0'}% "
                             f"({failure}); {full} serves its previous version at 100% again. "
                             "Fix the cause, then run the same command again.")
        wrangler_for(ctx).versions_deploy(full, [(version, 100.0)], "keyrotate canary: accepted")
    except Incomplete:
        raise
    except KeyrotateError:
        confirm(ctx, full, at, "failed")
        raise
    confirm(ctx, full, at, "done", version)
    pusher.states[worker] = PUSHED
    return at


def _probe(worker: str, url: str, probes: int, headers: dict[str, str] | None = None) -> str | None:
    """None when every probe is healthy, else what the first failure said."""
    for _ in range(probes):
        h = check(worker, url, headers=headers)
        if not h.ok:
            return f"{h.status} {h.detail}".strip()
    return None
