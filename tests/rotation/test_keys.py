"""Key lifecycle states (NIST SP 800-57), `keys`, `keys residue` and `keys destroy`, against
a .env store, the real OS keyring (gnome-keyring) and a real OpenBao (Vault KV v2), with
the Workers on the Cloudflare API stand-in: a full rotation followed by `keys destroy`
leaves no copy of the old key in any store keyrotate controls."""

from __future__ import annotations

import sqlite3
import uuid

import hvac
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from keyrotate.crypto.envelope import seal
from keyrotate.crypto.keys import MasterKey
from keyrotate.secrets.keyring_store import KeyringStore
from keyrotate.secrets.vault_store import VaultStore
from tests.support.cloudflare_project import GOOGLE, JWT, edit_manifest, with_overlap
from tests.support.helpers import OLD_SECRET, last_json, run_cli

pytestmark = pytest.mark.slow
OLD_KID = MasterKey.from_secret(OLD_SECRET).kid


def _keys(*flags):
    res = run_cli("keys", "--env", "staging", "--json", *flags)
    return res.exit_code, last_json(res.output)


def _key(listing, kid):
    found = [k for k in listing["keys"] if k["key"] == kid]
    assert len(found) == 1, listing
    return found[0]


def _trail():
    return last_json(run_cli("audit", "show", "--env", "staging", "--json").output)["events"]


def _rotate_and_finish(root):
    with_overlap(root)
    first = run_cli("rotate", "MASTER_KEY", "--env", "staging")
    assert first.exit_code == 0, first.output
    done = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--finish")
    assert done.exit_code == 0, done.output


def test_a_rotation_moves_each_key_through_its_states(project):
    root, _, _, store = project
    code, listing = _keys()
    assert code == 0
    before = _key(listing, OLD_KID)
    assert (before["state"], before["source"]) == ("active", "store")   # known from its slot
    assert before["locations"] == [store.ref("MASTER_KEY")]
    shown = last_json(run_cli("secrets", "show", store.ref("MASTER_KEY"), "--env", "staging",
                              "--json").output)
    assert (shown["fingerprint"], shown["master_key_kid"]) == (before["fingerprint"], OLD_KID)

    with_overlap(root)
    assert run_cli("rotate", "MASTER_KEY", "--env", "staging").exit_code == 0
    new_kid = MasterKey.from_secret(store.read("MASTER_KEY", "pending")).kid
    rotation_id = [e for e in _trail() if e["event"] == "rotation.started"][0]["rotation_id"]
    _, listing = _keys()
    new, old = _key(listing, new_kid), _key(listing, OLD_KID)
    assert [t["state"] for t in new["history"]] == ["pre-activation", "active"]
    assert (new["state"], new["rotation_id"], new["source"]) == ("active", rotation_id, "trail")
    assert "@" in new["by"] and new["since"] == new["history"][-1]["at"]
    assert new["workers"] == ["tminus-api-staging (MASTER_KEY)", "tminus-oauth-staging (MASTER_KEY)"]
    assert old["state"] == "deactivated" and old["workers"] == [
        "tminus-api-staging (MASTER_KEY_PREVIOUS)", "tminus-oauth-staging (MASTER_KEY_PREVIOUS)"]
    text = run_cli("keys", "--env", "staging").output
    assert f"{new_kid}" in text and "deactivated" in text

    # still the store's current value until --finish promotes the new one
    refused = run_cli("keys", "destroy", OLD_KID, "--env", "staging", "--yes", "--force")
    assert refused.exit_code == 2 and "is the current value of MASTER_KEY" in refused.output
    assert store.read("MASTER_KEY") == OLD_SECRET

    # the same key found by its fingerprint
    res = run_cli("keys", "residue", old["fingerprint"], "--env", "staging", "--json")
    assert res.exit_code == 0 and last_json(res.output)["key"]["key"] == OLD_KID


