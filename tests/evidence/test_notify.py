"""Notifications against real local HTTP receivers that check every signature with an
independent HMAC and refuse replays: what a rotation tells the sinks, and that a sink
down, hanging or failing never changes a command's outcome (it is recorded instead)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import httpx
import pytest

from keyrotate.secrets.audit_key import AUDIT_KEY, AuditKey
from keyrotate.secrets.base import fingerprint
from tests.support.cloudflare_project import edit_manifest, with_overlap
from tests.support.helpers import OLD_SECRET, last_json, run_cli
from tests.support.hygiene import assert_clean
from tests.support.webhook_receiver import Receiver

pytestmark = pytest.mark.slow

SIGNING = "whsec-test-signing-secret-0123456789"
BODY_KEYS = {"v", "event", "env", "secret", "rotation_id", "step", "at", "old_fingerprint",
             "new_fingerprint", "summary", "chain"}


@pytest.fixture
def sinks(project, monkeypatch):
    """A json sink (signed) and a slack sink, their URLs and the signing secret given by
    reference (env: and dotenv:), as the README shows."""
    root = project[0]
    hook, slack = Receiver(SIGNING), Receiver()
    monkeypatch.setenv("ROTATION_WEBHOOK_URL", hook.url)
    monkeypatch.setenv("ROTATION_WEBHOOK_SECRET", SIGNING)
    (root / ".env.notify").write_text(f"SLACK_WEBHOOK_URL={slack.url}\n")
    (root / ".env.notify").chmod(0o600)
    _add_notify(root)
    yield hook, slack
    hook.stop()
    slack.stop()


def _add_notify(root, timeout=None):
    with (root / "keyrotate.toml").open("a") as f:
        f.write('\n[notify]\n' + (f"timeout = {timeout}\n" if timeout else "") + 'sinks = [\n'
                '  { url = "env:ROTATION_WEBHOOK_URL", format = "json", secret = "env:ROTATION_WEBHOOK_SECRET" },\n'
                '  { url = "dotenv:.env.notify#SLACK_WEBHOOK_URL", format = "slack" },\n]\n')


def _trail(root):
    return [json.loads(x) for x in (root / ".keyrotate" / "audit-staging.jsonl").read_text().splitlines()]


def test_a_rotation_tells_the_sinks_and_every_body_is_signed(project, sinks):
    root, cf, _, store = project
    hook, slack = sinks
    with_overlap(root)
    first = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--json")
    assert first.exit_code == 0, first.output
    new = store.read("MASTER_KEY", "pending")
    done = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--finish", "--json")
    assert done.exit_code == 0, done.output

    events = [b["event"] for b in hook.accepted]
    assert events[0] == "rotation.started" and events[-1] == "rotation.finished", events
    steps = [b["step"] for b in hook.accepted if b["event"] == "rotation.step"]
    assert steps[:3] == ["stage", "introduce", "switch"] and "verify" in steps and "awaiting-finish" in steps
    assert not hook.refused
    key = AuditKey.from_value(store.read(AUDIT_KEY), "test")
    trail = {e["seq"]: e for e in last_json(run_cli("audit", "show", "--env", "staging",
                                                    "--json").output)["events"]}
    for body in hook.accepted:
        assert set(body) == BODY_KEYS and body["v"] == 1 and body["env"] == "staging"
        assert body["secret"] == "MASTER_KEY" and body["rotation_id"] == hook.accepted[0]["rotation_id"]
        # fingerprints are keyed by the environment's audit key: no guessing oracle
        assert body["old_fingerprint"] == fingerprint(OLD_SECRET, key) == key.fingerprint(OLD_SECRET)
        # every body says where the event sits in the trail: the sink is a witness too
        event = trail[body["chain"]["seq"]]
        assert event["hash"].startswith(body["chain"]["mac"]) and len(body["chain"]["mac"]) == 16
        assert (event["event"], event["at"]) == (body["event"], body["at"])
    assert hook.accepted[-1]["new_fingerprint"] == fingerprint(new, key)
    assert all(f"(audit #{b['chain']['seq']} " in t["text"]
               for b, t in zip(hook.accepted, slack.accepted))

    headers, body = hook.raw[0]
    replay = httpx.post(hook.url, content=body, headers={
        "content-type": "application/json", "x-keyrotate-signature": headers["x-keyrotate-signature"]})
    assert replay.status_code == 409 and hook.refused == ["replay"]
    forged = httpx.post(hook.url, content=body.replace(b"staging", b"prod"), headers={
        "content-type": "application/json", "x-keyrotate-signature": headers["x-keyrotate-signature"]})
    assert forged.status_code == 401 and hook.refused[-1] == "bad signature"

    texts = [b["text"] for b in slack.accepted]
    assert len(texts) == len(hook.accepted)
    assert all(t.startswith("keyrotate [staging] MASTER_KEY rotation") for t in texts)
    assert not any("http" in t for t in texts)

    leaks = b"".join(b for _, b in hook.raw) + json.dumps(slack.accepted).encode() \
        + (root / ".keyrotate" / "audit-staging.jsonl").read_bytes() + first.output.encode() \
        + done.output.encode()
    assert_clean(leaks, "notifications, audit trail and output", [OLD_SECRET, new])
    for credential in (SIGNING, hook.url, slack.url):
        assert credential.encode() not in leaks


@pytest.mark.parametrize("mode", ["down", "500", "hang"])
def test_a_sink_down_hanging_or_failing_never_changes_the_outcome(project, monkeypatch, mode):
    root, cf, health, store = project
    hook = Receiver(SIGNING, mode="ok" if mode == "down" else mode)
    if mode == "down":
        hook.stop()   # nothing listens on its port any more
    monkeypatch.setenv("ROTATION_WEBHOOK_URL", hook.url)
    monkeypatch.setenv("ROTATION_WEBHOOK_SECRET", SIGNING)
    (root / ".env.notify").write_text("SLACK_WEBHOOK_URL=http://127.0.0.1:9/never\n")
    _add_notify(root, timeout=1)
    with_overlap(root)
    health.answers["oauth"] = (500, {"ok": False})
    paused = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--json")
    assert paused.exit_code == 3 and "health check failed" in paused.output, paused.output
    # one command waits on a dead sink once: after its three tries it is not tried again
    assert hook.requests <= 3
    health.answers.pop("oauth")
    done = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--json")
    assert done.exit_code == 0 and last_json(done.output)["state"] == "awaiting-finish", done.output

    failed = [e for e in _trail(root) if e["event"] == "notify.failed"]
    assert {e["detail"]["sink"] for e in failed} == {"json sink env:ROTATION_WEBHOOK_URL",
                                                     "slack sink dotenv:.env.notify#SLACK_WEBHOOK_URL"}
    assert any(e["detail"]["event"] == "rotation.paused" for e in failed)
    assert hook.url.encode() not in (root / ".keyrotate" / "audit-staging.jsonl").read_bytes()
    assert run_cli("audit", "verify", "--env", "staging").exit_code == 0
    hook.stop()


def test_a_receiver_that_trickles_its_answer_cannot_hold_a_command(project, monkeypatch):
    """Each try has a whole deadline: a receiver sending its answer one byte at a time
    (each read gets a byte, so no per-read timeout fires) is cut off at `timeout`."""
    root = project[0]
    hook = Receiver(SIGNING, mode="trickle", gap=0.25)   # a whole answer takes 17 s
    monkeypatch.setenv("ROTATION_WEBHOOK_URL", hook.url)
    monkeypatch.setenv("ROTATION_WEBHOOK_SECRET", SIGNING)
    (root / ".env.notify").write_text("SLACK_WEBHOOK_URL=http://127.0.0.1:9/never\n")
    _add_notify(root, timeout=1)
    res = run_cli("notify", "test", "--env", "staging", "--json")
    delivery = last_json(res.output)["deliveries"][0]
    assert res.exit_code == 1 and delivery["ok"] is False and delivery["tries"] == 3, res.output
    assert delivery["reason"] == "no whole answer within 1 s"
    hook.stop()
    assert hook.trickles_done == 0 and hook.requests == 3


def test_a_paused_rotation_says_why(project, sinks):
    root, _, health, _ = project
    hook, _ = sinks
    with_overlap(root)
    health.answers["oauth"] = (500, {"ok": False})
    assert run_cli("rotate", "MASTER_KEY", "--env", "staging").exit_code == 3
    paused = [b for b in hook.accepted if b["event"] == "rotation.paused"]
    assert len(paused) == 1 and paused[0]["step"] == "validate"
    assert "health check failed" in paused[0]["summary"] and "<url>" not in paused[0]["summary"]


def test_notify_test_and_overdue_secrets(project, sinks):
    root, _, _, _ = project
    hook, slack = sinks
    ok = run_cli("notify", "test", "--env", "staging", "--json")
    assert ok.exit_code == 0, ok.output
    assert [b["event"] for b in hook.accepted] == ["notify.test"] and len(slack.accepted) == 1

    env = root / ".env.staging"
    env.write_text(env.read_text().replace(f"JWT_SECRET set {datetime.now(timezone.utc).year}",
                                           "JWT_SECRET set 2020", 1))
    due = run_cli("status", "--env", "staging", "--due", "90d", "--notify", "--json")
    assert due.exit_code == 1 and last_json(due.output)["due"] == ["JWT_SECRET"]
    overdue = [b for b in hook.accepted if b["event"] == "secret.overdue"]
    assert len(overdue) == 1 and overdue[0]["secret"] == "JWT_SECRET"
    assert "JWT_SECRET" in slack.accepted[-1]["text"]

    hook.mode = "500"
    failing = run_cli("notify", "test", "--env", "staging", "--json")
    assert failing.exit_code == 1
    bad = [d for d in last_json(failing.output)["deliveries"] if not d["ok"]]
    assert bad == [{"sink": "json sink env:ROTATION_WEBHOOK_URL", "event": "notify.test",
                    "ok": False, "tries": 3, "reason": "HTTP 500"}]


def test_sink_urls_are_references_and_plain_http_only_to_this_machine(project, monkeypatch):
    root = project[0]
    manifest = (root / "keyrotate.toml").read_text()
    (root / "keyrotate.toml").write_text(
        manifest + '\n[notify]\nsinks = [{ url = "https://hooks.slack.com/services/T0/B0/XyZsecret", '
                   'format = "slack" }]\n')
    refused = run_cli("notify", "test", "--env", "staging")
    assert refused.exit_code == 2 and "must name the webhook URL" in refused.output
    assert "XyZsecret" not in refused.output

    (root / "keyrotate.toml").write_text(
        manifest + '\n[notify]\nsinks = [{ url = "env:HOOK", format = "slack" }]\n')
    monkeypatch.setenv("HOOK", "http://hooks.example.com/XyZsecret")
    res = run_cli("notify", "test", "--env", "staging", "--json")
    assert res.exit_code == 1 and "https" in last_json(res.output)["deliveries"][0]["reason"]
    assert "XyZsecret" not in res.output

    for broken in ("https://hooks.example.com:abc/XyZsecret", "https://[::1/XyZsecret"):
        monkeypatch.setenv("HOOK", broken)   # a typo httpx itself refuses: still just recorded
        res = run_cli("notify", "test", "--env", "staging", "--json")
        assert res.exit_code == 1, res.output
        assert last_json(res.output)["deliveries"][0]["ok"] is False
        assert "XyZsecret" not in res.output

    edit_manifest(root, 'format = "slack" }', 'format = "json" }')
    unsigned = run_cli("notify", "test", "--env", "staging")
    assert unsigned.exit_code == 2 and "signs its bodies" in unsigned.output


def test_the_receiver_helper_agrees_with_an_independent_hmac():
    import time

    from keyrotate.evidence.event import Event
    from keyrotate.evidence.notify import slack_text
    from keyrotate.evidence.signing import sign, verify
    from tests.support.webhook_receiver import independent_signature

    body = b'{"v":1,"event":"notify.test"}'
    now = int(time.time())
    header = f"t={now},v1={independent_signature(SIGNING, str(now), body)}"
    assert sign(SIGNING, body, now) == header and verify(SIGNING, header, body)
    assert not verify(SIGNING, header, body + b" ")                          # altered body
    assert not verify("another-signing-secret-0000", header, body)           # wrong secret
    assert not verify(SIGNING, sign(SIGNING, body, now - 301), body)         # too old
    event = Event("rotation.failed", "prod", "failed <b> & see https://api.example/health?x=1")
    assert event.summary == "failed <b> & see <url>"
    assert slack_text(event) == "keyrotate [prod] failed &lt;b&gt; &amp; see &lt;url&gt;"
