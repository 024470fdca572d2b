"""A random walk through the control plane (issue 19's property test): rotations, canaries,
aborts, finishes, rollbacks (plain and forced), deploys and pushes, interleaved with the
application sealing rows through whatever serves, with Cloudflare refusing a Worker,
failing a request, or keyrotate stopped mid-command. After every step, whatever its exit
code, the serving-keys invariant holds on the stand-in's ground truth
(tests/support/serving.py): every serving version opens every row, versions read each
other's writes, and no key a row is under has left the store."""

from __future__ import annotations

import logging

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from keyrotate.secrets.base import SLOTS
from tests.support.cloudflare_project import Project, with_key_routes, with_overlap
from tests.support.helpers import OLD_SECRET, run_cli
from tests.support.serving import App, problems

pytestmark = pytest.mark.slow
HOLDERS = ["api", "oauth"]
FAULTS = ["none", "none", "refuse-oauth", "refuse-api", "500", "stop"]


class StopAfter(logging.Filter):
    """keyrotate stopped mid-command: a KeyboardInterrupt at its n-th progress line."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def filter(self, record: logging.LogRecord) -> bool:
        self.n -= 1
        if self.n == 0:
            raise KeyboardInterrupt
        return True


class ServingWalk(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.p = Project.create()
        with_overlap(self.p.root)
        if self.p.routes:
            with_key_routes(self.p.root, self.p.cf, self.p.store)
        self.app = App(self.p.cf, self.p.root / "staging.db")
        self.known = {OLD_SECRET}
        assert self._cli("secrets", "push", "--env", "staging") == 0

    def teardown(self) -> None:
        self.p.close()

    # -- running a command under a fault ----------------------------------------------------
    def _cli(self, *args: str, fault: str = "none", k: int = 1) -> int | None:
        cf, log = self.p.cf, logging.getLogger("keyrotate")
        stop = StopAfter(k) if fault == "stop" else None
        if fault.startswith("refuse-"):
            cf.workers.refusing.add(f"tminus-{fault.split('-')[1]}-staging")
        elif fault == "500":
            seen = [0]

            def kth(method: str, sub: str, body: bytes) -> bool:
                seen[0] += 1
                return seen[0] == k
            cf.workers.fail_once.append(kth)
        if stop is not None:
            log.addFilter(stop)
        try:
            return run_cli(*args).exit_code
        except KeyboardInterrupt:
            return None
        finally:
            if stop is not None:
                log.removeFilter(stop)
            cf.workers.refusing.clear()
            cf.workers.fail_once.clear()
            self._learn()

    def _learn(self) -> None:
        """Every MASTER_KEY value seen anywhere: in the store, on any version."""
        store = self.p.store
        self.known |= {v for s in SLOTS if (v := store.read("MASTER_KEY", s)) is not None}
        for w in HOLDERS:
            for v in self.p.cf.script(f"tminus-{w}-staging").versions:
                self.known |= {s for n, s in v.secrets.items() if n.startswith("MASTER_KEY")}

    # -- the steps ------------------------------------------------------------------------
    @rule(canary=st.booleans(), fault=st.sampled_from(FAULTS), k=st.integers(1, 12))
    def rotate(self, canary: bool, fault: str, k: int) -> None:
        self._cli("rotate", "MASTER_KEY", "--env", "staging", *(["--canary"] if canary else []),
                  fault=fault, k=k)

    @rule(fault=st.sampled_from(FAULTS), k=st.integers(1, 12))
    def finish(self, fault: str, k: int) -> None:
        self._cli("rotate", "MASTER_KEY", "--env", "staging", "--finish", fault=fault, k=k)

    @rule(fault=st.sampled_from(FAULTS), k=st.integers(1, 12))
    def abort(self, fault: str, k: int) -> None:
        self._cli("rotate", "MASTER_KEY", "--env", "staging", "--abort", fault=fault, k=k)

    @rule(worker=st.sampled_from(HOLDERS), force=st.booleans(), fault=st.sampled_from(FAULTS),
          k=st.integers(1, 8))
    def rollback(self, worker: str, force: bool, fault: str, k: int) -> None:
        self._cli("rollback", "--env", "staging", "--only", worker, "--yes",
                  *(["--force"] if force else []), fault=fault, k=k)

    @rule(worker=st.sampled_from(HOLDERS), fault=st.sampled_from(FAULTS), k=st.integers(1, 8))
    def deploy(self, worker: str, fault: str, k: int) -> None:
        self._cli("deploy", "--env", "staging", "--only", worker, fault=fault, k=k)

    @rule(fault=st.sampled_from(FAULTS), k=st.integers(1, 8))
    def push(self, fault: str, k: int) -> None:
        self._cli("secrets", "push", "--env", "staging", "--only", "MASTER_KEY", fault=fault, k=k)

    @rule(worker=st.sampled_from(HOLDERS))
    def app_writes(self, worker: str) -> None:
        self.app.seal_as(worker, 2)

    # -- the invariant --------------------------------------------------------------------
    @invariant()
    def every_serving_version_reads_every_row(self) -> None:
        found = problems(self.p.cf, self.p.root / "staging.db", self.p.store, HOLDERS, self.known)
        assert found == [], found


@pytest.mark.parametrize("routes", [True, False], ids=["asked", "by-records"])
def test_random_walks_keep_every_serving_version_reading_every_row(routes: bool) -> None:
    Project.defaults["routes"] = routes
    try:
        run_state_machine_as_test(ServingWalk, settings=settings(
            max_examples=4, stateful_step_count=8, deadline=None, derandomize=True,
            database=None, suppress_health_check=list(HealthCheck)))
    finally:
        Project.defaults["routes"] = True
