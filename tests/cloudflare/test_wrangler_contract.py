"""The fake wrangler's contract (tests/support/fake_wrangler.py): for every wrangler command
keyrotate runs, the real wrangler 4.86 and the fake, each driven through keyrotate's own
`Wrangler` against a fresh Cloudflare API stand-in in the same starting state, must
- make the same requests: method, path, query, JSON fields and multipart fields (ids,
  timestamps and boundaries normalised; a module's bytes are not compared, since wrangler
  uploads esbuild's bundle and the fake the file as written);
- leave the stand-in in the same state: versions (bindings, secrets, modules' names and
  types, messages) and deployments (traffic, messages);
- print what keyrotate parses to the same values, and fail the same way: the same
  DeployError text (Cloudflare's code, where wrangler prints one) and the same retries.

One test per group of commands, each a sequence on one stand-in, so that real wrangler
starts (seconds each on a small machine) are few while each command keeps its own
labelled step. Every other control-plane test runs the fake (tests/support/
cloudflare_project.py): when one of them fails only with the fake, the missing fact goes
into the fake and into a step here.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest

import keyrotate.cloudflare.wrangler as wrangler_module
from keyrotate.cloudflare.wrangler import Wrangler
from keyrotate.errors import DeployError
from tests.support.cf_api import CloudflareStandIn
from tests.support.cf_workers import _err
from tests.support.cloudflare_project import FAKE_WRANGLER, WRANGLER, api_env, write_worker

W = "tminus-api-staging"
pytestmark = pytest.mark.slow   # the real wrangler (node) starts for every command
PROGRAMS = {"real": [str(WRANGLER)], "fake": FAKE_WRANGLER}
_ID = re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


@dataclasses.dataclass
class World:
    """One program against one stand-in."""

    cf: CloudflareStandIn
    wrangler: Wrangler
    folder: Path          # the Worker's folder, with its wrangler.toml, for deploy

    def script(self):
        return self.cf.script(W)


Step = tuple[str, Callable[[World], Any]]


@dataclasses.dataclass
class Played:
    steps: list[tuple[str, list[Any], Any, list[float]]]  # label, requests, outcome, sleeps
    state: dict[str, Any]

    def step(self, label: str) -> tuple[list[Any], Any, list[float]]:
        return next(s[1:] for s in self.steps if s[0] == label)


def play(program: str, steps: list[Step], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Played:
    """Run the steps with one program; record each step's requests, outcome and retry sleeps."""
    if program == "real" and not WRANGLER.exists():
        pytest.fail("wrangler is not installed: run `npm ci` (setup-dev.sh)")
    root = tmp_path / program
    root.mkdir()
    cf = CloudflareStandIn()
    try:
        for k, v in api_env(cf, root / "wrangler-logs").items():
            monkeypatch.setenv(k, v)
        sleeps: list[float] = []  # keyrotate's retry backoff, recorded instead of slept
        monkeypatch.setattr(wrangler_module, "time", SimpleNamespace(sleep=sleeps.append))
        world = World(cf, Wrangler(tuple(PROGRAMS[program]), root), write_worker(root / "api", "api"))
        raw = []
        for label, step in steps:
            start, slept = len(cf.log), len(sleeps)
            try:
                outcome: Any = ("ok", step(world))
            except DeployError as e:
                outcome = ("error", str(e))
            raw.append((label, cf.log[start:], outcome, sleeps[slept:]))
        names = _id_names(cf)
        return Played([(label, _requests(log, names, root), _normal(outcome, names, root), slept)
                       for label, log, outcome, slept in raw], _state(cf, names))
    finally:
        cf.stop()


def assert_same(real: Played, fake: Played) -> None:
    for r, f in zip(real.steps, fake.steps, strict=True):
        assert f[0] == r[0]
        assert f[1] == r[1], f"{r[0]}: requests differ"
        assert f[2] == r[2], f"{r[0]}: what keyrotate reads differs"
        assert f[3] == r[3], f"{r[0]}: keyrotate's retries differ"
    assert fake.state == real.state