def test_a_full_rotation_then_destroy_leaves_no_copy_in_a_dotenv_store(project):
    root, cf, _, store = project
    _rotate_and_finish(root)
    env_file = root / ".env.staging"
    assert OLD_SECRET.encode() in env_file.read_bytes()       # kept as MASTER_KEY_PREVIOUS

    residue = last_json(run_cli("keys", "residue", OLD_KID, "--env", "staging", "--json").output)
    kinds = {(p["kind"], p["in_reach"]) for p in residue["places"]}
    assert ("store", True) in kinds and ("worker-versions", False) in kinds
    versions = [p for p in residue["places"] if p["kind"] == "worker-versions"]
    assert {p["where"].split(" ")[0] for p in versions} == {"tminus-api-staging", "tminus-oauth-staging"}
    assert all("latest 100 versions" in p["note"] for p in versions)

    # someone puts the overlap version back on api (wrangler rollback): it serves the old key
    api = cf.script("tminus-api-staging")
    overlap = [v for v in api.versions if v.secrets.get("MASTER_KEY_PREVIOUS") == OLD_SECRET][-1]
    latest = api.traffic[0][0]
    api.deploy([(overlap.id, 100.0)], "by hand")
    refused = run_cli("keys", "destroy", OLD_KID, "--env", "staging", "--yes")
    assert refused.exit_code == 2, refused.output
    assert (f"tminus-api-staging version {overlap.id}, serving 100% of traffic, holds it (as "
            "MASTER_KEY_PREVIOUS)") in refused.output
    api.deploy([(latest.id, 100.0)], "back")

    plan = run_cli("keys", "destroy", OLD_KID, "--env", "staging", "--json")
    assert plan.exit_code == 2 and last_json(plan.output)["would_destroy"] == [
        store.ref("MASTER_KEY", "previous")]
    assert OLD_SECRET.encode() in env_file.read_bytes()       # a plan changes nothing

    done = run_cli("keys", "destroy", OLD_KID, "--env", "staging", "--yes", "--json")
    assert done.exit_code == 0, done.output
    out = last_json(done.output)
    assert out["destroyed"] == [store.ref("MASTER_KEY", "previous")] and not out["forced"]
    assert {p["kind"] for p in out["remains"]} == {"worker-versions"}
    raw = env_file.read_bytes()
    assert OLD_SECRET.encode() not in raw and b"MASTER_KEY_PREVIOUS" not in raw
    for line in (JWT, GOOGLE, store.read("MASTER_KEY")):      # every other line kept
        assert line.encode() in raw

    _, listing = _keys()
    old = _key(listing, OLD_KID)
    assert old["state"] == "destroyed" and old["locations"] == []
    event = [e for e in _trail() if e["event"] == "key.state"][-1]
    assert event["detail"]["state"] == "destroyed" and event["detail"]["key"] == OLD_KID
    assert event["detail"]["destroyed"] == out["destroyed"]
    assert {p["kind"] for p in event["detail"]["remains"]} == {"worker-versions"}
    assert run_cli("audit", "verify", "--env", "staging").exit_code == 0
    after = last_json(run_cli("keys", "residue", OLD_KID, "--env", "staging", "--json").output)
    assert not [p for p in after["places"] if p["in_reach"]]


def test_destroy_refuses_while_the_rollback_target_seals_under_the_key(project):
    """A cutover: the version before the push has MASTER_KEY = old. `keyrotate rollback`
    would go back to it: the old key must stay until a deploy moves that target on."""
    root, _, _, store = project
    assert run_cli("secrets", "push", "--env", "staging").exit_code == 0
    cut = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--yes")
    assert cut.exit_code == 0, cut.output
    assert store.read("MASTER_KEY", "previous") == OLD_SECRET
    refused = run_cli("keys", "destroy", OLD_KID, "--env", "staging", "--yes")
    assert refused.exit_code == 2
    for w in ("api", "oauth"):
        assert f"tminus-{w}-staging's rollback target" in refused.output
        assert "seals under it (as MASTER_KEY)" in refused.output
    deployed = run_cli("deploy", "--env", "staging")
    assert deployed.exit_code == 0, deployed.output
    done = run_cli("keys", "destroy", OLD_KID, "--env", "staging", "--yes")
    assert done.exit_code == 0, done.output
    assert OLD_SECRET.encode() not in (root / ".env.staging").read_bytes()


