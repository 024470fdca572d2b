"""The audit trail: in the environment's database, each event authenticated by the
environment's audit key (an HMAC chain), one history for every operator. Every forgery
someone with write access to the database can make is named by `audit verify`: a forged
insert, an INSERT OR REPLACE, a rebuilt chain, another machine's tail deleted, a witness
deleted or cut; trails keyrotate 0.1 wrote (SHA-256 only) still verify, as a sealed prefix."""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import uuid

import pytest

from keyrotate.db.connect import open_database
from keyrotate.db.own_schema import ensure_journal_schema
from keyrotate.evidence.chain import digest
from keyrotate.evidence.event import Event
from keyrotate.evidence.trail import AuditTrail
from keyrotate.evidence.verify import verify_trail
from keyrotate.secrets.audit_key import AUDIT_KEY, AuditKey
from tests.support.cloudflare_project import with_overlap
from tests.support.helpers import last_json, run_cli

pytestmark = pytest.mark.slow


def _rotate(root):
    with_overlap(root)
    res = run_cli("rotate", "MASTER_KEY", "--env", "staging")
    assert res.exit_code == 0, res.output


def _db(root):
    return sqlite3.connect(root / "staging.db", isolation_level=None)


def _verify(*flags):
    res = run_cli("audit", "verify", "--env", "staging", "--json", *flags)
    return res.exit_code, last_json(res.output)