def contract(steps: list[Step], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Played:
    real = play("real", steps, tmp_path, monkeypatch)
    fake = play("fake", steps, tmp_path, monkeypatch)
    assert_same(real, fake)
    return real


# -- normalising ---------------------------------------------------------------------------

def _id_names(cf: CloudflareStandIn) -> dict[str, str]:
    """Random ids -> names by position: version numbers, deployments counted from the oldest."""
    names = {}
    for name, s in cf.workers.scripts.items():
        for v in s.versions:
            names[v.id] = f"<{name} v{v.number}>"
        for i, d in enumerate(reversed(s.deployments), 1):
            names[d["id"]] = f"<{name} d{i}>"
    return names


def _normal(value: Any, names: dict[str, str], root: Path) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, str):
        value = value.replace(str(root), "<root>")
        value = _ID.sub(lambda m: names.get(m.group(0).replace("-", ""), "<unknown id>"), value)
        return _TIME.sub("<time>", value)
    if isinstance(value, (list, tuple)):
        return [_normal(v, names, root) for v in value]
    if isinstance(value, dict):   # keys may be ids too (version id -> number)
        return {_normal(k, names, root): _normal(v, names, root) for k, v in value.items()}
    return value


def _form(body: bytes) -> dict[str, Any]:
    """A multipart body's fields, whatever the boundary: JSON fields parsed, modules named."""
    boundary = body.split(b"\r\n", 1)[0]
    fields: dict[str, Any] = {}
    for part in body.split(boundary)[1:-1]:
        head, _, content = part[2:-2].partition(b"\r\n\r\n")
        headers = head.decode()
        name = re.search(r'name="([^"]*)"', headers).group(1)
        ctype = re.search(r"(?i)content-type: *(\S+)", headers)
        if name in ("metadata", "settings"):
            fields[name] = json.loads(content)
        else:
            filename = re.search(r'filename="([^"]*)"', headers)
            fields[name] = {"module": filename and filename.group(1), "type": ctype and ctype.group(1)}
    return fields


def _requests(log: list[tuple[str, str, bytes]], names: dict[str, str], root: Path) -> list[Any]:
    out = []
    for method, path, body in log:
        data = None if not body else _form(body) if body.startswith(b"--") else json.loads(body)
        out.append((method, _normal(path, names, root), _normal(data, names, root)))
    # wrangler fetches a deployment's versions at once (Promise.all): they may come in any order
    runs: list[list[Any]] = []
    for req in out:
        at_once = req[0] == "GET" and "/versions/" in req[1]
        if at_once and runs and runs[-1][-1][0] == "GET" and "/versions/" in runs[-1][-1][1]:
            runs[-1].append(req)
        else:
            runs.append([req])
    return [req for run in runs for req in sorted(run, key=repr)]


def _state(cf: CloudflareStandIn, names: dict[str, str]) -> dict[str, Any]:
    out = {}
    for name, s in sorted(cf.workers.scripts.items()):
        versions = [{"number": v.number, "message": v.message, "bindings": v.bindings,
                     "main_module": v.main_module, "compatibility_date": v.compatibility_date,
                     "modules": {m: ct for m, (ct, _) in v.modules.items()}} for v in s.versions]
        deployments = [{k: d[k] for k in ("strategy", "source", "versions", "annotations")}
                       for d in reversed(s.deployments)]
        out[name] = _normal({"versions": versions, "deployments": deployments}, names, Path("/-"))
    return out


# -- stand-in moves (as Cloudflare's dashboard or an upload would make them) ----------------

def _seed(w: World) -> None:
    """A deployed version with a plain-text binding, which `secret bulk` must carry along."""
    s = w.script()
    with w.cf.lock:
        v = s.add_version({"GREETING": {"type": "plain_text", "text": "hello"}}, "seed")
        s.deploy([(v.id, 100.0)], "seed")


def _dashboard_rollback(w: World) -> None:
    s = w.script()
    with w.cf.lock:
        s.deploy([(s.versions[-2].id, 100.0)], "dashboard rollback")


def _deploy_latest(w: World) -> None:
    s = w.script()
    with w.cf.lock:
        s.deploy([(s.latest.id, 100.0)], "dashboard deploy")


def _upload(w: World) -> None:
    """A new version, not deployed (what `wrangler versions upload` leaves)."""
    s = w.script()
    with w.cf.lock:
        s.add_version({n: dict(b) for n, b in s.latest.bindings.items()}, "uploaded")