def test_destroy_refuses_while_a_row_opens_under_the_key(project):
    root, _, _, store = project
    _rotate_and_finish(root)
    conn = sqlite3.connect(root / "staging.db")
    conn.execute("UPDATE accounts SET encrypted_tokens = ? WHERE account_id = 'acc_00000003'",
                 (seal(b'{"access_token":"x"}', MasterKey.from_secret(OLD_SECRET)),))
    conn.commit()
    conn.close()
    refused = run_cli("keys", "destroy", OLD_KID, "--env", "staging", "--yes")
    assert refused.exit_code == 2
    assert "1 rows of accounts.encrypted_tokens open under it" in refused.output
    assert store.read("MASTER_KEY", "previous") == OLD_SECRET
    in_use = run_cli("keys", "destroy", MasterKey.from_secret(store.read("MASTER_KEY")).kid,
                     "--env", "staging", "--yes", "--force")
    assert in_use.exit_code == 2 and "is the current value" in in_use.output
    forced = run_cli("keys", "destroy", OLD_KID, "--env", "staging", "--yes", "--force", "--json")
    assert forced.exit_code == 2, forced.output   # a key rows are sealed under: never, even forced
    assert "1 rows of accounts.encrypted_tokens open under it" in forced.output
    assert store.read("MASTER_KEY", "previous") == OLD_SECRET


def test_destroy_refuses_even_forced_while_a_serving_version_seals_under_the_key(project):
    """Review: --force went past a serving version that holds the key as MASTER_KEY itself
    (a Worker rolled back from the dashboard to a version from before the rotation): it
    seals new rows under that key, and a forced destroy left them unreadable by anything."""
    root, cf, _, store = project
    assert run_cli("secrets", "push", "--env", "staging").exit_code == 0
    old_only = cf.script("tminus-api-staging").active.id
    _rotate_and_finish(root)
    cf.script("tminus-api-staging").deploy([(old_only, 100.0)], "rolled back from the dashboard")
    forced = run_cli("keys", "destroy", OLD_KID, "--env", "staging", "--yes", "--force", "--json")
    assert forced.exit_code == 2, forced.output
    assert "seals new rows under it" in forced.output
    assert store.read("MASTER_KEY", "previous") == OLD_SECRET


def test_compromise_abort_and_cryptoperiod(project):
    root, _, _, store = project
    edit_manifest(root, 'kind = "jwt-hs256"', 'kind = "jwt-hs256"\nmax_age = "30d"')
    env = root / ".env.staging"
    year = [line for line in env.read_text().splitlines() if "JWT_SECRET set" in line][0]
    env.write_text(env.read_text().replace(year, "# keyrotate: JWT_SECRET set 2020-01-01T00:00:00+00:00"))
    code, listing = _keys()
    jwt = [k for k in listing["keys"] if k["secret"] == "JWT_SECRET"][0]
    assert code == 1 and jwt["overdue"] and listing["overdue"] == [jwt["key"]]
    assert jwt["cryptoperiod_days"] == 30 and jwt["due_at"].startswith("2020-01-31")
    status = run_cli("status", "--env", "staging", "--json")      # max_age, no --due needed
    assert status.exit_code == 1 and last_json(status.output)["due"] == ["JWT_SECRET"]
    assert _keys("--due", "36500d")[0] == 0                         # --due wins over max_age
    metrics = run_cli("status", "--env", "staging", "--format", "openmetrics").stdout
    states = {(s.labels["key"], s.labels["keyrotate_key_state"]): s.value
              for f in text_string_to_metric_families(metrics) if f.name == "keyrotate_key_state"
              for s in f.samples}
    assert states[(jwt["key"], "active")] == 1 and states[(jwt["key"], "compromised")] == 0
    assert states[(OLD_KID, "active")] == 1

    staged = run_cli("rotate", "JWT_SECRET", "--env", "staging", "--compromised", "--yes")
    assert staged.exit_code == 0, staged.output
    _, listing = _keys()
    states = {k["key"]: k["state"] for k in listing["keys"] if k["secret"] == "JWT_SECRET"}
    assert states[jwt["key"]] == "compromised" and "active" in states.values()