def _independent_mac(audit_key: str, prev: str, record: dict) -> str:
    """The README's chain, computed the way an auditor would, with OpenSSL's HMAC (cryptography), not
    keyrotate's: HMAC-SHA256(audit_key, prev_mac || canonical event)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.hmac import HMAC

    mac = HMAC(audit_key.encode(), hashes.SHA256())
    mac.update(prev.encode() + json.dumps(record, sort_keys=True, separators=(",", ":"),
                                          ensure_ascii=False).encode())
    return mac.finalize().hex()


def _key(store) -> AuditKey:
    return AuditKey.from_value(store.read(AUDIT_KEY), "test")


def _rows(root):
    return _db(root).execute("SELECT seq, record, prev_hash, hash FROM keyrotate_audit "
                             "ORDER BY seq").fetchall()


def test_a_rotation_leaves_an_authenticated_timeline(project):
    root, _, _, store = project
    _rotate(root)
    shown = last_json(run_cli("audit", "show", "--env", "staging", "--json").output)["events"]
    # the first command that needs the audit key makes it, and the trail says so
    assert shown[0]["event"] == "key.state" and shown[0]["secret"] == AUDIT_KEY
    assert [e["event"] for e in shown if e["event"].startswith("rotation.")][0] == "rotation.started"
    assert [e["step"] for e in shown if e["event"] == "rotation.step"][-1] == "awaiting-finish"
    assert all(e["operator"] and "@" in e["operator"] for e in shown)
    key = _key(store)
    rows = _rows(root)
    assert len(rows) == len(shown) and rows[0][2] == "0" * 64
    for i, (_, record, prev, mac) in enumerate(rows):
        assert prev == (rows[i - 1][3] if i else "0" * 64)          # each follows the one before
        assert _independent_mac(store.read(AUDIT_KEY), prev, json.loads(record)) == mac
    assert store.read(AUDIT_KEY).encode() not in (root / "staging.db").read_bytes()   # never there
    code, out = _verify()
    assert code == 0 and out["ok"] and out["events"] == len(rows) == out["witnessed_locally"]
    assert out["authenticated"] == len(rows) and out["audit_key"] == key.id
    assert out["store_head"] == rows[-1][0]       # the store keeps the head the command left
    text = run_cli("audit", "show", "--env", "staging", "--last", "2").output
    assert "awaiting-finish" in text and "#" in text


def test_the_table_refuses_updates_deletes_and_replaces(project):
    root = project[0]
    _rotate(root)
    conn = _db(root)
    seq, record, prev, mac = _rows(root)[3]
    for sql, params in (("UPDATE keyrotate_audit SET event = 'x'", ()),
                        ("DELETE FROM keyrotate_audit", ()),
                        # REPLACE deletes the row in the way without firing the delete trigger
                        ("INSERT OR REPLACE INTO keyrotate_audit (seq, environment, at, event, "
                         "record, prev_hash, hash) VALUES (?, 'staging', 'now', 'x', ?, ?, ?)",
                         (seq, record, prev, mac)),
                        ("REPLACE INTO keyrotate_audit (environment, at, event, record, prev_hash, "
                         "hash) VALUES ('staging', 'now', 'x', ?, ?, ?)", (record, prev, mac))):
        with pytest.raises(sqlite3.IntegrityError, match="append-only|place in the chain is taken"):
            conn.execute(sql, params)
    assert _rows(root)[3] == (seq, record, prev, mac)


def _tamper(root, *statements):
    """What someone with write access to the database could do: drop the triggers first."""
    conn = _db(root)
    for trigger in ("no_update", "no_delete", "no_replace"):
        conn.execute(f"DROP TRIGGER IF EXISTS keyrotate_audit_{trigger}")
    for sql, params in statements:
        conn.execute(sql, params)
    conn.close()


def _seqs(root):
    return [r[0] for r in _rows(root)]


def test_an_altered_event_is_named(project):
    root = project[0]
    _rotate(root)
    seq = _seqs(root)[3]
    record = json.loads(_db(root).execute("SELECT record FROM keyrotate_audit WHERE seq = ?",
                                          (seq,)).fetchone()[0])
    record["summary"] = "nothing happened here"
    _tamper(root, ("UPDATE keyrotate_audit SET record = ? WHERE seq = ?", (json.dumps(record), seq)))
    code, out = _verify()
    assert code == 1 and out["problem"]["seq"] == seq and out["problem"]["kind"] == "altered"
    text = run_cli("audit", "verify", "--env", "staging")
    assert text.exit_code == 1 and f"event #{seq}" in text.output and "not authentic" in text.output


@pytest.mark.parametrize("column, value", [("event", "rotation.started"), ("secret", "JWT_SECRET"),
                                           ("at", "2020-01-01T00:00:00+00:00"),
                                           ("rotation_id", "rot-forged")])
def test_a_plain_column_edited_beside_its_record_is_named(project, column, value):
    """The record is authenticated; the columns beside it (which queries select by: the
    events a key's lifecycle reads) were not compared with it, so an edited column hid an
    event from them while `audit verify` passed."""
    root = project[0]
    _rotate(root)
    seq = _seqs(root)[3]
    _tamper(root, (f"UPDATE keyrotate_audit SET {column} = ? WHERE seq = ?", (value, seq)))
    code, out = _verify()
    assert code == 1 and out["problem"]["seq"] == seq and out["problem"]["kind"] == "columns", out
    assert f"columns ({column})" in out["problem"]["message"], out["problem"]


def test_a_record_with_a_key_given_twice_is_named(project):
    """Hostile review: a record prefixed with {"event": "secret.destroyed", ...} still
    verified (the MAC is checked over Python's parse, which keeps a duplicated key's last
    value) while SQLite's json_extract read the forged first value."""
    root = project[0]
    _rotate(root)
    seq = _seqs(root)[3]
    (text,) = _db(root).execute("SELECT record FROM keyrotate_audit WHERE seq = ?",
                                (seq,)).fetchone()
    forged = '{"event": "secret.destroyed", ' + text[1:]
    _tamper(root, ("UPDATE keyrotate_audit SET record = ? WHERE seq = ?", (forged, seq)))
    assert _db(root).execute("SELECT json_extract(record, '$.event') FROM keyrotate_audit "
                             "WHERE seq = ?", (seq,)).fetchone() == ("secret.destroyed",)
    code, out = _verify()
    assert code == 1 and out["problem"]["seq"] == seq and out["problem"]["kind"] == "altered", out


def test_a_removed_event_is_named(project):
    root = project[0]
    _rotate(root)
    seqs = _seqs(root)
    _tamper(root, ("DELETE FROM keyrotate_audit WHERE seq = ?", (seqs[2],)))
    code, out = _verify()
    assert code == 1 and out["problem"]["seq"] == seqs[3] and out["problem"]["kind"] == "broken-before"


def test_reordered_events_are_named(project):
    root = project[0]
    _rotate(root)
    a, b = _seqs(root)[2:4]
    _tamper(root, ("UPDATE keyrotate_audit SET seq = -1 WHERE seq = ?", (a,)),
            ("UPDATE keyrotate_audit SET seq = ? WHERE seq = ?", (a, b)),
            ("UPDATE keyrotate_audit SET seq = ? WHERE seq = -1", (b,)))
    code, out = _verify()
    assert code == 1 and out["problem"]["seq"] == a and out["problem"]["kind"] == "reordered"


def _forged_finish(root, prev, mac_of):
    """A rotation.finished naming someone else, appended after `prev`."""
    record = json.loads(_rows(root)[-1][1])
    record.update(event="rotation.finished", operator="mallory@elsewhere", prev=prev,
                  summary="MASTER_KEY rotation finished.")
    return record, mac_of(record)


def test_a_forged_insert_is_named(project):
    """Appended at the end with a valid SHA-256 link (what keyrotate 0.1 checked), or with
    a made-up MAC: neither verifies without the audit key."""
    root = project[0]
    _rotate(root)
    head = _rows(root)[-1][3]
    record, h = _forged_finish(root, head, digest)
    record.pop("chain_key")
    _tamper(root, ("INSERT INTO keyrotate_audit (environment, at, event, record, prev_hash, hash) "
                   "VALUES ('staging', ?, 'rotation.finished', ?, ?, ?)",
                   (record["at"], json.dumps(record), head, h)))
    code, out = _verify()
    assert code == 1 and out["problem"]["kind"] == "unkeyed", out
    assert out["problem"]["seq"] == _seqs(root)[-1]

    _tamper(root, ("DELETE FROM keyrotate_audit WHERE seq = ?", (_seqs(root)[-1],)))
    record, h = _forged_finish(root, head, digest)     # keeps chain_key: looks keyed
    _tamper(root, ("INSERT INTO keyrotate_audit (environment, at, event, record, prev_hash, hash) "
                   "VALUES ('staging', ?, 'rotation.finished', ?, ?, ?)",
                   (record["at"], json.dumps(record), head, h)))
    code, out = _verify()
    assert code == 1 and out["problem"]["kind"] == "altered" and "not authentic" in out["problem"]["message"]


def test_an_event_replaced_in_place_is_named(project):
    """INSERT OR REPLACE at an event's place (the trigger dropped first), its successors
    re-linked as keyrotate 0.1 would have accepted."""
    root = project[0]
    _rotate(root)
    rows = _rows(root)
    seq, text, prev, _ = rows[4]
    record = json.loads(text)
    record["operator"] = "mallory@elsewhere"
    statements, link = [], prev
    for i, (s, t, _, _) in enumerate(rows[4:]):
        r = record if i == 0 else json.loads(t)
        r["prev"] = link
        link = digest(r)
        statements.append(("INSERT OR REPLACE INTO keyrotate_audit (seq, environment, at, event, "
                           "record, prev_hash, hash) VALUES (?, 'staging', ?, ?, ?, ?, ?)",
                           (s, r["at"], r["event"], json.dumps(r), r["prev"], link)))
    _tamper(root, *statements)
    (root / ".keyrotate" / "audit-staging.jsonl").unlink()   # and the witness out of the way
    code, out = _verify()
    assert code == 1 and out["problem"]["seq"] == seq and out["problem"]["kind"] == "altered"


def test_a_rebuilt_chain_is_named_even_without_a_witness(project):
    """Every event after an edit re-linked (SHA-256, as 0.1 did), and the witness deleted:
    the MAC of the first edited event gives it away."""
    root = project[0]
    _rotate(root)
    rows = _rows(root)
    statements, prev = [], "0" * 64
    for i, (seq, text, _, _) in enumerate(rows):
        record = json.loads(text)
        if i == 1:
            record["operator"] = "someone-else@elsewhere"
        record["prev"] = prev
        prev = digest(record) if i else rows[0][3]
        statements.append(("UPDATE keyrotate_audit SET record = ?, prev_hash = ?, hash = ? "
                           "WHERE seq = ?", (json.dumps(record), record["prev"], prev, seq)))
    _tamper(root, *statements[1:])
    (root / ".keyrotate" / "audit-staging.jsonl").unlink()
    code, out = _verify()
    assert code == 1 and out["problem"]["seq"] == rows[1][0] and out["problem"]["kind"] == "altered"


def test_another_machines_tail_deleted_is_named(project, tmp_path_factory):
    """A second checkout (its own witness) appends to the same database and store; its
    last event is then deleted. Only the head the store recorded can tell."""
    root, _, _, store = project
    _rotate(root)
    other = tmp_path_factory.mktemp("other-machine")
    manifest = (root / "keyrotate.toml").read_text()
    (other / "keyrotate.toml").write_text(
        manifest.replace('database = "file:staging.db"', f'database = "file:{root}/staging.db"')
        .replace('secrets = "dotenv:.env.staging"', f'secrets = "dotenv:{root}/.env.staging"'))
    for w in ("api", "oauth", "webhook"):
        shutil.copytree(root / "workers" / w, other / "workers" / w)
    pushed = run_cli("secrets", "push", "--env", "staging", "--only", "JWT_SECRET",
                     "--manifest", str(other / "keyrotate.toml"))
    assert pushed.exit_code == 0, pushed.output
    assert _verify()[0] == 0
    last, mac = _rows(root)[-1][0], _rows(root)[-1][3]
    assert store.read("KEYROTATE_AUDIT_HEAD_STAGING") == mac     # the other machine's head
    _tamper(root, ("DELETE FROM keyrotate_audit WHERE seq = ?", (last,)))
    code, out = _verify()
    assert code == 1 and out["problem"]["kind"] == "cut" and mac[:16] in out["problem"]["message"]


def test_a_missing_or_cut_witness_is_a_finding(project):
    root = project[0]
    _rotate(root)
    witness = root / ".keyrotate" / "audit-staging.jsonl"
    kept = witness.read_bytes()
    code, out = _verify()
    assert code == 0 and out["witnessed_locally"] == out["events"]

    witness.write_bytes(kept[:-2] + b"\n")          # one line cut short by a byte
    code, out = _verify()
    assert code == 1 and out["problem"]["kind"] == "witness-malformed"

    lines = kept.splitlines(keepends=True)
    witness.write_bytes(b"".join(lines[:-1]))       # one whole line gone
    assert _verify()[0] == 0, "the copy made before it was sent still holds it"
    sent = root / ".keyrotate" / "audit-staging.sent.jsonl"
    sent_kept = sent.read_bytes()
    last = json.loads(lines[-1])["hash"]
    sent.write_bytes(b"".join(ln for ln in sent_kept.splitlines(keepends=True)
                              if json.loads(ln)["hash"] != last))   # gone from both
    code, out = _verify()
    assert code == 1 and out["problem"]["kind"] == "witness-incomplete"
    sent.write_bytes(sent_kept)

    witness.unlink()
    code, out = _verify()
    assert code == 1 and out["problem"]["kind"] == "witness-missing"
    assert str(len(lines)) in out["problem"]["message"]
    text = run_cli("audit", "verify", "--env", "staging").output
    assert "is missing" in text

    witness.write_bytes(kept)
    assert _verify()[0] == 0


def test_a_trail_written_before_the_audit_key_still_verifies_as_a_sealed_prefix(project):
    """keyrotate 0.1 chained events with SHA-256 only. They verify, reported as unkeyed,
    and the first keyed event after them seals them: an edit to one is still found."""
    root, _, _, store = project
    conn = _db(root)
    ensure = run_cli("audit", "show", "--env", "staging")       # keyrotate's tables
    assert ensure.exit_code == 0
    prev = "0" * 64
    for i in range(3):
        record = {"v": 1, "event": "rotation.step", "env": "staging", "secret": "MASTER_KEY",
                  "rotation_id": "rot-old", "step": f"s{i}", "at": f"2026-01-0{i + 1}T00:00:00+00:00",
                  "old_fingerprint": None, "new_fingerprint": None, "summary": f"old step {i}",
                  "detail": {}, "operator": "ops@old", "prev": prev}
        h = digest(record)
        conn.execute("INSERT INTO keyrotate_audit (environment, at, event, rotation_id, secret, "
                     "record, prev_hash, hash) VALUES ('staging', ?, 'rotation.step', 'rot-old', "
                     "'MASTER_KEY', ?, ?, ?)", (record["at"], json.dumps(record), prev, h))
        prev = h
    conn.close()
    code, out = _verify()
    assert code == 0 and out["unkeyed"] == 3 and out["authenticated"] == 0
    assert store.read(AUDIT_KEY) is None          # reading the trail makes no key

    _rotate(root)                                  # the first keyed event follows them
    code, out = _verify()
    first = _seqs(root)[3]
    assert code == 0 and out["unkeyed"] == 3 and out["unkeyed_before"] == first, out
    text = run_cli("audit", "verify", "--env", "staging").output
    assert f"unkeyed before #{first}" in text

    rows = _rows(root)
    statements, link = [], "0" * 64
    for i, (seq, text, _, _) in enumerate(rows[:3]):   # edit an old one, re-link the old ones
        record = json.loads(text)
        if i == 1:
            record["operator"] = "mallory@elsewhere"
        record["prev"] = link
        link = digest(record)
        statements.append(("UPDATE keyrotate_audit SET record = ?, prev_hash = ?, hash = ? "
                           "WHERE seq = ?", (json.dumps(record), record["prev"], link, seq)))
    _tamper(root, *statements)
    code, out = _verify()
    assert code == 1 and out["problem"]["seq"] == first and out["problem"]["kind"] == "broken-before"


def test_one_environment_one_audit_key(project):
    """A store whose audit key is not the one the trail is authenticated with: verify says
    so, and nothing is appended with it; a store that lost its key never makes a new one
    over a keyed trail."""
    root, _, _, store = project
    _rotate(root)
    env = root / ".env.staging"
    original, value = env.read_text(), store.read(AUDIT_KEY)
    env.write_text("\n".join(line for line in original.splitlines()
                             if not line.startswith(AUDIT_KEY)) + "\n")
    refused = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--finish")
    assert refused.exit_code == 2 and "copy KEYROTATE_AUDIT_KEY" in refused.output
    assert run_cli("audit", "verify", "--env", "staging").exit_code == 2
    env.write_text(original.replace(value, "0123456789abcdef" * 4))
    code, out = _verify()
    assert code == 1 and out["problem"]["kind"] == "foreign-key"
    refused = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--finish")
    assert refused.exit_code == 2 and "one audit key" in refused.output


def test_a_head_read_ahead_is_used_once_and_never_after_the_trail_knows_its_head(tmp_path, ref_db):
    """The rotation lease's claim reads the trail's head ahead. Only the trail's first
    head read may take that answer: one made after the trail knew its head (a second
    rotation in the same rollover), or after an append lost its place, must come from the
    database, not from the claim's older answer."""
    from keyrotate.db.base import ReadAhead

    db = open_database(f"file:{ref_db(1)}")
    ensure_journal_schema(db)
    key = AuditKey.from_value(uuid.uuid4().hex + uuid.uuid4().hex, "test")
    trail = AuditTrail(db, "staging", tmp_path / "audit.jsonl", key)
    first = trail.append(Event("notify.test", "staging", "one"))
    stale = trail.head_read()
    trail.answered(ReadAhead([stale], [[("0" * 64, "{}")]]))   # older than the head
    assert trail.head() == first
    fresh = AuditTrail(db, "staging", tmp_path / "audit2.jsonl", key)
    fresh.answered(ReadAhead([stale], [[(first, "{}")]]))
    assert fresh.head() == first                              # its first read: the answer
    second = trail.append(Event("notify.test", "staging", "two"))
    fresh.answered(ReadAhead([stale], [[(first, "{}")]]))     # ignored: it knows its head
    assert fresh.head() == second
    db.close()


def test_two_operators_on_one_database_append_one_chain(sqld_server, tmp_path):
    """Two machines (two connections, two local copies) appending at once to a real
    libSQL server: every event lands, in one chain, and both copies check out."""
    env = "audit-" + uuid.uuid4().hex[:8]
    key = AuditKey.from_value(uuid.uuid4().hex + uuid.uuid4().hex, "test")
    trails = []
    for who in ("alice", "bob"):
        db = open_database(sqld_server[0])
        ensure_journal_schema(db)
        trails.append(AuditTrail(db, env, tmp_path / who / f"audit-{env}.jsonl", key))
    start = threading.Barrier(2)

    def work(trail: AuditTrail, who: str) -> None:
        start.wait()
        for i in range(25):
            trail.append(Event("rotation.step", env, f"{who} step {i}", "MASTER_KEY", "rot-x", f"s{i}"))

    threads = [threading.Thread(target=work, args=(t, w)) for t, w in zip(trails, ("alice", "bob"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    links = trails[0].links()
    assert len(links) == 50
    assert [link.prev_hash for link in links[1:]] == [link.hash for link in links[:-1]]
    for trail in trails:
        result = verify_trail(trail)
        assert result.problem is None and result.witnessed == 25
        trail.db.close()


def test_pushes_recorded_by_0_1_move_into_the_trail_and_their_table_goes(project):
    """keyrotate 0.1 kept pushes in keyrotate_events; the rollback guard must still see them."""
    from keyrotate.config.context import Context
    from keyrotate.evidence.worker_log import secret_history

    root = project[0]
    ctx = Context.load("staging")
    try:
        ctx.db.apply([], None, [])   # keyrotate's tables, keyrotate_events among them (0002)
        with _db(root) as conn:
            conn.execute("INSERT INTO keyrotate_events (environment, worker, kind, secret, "
                         "secret_kind, fingerprint, at, state) VALUES ('staging', "
                         "'tminus-api-staging', 'secret-push', 'MASTER_KEY', 'master-key', "
                         "'fp:0123456789ab', '2026-11-01T00:00:00+00:00', 'done')")
        history = secret_history(ctx, "tminus-api-staging")
        assert history.state_at(None) == {"MASTER_KEY": "fp:0123456789ab"}
    finally:
        ctx.close()
    tables = {r[0] for r in _db(root).execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "keyrotate_events" not in tables
    shown = last_json(run_cli("audit", "show", "--env", "staging", "--json").output)["events"]
    assert [e["detail"]["state"] for e in shown if e["event"] == "worker.secrets"] == ["intent", "done"]
    assert _verify()[0] == 0

    # hostile review: anyone who can write to the database made the table again, with a
    # forged push; a later command imported it, authenticated under the audit key
    with _db(root) as conn:
        conn.execute("CREATE TABLE keyrotate_events (id INTEGER PRIMARY KEY, environment TEXT, "
                     "worker TEXT, kind TEXT, secret TEXT, secret_kind TEXT, fingerprint TEXT, "
                     "at TEXT, state TEXT, version_id TEXT)")
        conn.execute("INSERT INTO keyrotate_events (environment, worker, kind, secret, secret_kind, "
                     "fingerprint, at, state) VALUES ('staging', 'tminus-api-staging', "
                     "'secret-push', 'MASTER_KEY', 'master-key', 'fp:000000000000', "
                     "'2026-11-02T00:00:00+00:00', 'done')")
    run_cli("keys", "--env", "staging")   # reads the pushes: the import would run here
    shown = last_json(run_cli("audit", "show", "--env", "staging", "--json").output)["events"]
    assert not any("fp:000000000000" in json.dumps(e) for e in shown)


def test_the_import_of_0_1s_pushes_lands_whole_or_not_at_all(project):
    """The import is one transaction: events, the record that it was made and the table's
    drop. Appended event by event, a failure part way left some of 0.1's pushes in the
    trail, the table still there, and no record of the import."""
    from keyrotate.config.context import Context
    from keyrotate.errors import KeyrotateError
    from keyrotate.evidence.worker_log import secret_history

    root = project[0]
    ctx = Context.load("staging")
    ctx.db.apply([], None, [])   # keyrotate's tables, keyrotate_events among them (0002)
    ctx.close()
    with _db(root) as conn:
        for n, worker in enumerate(("tminus-api-staging", "tminus-oauth-staging")):
            conn.execute("INSERT INTO keyrotate_events (environment, worker, kind, secret, "
                         "secret_kind, fingerprint, at, state) VALUES ('staging', ?, "
                         "'secret-push', 'MASTER_KEY', 'master-key', 'fp:0123456789ab', ?, 'done')",
                         (worker, f"2026-11-0{n + 1}T00:00:00+00:00"))
        # the database refuses the record of the import: the last statement of the import
        conn.execute("CREATE TRIGGER refuse_import BEFORE INSERT ON keyrotate_audit "
                     "WHEN NEW.event = 'trail.legacy-import' BEGIN SELECT RAISE(ABORT, 'no'); END")
    ctx = Context.load("staging")
    try:
        with pytest.raises(KeyrotateError):
            secret_history(ctx, "tminus-api-staging")
    finally:
        ctx.close()
    with _db(root) as conn:
        imported = conn.execute("SELECT count(*) FROM keyrotate_audit WHERE record LIKE "
                                "'%\"imported\": true%'").fetchone()[0]
        left = conn.execute("SELECT count(*) FROM keyrotate_events").fetchone()[0]
        conn.execute("DROP TRIGGER refuse_import")
    assert (imported, left) == (0, 2)
    ctx = Context.load("staging")
    try:
        assert secret_history(ctx, "tminus-oauth-staging").state_at(None) == {
            "MASTER_KEY": "fp:0123456789ab"}
    finally:
        ctx.close()
    assert _verify()[0] == 0


def test_a_lost_answer_with_another_append_before_the_resend_is_recorded_once(cf, tmp_path, ref_db):
    """Review: on D1 one operator's append committed and its answer was lost; another
    appended before the client sent it again; the resend met its own place taken. That is
    its own append (the place after the head it built on holds its record), not a lost
    race: appending again recorded the event twice, and `audit verify` then named this
    machine's own copy as missing an event."""
    cf.d1["db1"] = str(ref_db(1))
    key = AuditKey.from_value(uuid.uuid4().hex + uuid.uuid4().hex, "test")
    trails = []
    for who in ("alice", "bob"):
        db = open_database("d1://acct/db1")
        ensure_journal_schema(db)
        trails.append(AuditTrail(db, "staging", tmp_path / who / "audit-staging.jsonl", key))
    alice, bob = trails
    alice.append(Event("notify.test", "staging", "alice first"))
    cf.matching_faults.append(("commit-drop", b"alice second"))
    cf.on_commit_drop.append(lambda: bob.append(Event("notify.test", "staging", "bob meanwhile")))
    alice.append(Event("notify.test", "staging", "alice second"))
    assert not cf.matching_faults, "the lost answer was met"
    summaries = [link.record["summary"] for link in alice.links()]
    assert summaries == ["alice first", "alice second", "bob meanwhile"], summaries
    alice.append(Event("notify.test", "staging", "alice third"))   # after the head it missed
    for trail in trails:
        result = verify_trail(trail)
        assert result.problem is None, result.problem
        trail.db.close()


def _d1_trail_with_one_event(cf, tmp_path, ref_db):
    """A trail on d1:// (the stand-in) holding one event, "first": (db, key, trail)."""
    cf.d1["db1"] = str(ref_db(1))
    key = AuditKey.from_value(uuid.uuid4().hex + uuid.uuid4().hex, "test")
    db = open_database("d1://acct/db1")
    ensure_journal_schema(db)
    trail = AuditTrail(db, "staging", tmp_path / "audit-staging.jsonl", key)
    trail.append(Event("notify.test", "staging", "first"))
    return db, key, trail


def test_an_append_whose_landing_cannot_be_read_is_not_made_again(cf, tmp_path, ref_db):
    """Review: the append committed, its answer was lost, the resend met its own place,
    and the read that would tell whether it landed failed too. Taking "could not tell"
    for "did not land" appended the events again (twice in the trail, and this machine's
    copy then short of one). Now nothing more is appended by that command: exit 3."""
    from keyrotate.errors import StoreUnavailable

    db, key, trail = _d1_trail_with_one_event(cf, tmp_path, ref_db)
    cf.matching_faults.extend([("commit-drop", b"second"),
                               ("429:600", b"prev_hash = ?")])   # the check: not in reach
    with pytest.raises(StoreUnavailable, match="run the same command again"):
        trail.append(Event("notify.test", "staging", "second"))
    assert not cf.matching_faults, "the lost answer and the failed check were met"
    with pytest.raises(StoreUnavailable):
        trail.append(Event("notify.test", "staging", "third"))
    fresh = AuditTrail(db, "staging", tmp_path / "other-audit-staging.jsonl", key)
    assert [link.record["summary"] for link in fresh.links()] == ["first", "second"]
    db.close()


def test_an_interrupt_after_an_append_committed_loses_and_repeats_nothing(tmp_path, ref_db):
    """Review: Ctrl-C (or SIGTERM) arrived while an append that carried deferred records
    waited for its answer, after D1 committed it. The cleanup's append (rotation.paused)
    was built again on the old head with the same records first, was taken for landed by
    its first record, and never landed: the trail lacked an event this machine's copy
    holds, and `audit verify` said TAMPERED for good."""
    db = open_database(f"file:{ref_db(1)}")
    ensure_journal_schema(db)
    key = AuditKey.from_value(uuid.uuid4().hex + uuid.uuid4().hex, "test")
    trail = AuditTrail(db, "staging", tmp_path / "audit-staging.jsonl", key)
    trail.append(Event("notify.test", "staging", "first"))
    trail.defer(Event("notify.test", "staging", "deferred step"))
    real_apply = db.apply

    def interrupted_after_the_commit(*args, **kwargs):
        real_apply(*args, **kwargs)
        raise KeyboardInterrupt

    db.apply = interrupted_after_the_commit
    with pytest.raises(KeyboardInterrupt):
        trail.append(Event("notify.test", "staging", "step"))
    db.apply = real_apply
    trail.append(Event("notify.test", "staging", "paused"))   # the cleanup's record
    summaries = [link.record["summary"] for link in trail.links()]
    assert summaries == ["first", "deferred step", "step", "paused"], summaries
    result = verify_trail(trail)
    assert result.problem is None, result.problem
    db.close()


def test_an_interrupted_append_that_commits_after_the_look_is_neither_repeated_nor_a_finding(
        tmp_path, ref_db):
    """Review: SIGTERM came while an append's request was on its way to D1; the look
    that tells whether it landed saw nothing, and then the abandoned request committed.
    The cleanup's append recorded the queued events again (duplicates), and this
    machine's copy never held the late ones: `audit verify` said TAMPERED for good. Now
    nothing more is appended by that command, and the copy holds every event it sent
    (unconfirmed until it landed), so the late ones are not a finding."""
    from keyrotate.errors import StoreUnavailable

    db = open_database(f"file:{ref_db(1)}")
    ensure_journal_schema(db)
    key = AuditKey.from_value(uuid.uuid4().hex + uuid.uuid4().hex, "test")
    witness = tmp_path / "audit-staging.jsonl"
    trail = AuditTrail(db, "staging", witness, key)
    trail.append(Event("notify.test", "staging", "first"))
    trail.defer(Event("notify.test", "staging", "deferred step"))
    real_apply = db.apply
    in_flight = []

    def interrupted_before_the_commit(*args, **kwargs):
        in_flight.append((args, kwargs))   # sent, not yet committed
        raise KeyboardInterrupt

    db.apply = interrupted_before_the_commit
    with pytest.raises(KeyboardInterrupt):
        trail.append(Event("notify.test", "staging", "step"))
    db.apply = real_apply
    (args, kwargs), = in_flight
    real_apply(*args, **kwargs)                      # it commits after the look
    with pytest.raises(StoreUnavailable):
        trail.append(Event("notify.test", "staging", "paused"))   # the cleanup's record
    after = AuditTrail(db, "staging", witness, key)   # the same machine's next command
    after.append(Event("notify.test", "staging", "resumed"))
    summaries = [link.record["summary"] for link in after.links()]
    assert summaries == ["first", "deferred step", "step", "resumed"], summaries
    result = verify_trail(after)
    assert result.problem is None, result.problem
    db.close()


def test_an_append_the_client_gave_up_on_ends_the_command_s_appends(cf, tmp_path, ref_db):
    """Read back in the final review: a request the D1 client gave up on (its last try
    dropped, a 5xx, a wait too long) may still commit after the look that says it did
    not land; appending the queued events again could record them twice. Only a
    refusal by the database (a lost race, a trigger, a guard) lets the command go on."""
    from keyrotate.errors import StoreUnavailable

    db, key, trail = _d1_trail_with_one_event(cf, tmp_path, ref_db)
    cf.matching_faults.append(("429:600", b"second"))
    with pytest.raises(StoreUnavailable):
        trail.append(Event("notify.test", "staging", "second"))
    assert not cf.matching_faults
    with pytest.raises(StoreUnavailable, match="run the same command again"):
        trail.append(Event("notify.test", "staging", "third"))
    fresh = AuditTrail(db, "staging", tmp_path / "audit-staging.jsonl", key)
    fresh.append(Event("notify.test", "staging", "next command"))
    assert [link.record["summary"] for link in fresh.links()] == ["first", "next command"]
    assert verify_trail(fresh).problem is None
    db.close()