def _gradual(w: World) -> None:
    _upload(w)
    s = w.script()
    with w.cf.lock:
        s.deploy([(s.versions[-1].id, 50.0), (s.versions[-2].id, 50.0)], "gradual")


def _fail_next(w: World, method: str, sub: str) -> None:
    """A 500 for the next `method .../sub` on a Workers script (the stand-in's worker_faults
    hit whichever script request comes next)."""
    route = w.cf.workers.route

    def once(m: str, s: Any, path: str, *rest: Any) -> Any:
        if m == method and path == sub:
            w.cf.workers.route = route  # type: ignore[method-assign]
            return 500, _err(10013, "An unknown error has occurred"), None
        return route(m, s, path, *rest)

    w.cf.workers.route = once  # type: ignore[method-assign]


def _vid(w: World, number: int) -> str:
    return w.script().versions[number - 1].id


# -- the contracts -------------------------------------------------------------------------

def test_secret_put_bulk_delete_and_list(tmp_path, monkeypatch):
    steps: list[Step] = [
        ("seed", _seed),
        ("secret put", lambda w: w.wrangler.secret_put(W, "JWT_SECRET", "jwt-value-1 \n")),
        ("secret bulk", lambda w: w.wrangler.secret_bulk(W, {"JWT_SECRET": "jwt-value-2",
                                                            "MASTER_KEY": "master-value-1"})),
        ("secret list", lambda w: w.wrangler.secret_names(W)),
        ("secret delete", lambda w: w.wrangler.secret_delete(W, "JWT_SECRET")),
        ("dashboard rollback", _dashboard_rollback),
        ("secret put after a rollback", lambda w: w.wrangler.secret_put(W, "JWT_SECRET", "jwt-value-3")),
        ("secret bulk after a rollback", lambda w: w.wrangler.secret_bulk(W, {"JWT_SECRET": "jwt-value-3"})),
        ("secret delete after a rollback", lambda w: w.wrangler.secret_delete(W, "MASTER_KEY")),
        ("deploy the latest", _deploy_latest),
        ("secret put through a 500", lambda w: (w.cf.worker_faults.append("500"),
                                                w.wrangler.secret_put(W, "JWT_SECRET", "jwt-value-4"))),
    ]
    real = contract(steps, tmp_path, monkeypatch)

    # what the steps were for (the contract above is that the fake does the same)
    requests, outcome, _ = real.step("secret put")
    assert requests == [("PUT", f"/client/v4/accounts/acct/workers/scripts/{W}/secrets",
                         {"name": "JWT_SECRET", "text": "jwt-value-1", "type": "secret_text"})]
    requests, _, _ = real.step("secret bulk")
    assert [m for m, _, _ in requests] == ["GET", "PATCH"]
    assert requests[1][2]["settings"]["bindings"][:2] == [
        {"type": "plain_text", "name": "GREETING"}, {"type": "secret_text", "name": "JWT_SECRET",
                                                     "text": "jwt-value-2"}]
    assert real.step("secret list")[1] == ["ok", ["JWT_SECRET", "MASTER_KEY"]]
    assert real.step("secret delete")[0][0][1].endswith("/secrets/JWT_SECRET?url_encoded=true")
    put = real.step("secret put after a rollback")[1]
    assert put[0] == "error" and "isn't currently deployed" in put[1] and "10215" not in put[1]
    assert "Cloudflare error 10214" in real.step("secret bulk after a rollback")[1][1]
    assert "Cloudflare error 10215" in real.step("secret delete after a rollback")[1][1]
    requests, outcome, sleeps = real.step("secret put through a 500")
    assert outcome[0] == "ok" and len(requests) == 2 and sleeps == [2.0]


