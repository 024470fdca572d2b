"""How secret values reach the Workers, so that a push cannot half-happen, and so that
keyrotate knows, from Cloudflare, which version each push made.

Every secret change deploys a new version at once. But when a Worker's latest version is
not the one deployed at 100% (after any rollback, or during a gradual deployment),
`wrangler secret put` and `bulk` fail (Cloudflare 10215 / 10214), after the Workers
before it took the new value; and `versions secret put|bulk` copy the *latest* version's
code, not the deployed one's (workers-sdk#10585). So every Worker is checked before the
first push, and if any is not so, nothing is pushed (exit 2), unless `from_deployed`:
then keyrotate makes the new version from the deployed one through the API, with the new
secrets, and deploys it at 100% (docs/cloudflare.md, "Cloudflare versions").

Each push is recorded in the audit trail as an intent (with the Worker's latest version
number) before it is made, and confirmed after with the id and number of the version it
made, read back from Cloudflare's versions list.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from keyrotate.cloudflare.versions import VersionsApi
from keyrotate.cloudflare.wrangler import DeploymentState, wrangler_for
from keyrotate.config.context import Context
from keyrotate.errors import ConfigError, DeployError, Resumable
from keyrotate.evidence.record import audit_key
from keyrotate.evidence.worker_log import SecretChange, canary_versions, confirm, intend
from keyrotate.progress import Say
from keyrotate.secrets.base import fingerprint


@dataclass(frozen=True)
class Pushed:
    """The version a push made (deployed at 100%), as Cloudflare lists it."""

    worker: str          # the deployed Worker's full name
    version_id: str
    number: int
    at: str              # when the push was recorded (the intent's id)


@dataclass
class Pusher:
    ctx: Context
    say: Say
    from_deployed: bool = False
    states: dict[str, DeploymentState] = field(default_factory=dict)
    _api: VersionsApi | None = None

    @property
    def api(self) -> VersionsApi:
        if self._api is None:
            self._api = VersionsApi()
        return self._api

    def observe(self, worker: str) -> DeploymentState:
        """What Cloudflare serves for `worker` now (read again, never remembered)."""
        self.states[worker] = wrangler_for(self.ctx).state(self.ctx.worker_name(worker))
        return self.states[worker]

    def check(self, workers: list[str], copies: bool = False) -> None:
        """Every Worker must take a push: refuse (nothing changed) when one cannot.
        `copies`: the push makes its version from the deployed one (a canary), so only a
        split deployment stops it."""
        for w in workers:
            if w not in self.states:
                self.observe(w)
        bad = [w for w in workers if not self.states[w].latest_fully_deployed
               and not self._copies_from_deployed(w, copies)]
        split = [w for w in bad if self.states[w].deployed is None]
        listing = "; ".join(f"{self.ctx.worker_name(w)}: {self.states[w].explain()}" for w in bad)
        if split:
            raise ConfigError(f"nothing was pushed: {listing}. A Worker serving two versions by "
                              "percentage has no one deployed version to start from: finish that "
                              "deployment (or roll it back), then run the same command again.")
        if bad and not self.from_deployed:
            raise ConfigError(
                f"nothing was pushed: {listing}. There `wrangler secret put|bulk` fails (Cloudflare "
                "10215/10214) after the Workers before it took the new value, and `wrangler versions "
                "secret put|bulk` would copy the latest version's code rather than the deployed "
                "one's. Run the same command with --from-deployed: keyrotate then makes a new "
                "version from the deployed version with the new secrets and deploys it at 100%.")

    def _copies_from_deployed(self, worker: str, copies: bool) -> bool:
        """A version is made from the deployed one anyway (a canary), or the latest version
        is a canary of keyrotate's that was cut short: then the deployed version is the one
        to start from, without --from-deployed."""
        state = self.states[worker]
        if state.deployed is None:
            return False
        return copies or state.latest in canary_versions(self.ctx, self.ctx.worker_name(worker))

    def push(self, worker: str, values: dict[str, str | None], note: str = "") -> Pushed:
        """Set (or, for None, remove) secrets on one Worker as one new deployed version."""
        full = self.ctx.worker_name(worker)
        self.check([worker])
        state = self.states[worker]
        removing = all(v is None for v in values.values())
        self.say(f"{'removing' if removing else 'pushing'} {', '.join(sorted(values))} "
                 f"{'from' if removing else 'to'} {full}{note}")
        at = intend(self.ctx, full, changes(self.ctx, values), state.latest_number)
        try:
            if state.latest_fully_deployed:
                self._with_wrangler(full, values)
            else:
                assert state.deployed is not None
                made = self.api.copy(full, state.deployed, state.deployed, values,
                                     "keyrotate: secrets on the deployed version")
                wrangler_for(self.ctx).versions_deploy(full, [(made, 100.0)], "keyrotate: secrets")
            after = self.observe(worker)
        except DeployError as e:
            if not isinstance(e, Resumable):   # Cloudflare refused it: nothing changed
                confirm(self.ctx, full, at, "failed")
            raise   # otherwise (a 5xx, a lost answer, a kill) it stays possibly applied
        if after.deployed is None or after.latest != after.deployed:
            # someone else changed the Worker meanwhile: the push stays an intent (it may
            # have been applied), and the rotation will look again
            raise ConfigError(f"{full} changed while keyrotate pushed to it ({after.explain()}); "
                              "run the same command again once nobody else deploys it")
        confirm(self.ctx, full, at, "done", after.deployed, after.latest_number)
        return Pushed(full, after.deployed, after.latest_number, at)

    def _with_wrangler(self, full: str, values: dict[str, str | None]) -> None:
        sets = {n: v for n, v in values.items() if v is not None}
        if len(sets) == 1:
            (name, value), = sets.items()
            wrangler_for(self.ctx).secret_put(full, name, value)
        elif sets:
            wrangler_for(self.ctx).secret_bulk(full, sets)
        for name in (n for n, v in values.items() if v is None):
            wrangler_for(self.ctx).secret_delete(full, name)

    def close(self) -> None:
        if self._api is not None:
            self._api.close()


def changes(ctx: Context, values: dict[str, str | None]) -> list[SecretChange]:
    """What setting `values` (None: removing) changes, as fingerprints."""
    return [SecretChange(n, ctx.manifest.kind_of(n), None if v is None else fingerprint(v, audit_key(ctx)))
            for n, v in values.items()]