def test_an_aborted_rotation_destroys_the_key_it_staged(project):
    """A rotation that only staged its new value (stopped before any push) is aborted: the
    pending value is discarded, and the trail says that key was destroyed unused."""
    from keyrotate.config.context import Context
    from keyrotate.rotation.rotate import _new_rotation
    from keyrotate.rotation.state import Recorder
    from keyrotate.rotation.steps import Job, Stage

    root, _, _, store = project
    with_overlap(root)
    ctx = Context.load("staging")
    try:
        spec = ctx.manifest.secret("MASTER_KEY")
        recorder = Recorder(ctx)
        rot = _new_rotation(ctx, spec, "overlap", False)
        recorder.started(rot)
        Stage().run(Job(ctx, spec, rot, print))
        recorder.step_done(rot, "stage")
    finally:
        ctx.close()
    staged = MasterKey.from_secret(store.read("MASTER_KEY", "pending")).kid
    assert _key(_keys()[1], staged)["state"] == "pre-activation"
    aborted = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--abort")
    assert aborted.exit_code == 0, aborted.output
    key = _key(_keys()[1], staged)
    assert key["state"] == "destroyed" and key["locations"] == []
    assert [t["state"] for t in key["history"]] == ["pre-activation", "destroyed"]
    assert _key(_keys()[1], OLD_KID)["state"] == "active"


def _store_project(root, base):
    """The project's secrets in another store (same values as the .env store had)."""
    edit_manifest(root, 'secrets = "dotenv:.env.staging"', f'secrets = "{base}"')


@pytest.mark.parametrize("kind", ["keyring", "vault"])
def test_a_full_rotation_then_destroy_leaves_no_copy_in_keyring_or_vault(project, kind, request):
    root, _, _, dotenv = project
    if kind == "keyring":
        request.getfixturevalue("keyring_env")
        service = "kr-" + uuid.uuid4().hex[:10]
        store, base = KeyringStore(service), f"keyring:{service}"
    else:
        request.getfixturevalue("vault_env")
        path = f"kr-{uuid.uuid4().hex[:10]}/staging"
        store, base = VaultStore(f"secret/{path}"), f"vault:secret/{path}"
    for name in ("MASTER_KEY", "JWT_SECRET", "GOOGLE_CLIENT_SECRET"):
        store.write_pending(name, dotenv.read(name))
        store.promote(name)
    _store_project(root, base)
    _rotate_and_finish(root)
    new = store.read("MASTER_KEY")
    assert store.read("MASTER_KEY", "previous") == OLD_SECRET

    done = run_cli("keys", "destroy", OLD_KID, "--env", "staging", "--yes", "--json")
    assert done.exit_code == 0, done.output
    out = last_json(done.output)
    assert out["destroyed"] and all(ref.startswith(base.split("/")[0]) for ref in out["destroyed"])

    if kind == "keyring":
        import keyring

        entries = {user: keyring.get_password(service, user) for user in
                   ("MASTER_KEY", "MASTER_KEY_PENDING", "MASTER_KEY_PREVIOUS")}
        assert entries == {"MASTER_KEY": new, "MASTER_KEY_PENDING": None, "MASTER_KEY_PREVIOUS": None}
        for name in ("JWT_SECRET", "GOOGLE_CLIENT_SECRET", "KEYROTATE_AUDIT_KEY"):
            assert keyring.get_password(service, name) not in (None, OLD_SECRET)
    else:
        client = hvac.Client()
        meta = client.secrets.kv.v2.read_secret_metadata(path=f"{path}/MASTER_KEY",
                                                         mount_point="secret")["data"]
        held = []
        for v, info in meta["versions"].items():
            if info["destroyed"]:
                continue
            data = client.secrets.kv.v2.read_secret_version(
                path=f"{path}/MASTER_KEY", version=int(v), mount_point="secret",
                raise_on_deleted_version=False)["data"]["data"]
            held += [str(x) for x in data.values()]
        assert OLD_SECRET not in held and new in held
        assert sorted(int(r.rpartition("@")[2]) for r in out["destroyed"]) == sorted(
            int(v) for v, info in meta["versions"].items() if info["destroyed"])
    assert store.read("MASTER_KEY") == new
    _, listing = _keys()
    assert _key(listing, OLD_KID)["state"] == "destroyed"
    assert run_cli("audit", "verify", "--env", "staging").exit_code == 0


def test_residue_dates_d1_time_travel_from_the_verify_that_moved_the_last_row(project):
    """On a d1:// database the rows sealed under a retired key stay restorable by Time
    Travel: 30 days on Workers Paid (7 on Free) after the verify that proved none left."""
    from datetime import timedelta

    from keyrotate.timeutil import parse_utc

    root = project[0]
    edit_manifest(root, 'database = "file:staging.db"', 'database = "d1://acct/staging"')
    _rotate_and_finish(root)
    verified = [e for e in _trail() if e["event"] == "rotation.step" and e["step"] == "re-verify"][-1]
    at = parse_utc(verified["at"])
    out = last_json(run_cli("keys", "residue", OLD_KID, "--env", "staging", "--json").output)
    [tt] = [p for p in out["places"] if p["kind"] == "time-travel"]
    assert tt["until"] == (at + timedelta(days=30)).date().isoformat() and not tt["in_reach"]
    assert (at + timedelta(days=7)).date().isoformat() in tt["note"] and "Free" in tt["note"]
    assert tt["holds"] == "rows sealed under it"