def test_deploy_deployments_list_and_versions_list(tmp_path, monkeypatch):
    def deploy(w: World) -> None:
        w.wrangler.deploy(w.folder, "staging")

    def deploy_through_a_failed_upload(w: World) -> None:
        _fail_next(w, "POST", "versions")
        deploy(w)

    steps: list[Step] = [
        ("deploy", deploy),
        ("deployments list", lambda w: w.wrangler.deployments(W)),
        ("versions list", lambda w: w.wrangler.versions(W)),
        ("gradual deployment", _gradual),
        ("deploy over a gradual deployment", deploy),
        ("deploy through a 500 on the upload", deploy_through_a_failed_upload),
        ("state through a 500", lambda w: (w.cf.worker_faults.append("500"), w.wrangler.state(W))[1]),
    ]
    real = contract(steps, tmp_path, monkeypatch)

    requests, _, _ = real.step("deploy")
    assert [(m, p.split("/acct/")[1]) for m, p, _ in requests] == [
        ("GET", f"workers/services/{W}"), ("GET", f"workers/scripts/{W}/deployments"),
        ("GET", f"workers/scripts/{W}/settings"),
        ("POST", f"workers/scripts/{W}/versions?bindings_inherit=strict"),
        ("POST", f"workers/scripts/{W}/deployments"), ("PATCH", f"workers/scripts/{W}/script-settings"),
        ("GET", "workers/subdomain"), ("GET", f"workers/scripts/{W}/subdomain"),
        ("POST", f"workers/scripts/{W}/subdomain")]
    assert requests[3][2]["metadata"] == {"main_module": "index.js", "bindings": [],
                                          "compatibility_date": "2024-12-01", "compatibility_flags": []}
    assert requests[5][2]["tags"] == ["cf:service=tminus-api", "cf:environment=staging"]
    ids = [d["id"] for d in real.step("deployments list")[1][1]]
    assert ids == [f"<{W} d2>", f"<{W} d1>"]                # keyrotate: newest first
    over = [p for m, p, _ in real.step("deploy over a gradual deployment")[0] if "/versions/" in p]
    assert len(over) == 2                                   # the gradual deployment's versions
    uploads = [p for m, p, _ in real.step("deploy through a 500 on the upload")[0]
               if m == "POST" and "/versions" in p]
    assert len(uploads) == 2                                # wrangler's own retry, not keyrotate's
    assert real.step("deploy through a 500 on the upload")[2] == []
    _, outcome, sleeps = real.step("state through a 500")
    assert outcome == ["ok", {"worker": W, "latest": f"<{W} v5>", "traffic": [[f"<{W} v5>", 100.0]],
                              "numbers": {f"<{W} v{n}>": n for n in range(5, 0, -1)}}]
    assert sleeps == [2.0]


def test_versions_deploy_and_rollback(tmp_path, monkeypatch):
    def seed(w: World) -> None:
        """v1 created; v2 a secret change (deployed); v3 uploaded, not deployed."""
        s = w.script()
        with w.cf.lock:
            s.secret_change({"FOO": "foo-value-1"}, "secret put")
        _upload(w)

    steps: list[Step] = [
        ("seed", seed),
        ("versions deploy 10%", lambda w: w.wrangler.versions_deploy(
            W, [(_vid(w, 3), 10.0), (_vid(w, 2), 90.0)], "canary 10%")),
        ("versions deploy 100% and 0%", lambda w: w.wrangler.versions_deploy(
            W, [(_vid(w, 3), 100.0), (_vid(w, 2), 0.0)], "canary accepted")),
        ("versions deploy across a secret change", lambda w: w.wrangler.versions_deploy(
            W, [(_vid(w, 1), 100.0)], "back to v1")),
        ("rollback", lambda w: w.wrangler.rollback(W, _vid(w, 2), "back to v2")),
        ("rollback across a secret change", lambda w: w.wrangler.rollback(W, _vid(w, 1), "back to v1")),
    ]
    real = contract(steps, tmp_path, monkeypatch)

    requests, _, _ = real.step("versions deploy 10%")
    assert requests[-2] == ("POST", f"/client/v4/accounts/acct/workers/scripts/{W}/deployments", {
        "strategy": "percentage", "versions": [{"version_id": f"<{W} v3>", "percentage": 10},
                                               {"version_id": f"<{W} v2>", "percentage": 90}],
        "annotations": {"workers/message": "canary 10%"}})
    requests, outcome, _ = real.step("versions deploy across a secret change")
    assert outcome[0] == "error" and "Cloudflare error 10220" in outcome[1]
    assert not any("force=true" in p for _, p, _ in requests)  # versions deploy never forces
    posts = [p.split("/scripts/")[1] for m, p, _ in real.step("rollback across a secret change")[0]
             if m == "POST"]
    assert posts == [f"{W}/deployments", f"{W}/deployments?force=true"]
    assert real.state[W]["deployments"][-1]["versions"] == [{"version_id": f"<{W} v1>",
                                                              "percentage": 100.0}]
