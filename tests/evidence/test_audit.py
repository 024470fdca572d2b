"""The audit trail: in the environment's database, hash chained, one history for every
operator; hand edits (altered, removed, reordered, rebuilt, cut) are named by
`audit verify`."""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid

import pytest

from keyrotate.db.connect import open_database
from keyrotate.db.own_schema import ensure_journal_schema
from keyrotate.evidence.chain import digest
from keyrotate.evidence.event import Event
from keyrotate.evidence.trail import AuditTrail
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


def test_a_rotation_leaves_a_timeline_in_the_database(project):
    root = project[0]
    _rotate(root)
    shown = last_json(run_cli("audit", "show", "--env", "staging", "--json").output)["events"]
    assert [e["event"] for e in shown][0] == "rotation.started"
    assert [e["step"] for e in shown if e["event"] == "rotation.step"][-1] == "awaiting-finish"
    assert all(e["operator"] and "@" in e["operator"] for e in shown)
    rows = _db(root).execute("SELECT record, prev_hash, hash FROM keyrotate_audit ORDER BY seq").fetchall()
    assert len(rows) == len(shown) and rows[0][1] == "0" * 64
    for (record, prev, h), (_, _, before) in zip(rows[1:], rows[:-1]):
        assert prev == before and digest(json.loads(record)) == h   # each follows the one before
    code, out = _verify()
    assert code == 0 and out["ok"] and out["events"] == len(rows) == out["witnessed_locally"]
    text = run_cli("audit", "show", "--env", "staging", "--last", "2").output
    assert "awaiting-finish" in text and "#" in text


def test_the_table_refuses_updates_and_deletes(project):
    root = project[0]
    _rotate(root)
    conn = _db(root)
    for sql in ("UPDATE keyrotate_audit SET event = 'x'", "DELETE FROM keyrotate_audit"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(sql)


def _tamper(root, *statements):
    """What someone with write access to the database could do: drop the triggers first."""
    conn = _db(root)
    conn.execute("DROP TRIGGER IF EXISTS keyrotate_audit_no_update")
    conn.execute("DROP TRIGGER IF EXISTS keyrotate_audit_no_delete")
    for sql, params in statements:
        conn.execute(sql, params)
    conn.close()


def _seqs(root):
    return [r[0] for r in _db(root).execute("SELECT seq FROM keyrotate_audit ORDER BY seq")]


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
    assert text.exit_code == 1 and f"event #{seq}" in text.output and "altered" in text.output


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


def test_a_rebuilt_or_cut_chain_is_caught_by_the_local_copy(project):
    root = project[0]
    _rotate(root)
    conn = _db(root)
    rows = conn.execute("SELECT seq, record FROM keyrotate_audit ORDER BY seq").fetchall()
    conn.close()
    # edit one event and recompute every hash after it: the chain itself holds again
    statements, prev = [], "0" * 64
    for i, (seq, text) in enumerate(rows):
        record = json.loads(text)
        if i == 1:
            record["operator"] = "someone-else@elsewhere"
        record["prev"] = prev
        h = digest(record)
        statements.append(("UPDATE keyrotate_audit SET record = ?, prev_hash = ?, hash = ? "
                           "WHERE seq = ?", (json.dumps(record), prev, h, seq)))
        prev = h
    _tamper(root, *statements)
    code, out = _verify()
    assert code == 1 and out["problem"]["kind"] == "missing"
    assert "this machine appended" in out["problem"]["message"]

    # and the trail cut short (the last events deleted) is caught the same way
    (root / ".keyrotate" / "audit-staging.jsonl").unlink()
    assert _verify()[0] == 0     # without a witness the rebuilt chain passes: hence the copies
    finish = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--finish")
    assert finish.exit_code == 0, finish.output
    last = _seqs(root)[-1]
    _tamper(root, ("DELETE FROM keyrotate_audit WHERE seq = ?", (last,)))
    code, out = _verify()
    assert code == 1 and out["problem"]["kind"] == "missing"


def test_two_operators_on_one_database_append_one_chain(sqld_server, tmp_path):
    """Two machines (two connections, two local copies) appending at once to a real
    libSQL server: every event lands, in one chain, and both copies check out."""
    env = "audit-" + uuid.uuid4().hex[:8]
    trails = []
    for who in ("alice", "bob"):
        db = open_database(sqld_server[0])
        ensure_journal_schema(db)
        trails.append(AuditTrail(db, env, tmp_path / who / f"audit-{env}.jsonl"))
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
        result = trail.verify()
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