def test_a_second_rotation_records_the_previous_value_its_promote_replaced(project):
    """Hostile review: a .env store keeps one previous value; the second rotation's promote
    overwrote the first key's only copy, and the key stayed `deactivated` forever with no
    trace of its end. Its destruction is recorded, with where it was."""
    root, _, _, store = project
    run_cli("secrets", "push", "--env", "staging")
    with_overlap(root)
    for _ in range(2):
        assert run_cli("rotate", "MASTER_KEY", "--env", "staging").exit_code == 0
        assert run_cli("rotate", "MASTER_KEY", "--env", "staging", "--finish").exit_code == 0
    assert OLD_SECRET not in (store.read("MASTER_KEY"), store.read("MASTER_KEY", "previous"))
    _, listing = _keys()
    first = _key(listing, OLD_KID)
    assert first["state"] == "destroyed" and first["locations"] == []
    ended = [e for e in _trail() if e["event"] == "key.state"
             and e["detail"].get("state") == "destroyed"]
    assert ended and ended[-1]["detail"]["destroyed"] == [store.ref("MASTER_KEY", "previous")]


def test_the_promote_records_the_value_it_replaced_before_anything_else_happens(project):
    """Hostile review: the promote's record rode with the rotation's end. A kill between
    the two (here: the command dies at the end, and nothing it deferred is written) lost
    the record that the store's previous value was destroyed, and the same command again
    had nothing left to promote: the key stayed `deactivated`, gone from the store with
    no evidence. A step that changes the store is recorded at once."""
    from keyrotate.config.context import Context
    from keyrotate.evidence.trail import AuditTrail
    from keyrotate.rotation.state import Recorder

    root, _, _, store = project
    run_cli("secrets", "push", "--env", "staging")
    with_overlap(root)
    assert run_cli("rotate", "MASTER_KEY", "--env", "staging").exit_code == 0
    assert run_cli("rotate", "MASTER_KEY", "--env", "staging", "--finish").exit_code == 0
    assert run_cli("rotate", "MASTER_KEY", "--env", "staging").exit_code == 0

    def killed(self, rot, state, **detail):
        raise SystemExit(137)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Recorder, "ended", killed)               # dies before the end's append
        patch.setattr(AuditTrail, "close", lambda self: None)  # and writes nothing more
        patch.setattr(Context, "settle", lambda self: None)
        run_cli("rotate", "MASTER_KEY", "--env", "staging", "--finish")
    assert store.read("MASTER_KEY", "previous") != OLD_SECRET   # the promote happened
    again = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--finish")
    assert again.exit_code == 0, again.output
    _, listing = _keys()
    first = _key(listing, OLD_KID)
    assert first["state"] == "destroyed" and first["locations"] == []


def test_an_abort_after_the_switch_makes_the_old_key_active_again(project):
    """Hostile review: after `--abort` past the switch, the key every Worker seals under
    again was listed `deactivated` (never due), and the new key's end read "discarded before
    use" although rows had been sealed under it."""
    root, _, _, store = project
    run_cli("secrets", "push", "--env", "staging")
    with_overlap(root)
    assert run_cli("rotate", "MASTER_KEY", "--env", "staging").exit_code == 0
    new_kid = MasterKey.from_secret(store.read("MASTER_KEY", "pending")).kid
    aborted = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--abort")
    assert aborted.exit_code == 0, aborted.output
    assert "accounts.encrypted_tokens back to the old key" in aborted.output
    _, listing = _keys()
    old = _key(listing, OLD_KID)
    assert old["state"] == "active" and old["history"][-1]["why"].startswith("the abort put it back")
    new = _key(listing, new_kid)
    assert [t["state"] for t in new["history"]] == ["pre-activation", "active", "destroyed"]
    assert "after use" in new["history"][-1]["why"]
