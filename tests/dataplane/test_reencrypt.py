"""reencrypt / verify on SQLite files: the issue's acceptance criteria, end to end."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import pytest

from keyrotate.crypto.keys import MasterKey
from keyrotate.dataplane.codec_refs import codec_from_refs
from keyrotate.dataplane.reencrypt import ReencryptOptions, reencrypt
from keyrotate.db.connect import open_database
from keyrotate.db.table_shape import resolve_target
from keyrotate.errors import Interrupted
from tests.support.helpers import (
    NEW_SECRET,
    OLD_SECRET,
    StopAfter,
    last_json,
    open_value,
    rows_of,
    run_cli,
)


def _reencrypt(db, keys, *extra):
    return run_cli("reencrypt", "--db", f"file:{db}", "--target", "accounts.encrypted_tokens",
                   "--old-key", keys["old"], "--new-key", keys["new"], "--json", *extra)


def _payloads(db, secret):
    return {k: open_value(v.decode(), secret) for k, v in rows_of(db).items() if v is not None}


@pytest.mark.parametrize("workers", ["0", "2"])
def test_rewrap_moves_every_row_and_keeps_iv_and_ciphertext(ref_db, keys_env, workers):
    db = ref_db(1200, null_every=100)
    before = rows_of(db)
    payloads = _payloads(db, OLD_SECRET)
    res = _reencrypt(db, keys_env, "--workers", workers, "--batch-size", "100")
    assert res.exit_code == 0, res.output
    out = last_json(res.output)
    assert out["status"] == "completed"
    assert out["rows_scanned"] == 1200 and out["rows_null"] == 12
    assert out["rows_rewritten"] == 1188 and out["rows_failed"] == 0
    assert _payloads(db, NEW_SECRET) == payloads
    for key, value in rows_of(db).items():
        if value is None:
            assert before[key] is None
            continue
        old, new = json.loads(before[key]), json.loads(value)
        assert (old["iv"], old["ciphertext"]) == (new["iv"], new["ciphertext"])
        assert new["kid"] == MasterKey.from_secret(NEW_SECRET).kid
        assert open_value(value.decode(), OLD_SECRET) is None

    verify = run_cli("verify", "--db", f"file:{db}", "--target", "accounts.encrypted_tokens",
                     "--key", keys_env["new"], "--old-key", keys_env["old"], "--json")
    assert verify.exit_code == 0, verify.output
    census = last_json(verify.output)
    assert (census["rows"], census["ok"], census["old"], census["null"], census["failed"]) == (1200, 1188, 0, 12, 0)

    again = last_json(_reencrypt(db, keys_env).output)
    assert again["rows_rewritten"] == 0 and again["rows_already_current"] == 1188
    assert again["run_id"] != out["run_id"] and not again["resumed"]


def test_fresh_dek_changes_dek_and_iv_keeps_payload(ref_db, keys_env):
    db = ref_db(300)
    before, payloads = rows_of(db), _payloads(db, OLD_SECRET)
    res = _reencrypt(db, keys_env, "--mode", "fresh-dek")
    assert res.exit_code == 0 and last_json(res.output)["rows_rewritten"] == 300
    assert _payloads(db, NEW_SECRET) == payloads
    for key, value in rows_of(db).items():
        old, new = json.loads(before[key]), json.loads(value)
        assert old["iv"] != new["iv"] and old["ciphertext"] != new["ciphertext"]
        assert old["encryptedDek"] != new["encryptedDek"]


def test_verify_counts_old_rows_and_fails(ref_db, keys_env):
    db = ref_db(50)
    res = run_cli("verify", "--db", f"file:{db}", "--target", "accounts.encrypted_tokens",
                  "--key", keys_env["new"], "--old-key", keys_env["old"], "--json")
    assert res.exit_code == 1
    assert last_json(res.output)["old"] == 50
    res = run_cli("verify", "--db", f"file:{db}", "--target", "accounts.encrypted_tokens",
                  "--key", keys_env["new"], "--json")
    census = last_json(res.output)
    assert res.exit_code == 1 and census["failed"] == 50


def test_malformed_rows_reported_untouched_others_rotated(ref_db, keys_env):
    db = ref_db(200)
    conn = sqlite3.connect(db)
    bad = {"acc_00000003": "{not json", "acc_00000050": "", "acc_00000120": '{"iv":"x"}'}
    for k, v in bad.items():
        conn.execute("UPDATE accounts SET encrypted_tokens = ? WHERE account_id = ?", (v, k))
    conn.execute("UPDATE accounts SET encrypted_tokens = NULL WHERE account_id = 'acc_00000007'")
    conn.commit()
    conn.close()
    before = rows_of(db)
    res = _reencrypt(db, keys_env, "--batch-size", "64")
    assert res.exit_code == 1, res.output
    out = last_json(res.output)
    assert out["rows_failed"] == 3 and out["rows_null"] == 1 and out["rows_rewritten"] == 196
    assert out["status"] == "completed_with_failures"
    reasons = {f["id"]: f["reason"] for f in out["failures"]}
    assert reasons == {"acc_00000003": "value is not valid JSON",
                       "acc_00000050": "value is an empty string",
                       "acc_00000120": "missing field ciphertext, encryptedDek, dekIv"}
    after = rows_of(db)
    for k in bad:
        assert after[k] == before[k]  # byte-identical
    shown = run_cli("runs", "--db", f"file:{db}", out["run_id"], "--json")
    assert {f["id"] for f in last_json(shown.output)["failures"]} == set(bad)


def test_dry_run_writes_nothing_not_even_the_journal(ref_db, keys_env):
    db = ref_db(120)
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    res = _reencrypt(db, keys_env, "--dry-run")
    assert res.exit_code == 0
    out = last_json(res.output)
    assert out["dry_run"] and out["rows_rewritten"] == 120 and out["run_id"] is None
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest
    tables = {r[0] for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master")}
    assert not any(t.startswith("keyrotate") for t in tables)


def test_interrupted_run_resumes_where_it_stopped(ref_db, keys_env):
    db = ref_db(1000)
    codec = codec_from_refs("tminus-envelope", keys_env["new"], keys_env["old"])
    store = open_database(f"file:{db}")
    target = resolve_target(store, "accounts.encrypted_tokens", None)
    with pytest.raises(Interrupted):
        reencrypt(store, target, codec, ReencryptOptions(batch_size=100, workers=0), StopAfter(3))
    store.close()
    done = sum(open_value(v.decode(), NEW_SECRET) is not None for v in rows_of(db).values())
    assert done == 300  # three committed batches, nothing else

    res = _reencrypt(db, keys_env, "--batch-size", "100")
    out = last_json(res.output)
    assert res.exit_code == 0 and out["resumed"]
    assert out["rows_scanned"] == 1000 and out["rows_rewritten"] == 1000  # counters span the run
    assert all(open_value(v.decode(), NEW_SECRET) for v in rows_of(db).values())
    runs = last_json(run_cli("runs", "--db", f"file:{db}", "--json").output)["runs"]
    assert len(runs) == 1 and runs[0]["status"] == "completed" and runs[0]["batches"] == 10


class _Meddler:
    """Wraps a store: just before a batch is written, another connection changes a row
    (or deletes it, when new_value is DELETE)."""

    DELETE = object()

    def __init__(self, store, db, victim, new_value):
        self.store, self.db, self.victim, self.new_value = store, db, victim, new_value
        self.done = False

    def __getattr__(self, name):
        return getattr(self.store, name)

    def apply(self, writes, target, statements):
        if not self.done and any(w[1] == self.victim for w in writes):
            self.done = True
            other = sqlite3.connect(self.db)
            if self.new_value is self.DELETE:
                other.execute("DELETE FROM accounts WHERE account_id = ?", (self.victim,))
            else:
                other.execute("UPDATE accounts SET encrypted_tokens = ? WHERE account_id = ?",
                              (self.new_value, self.victim))
            other.commit()
            other.close()
        return self.store.apply(writes, target, statements)


def test_concurrent_write_is_not_lost_and_is_picked_up_again(ref_db, keys_env):
    from keyrotate.crypto.envelope import seal

    db = ref_db(300)
    app_value = seal(b'{"access_token":"written by the app"}', MasterKey.from_secret(OLD_SECRET),
                     with_kid=False)
    codec = codec_from_refs("tminus-envelope", keys_env["new"], keys_env["old"])
    store = _Meddler(open_database(f"file:{db}"), db, "acc_00000150", app_value)
    target = resolve_target(store.store, "accounts.encrypted_tokens", None)
    result = reencrypt(store, target, codec, ReencryptOptions(batch_size=100, workers=0))
    assert result.counts.rows_conflicted == 1
    assert result.counts.rows_rewritten == 300
    value = rows_of(db)["acc_00000150"].decode()
    assert open_value(value, NEW_SECRET) == b'{"access_token":"written by the app"}'


def test_a_row_deleted_under_the_run_leaves_its_counters_and_the_run_completes(ref_db, keys_env):
    """The compare-and-swap misses a row the application deleted: nothing is left to
    prove, so the counters drop it too and agree with the census (not exit 3 forever)."""
    db = ref_db(300)
    codec = codec_from_refs("tminus-envelope", keys_env["new"], keys_env["old"])
    store = _Meddler(open_database(f"file:{db}"), db, "acc_00000150", _Meddler.DELETE)
    target = resolve_target(store.store, "accounts.encrypted_tokens", None)
    result = reencrypt(store, target, codec, ReencryptOptions(batch_size=100, workers=0))
    assert store.done and "acc_00000150" not in rows_of(db)
    assert result.status == "completed", result.problems
    assert result.counts.rows_scanned == result.census.rows == 299
    assert result.counts.rows_rewritten == 299 and result.counts.rows_conflicted == 1


@pytest.mark.parametrize("args,message", [
    (["--target", "nosuch.encrypted_tokens"], "table 'nosuch' does not exist"),
    (["--target", "accounts.nosuch"], "column 'nosuch' does not exist"),
    (["--target", "accounts"], "must be TABLE.COLUMN"),
    (["--old-key", OLD_SECRET], "literal keys are refused"),
    (["--old-key", "env:KR_UNSET_VARIABLE"], "env:KR_UNSET_VARIABLE is not set"),
    (["--old-key", "file:/nonexistent/key"], "does not exist"),
    (["--old-key", "env:KR_NEW"], "name the same key"),
    (["--db", "file:/nonexistent/x.db"], "database file not found"),
    (["--db", "postgres://x"], "unsupported database URL"),
    (["--key-column", "user_id"], "not provably unique and NOT NULL"),
])
def test_bad_arguments_exit_2_with_one_line(ref_db, keys_env, args, message):
    db = ref_db(5)
    base = {"--db": f"file:{db}", "--target": "accounts.encrypted_tokens",
            "--old-key": keys_env["old"], "--new-key": keys_env["new"]}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    argv = ["reencrypt"] + [x for kv in base.items() for x in kv]
    res = run_cli(*argv)
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output and OLD_SECRET not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_tables_without_a_provable_key_are_paged_by_rowid(tmp_path, keys_env):
    db = tmp_path / "c.db"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE c (a TEXT, b TEXT, v TEXT, PRIMARY KEY (a, b));"
                       "CREATE TABLE n (a TEXT UNIQUE NOT NULL, v TEXT);"
                       "CREATE TABLE w (a TEXT, b TEXT, v TEXT, PRIMARY KEY (a, b)) WITHOUT ROWID;")
    conn.close()
    for target in ("c.v", "n.v"):
        res = run_cli("reencrypt", "--db", f"file:{db}", "--target", target,
                      "--old-key", keys_env["old"], "--new-key", keys_env["new"], "--json")
        assert res.exit_code == 0, res.output
        assert last_json(res.output)["rows_scanned"] == 0
    res = run_cli("reencrypt", "--db", f"file:{db}", "--target", "w.v",
                  "--old-key", keys_env["old"], "--new-key", keys_env["new"])
    assert res.exit_code == 2 and "no rowid" in res.output
    res = run_cli("reencrypt", "--db", f"file:{db}", "--target", "n.v", "--key-column", "a",
                  "--old-key", keys_env["old"], "--new-key", keys_env["new"], "--json")
    assert res.exit_code == 0 and last_json(res.output)["rows_scanned"] == 0


def test_unknown_mode_is_a_usage_error(ref_db, keys_env):
    db = ref_db(1)
    res = run_cli("reencrypt", "--db", f"file:{db}", "--target", "accounts.encrypted_tokens",
                  "--old-key", keys_env["old"], "--new-key", keys_env["new"], "--mode", "nope")
    assert res.exit_code == 2 and "Invalid value for '--mode'" in res.output


def test_fresh_dek_after_a_rewrap_to_the_same_key_warns(ref_db, keys_env):
    db = ref_db(50)
    assert last_json(_reencrypt(db, keys_env).output)["warnings"] == []
    res = _reencrypt(db, keys_env, "--mode", "fresh-dek")
    out = last_json(res.output)
    assert out["rows_already_current"] == 50 and out["rows_rewritten"] == 0
    assert len(out["warnings"]) == 1 and "keep their old DEKs" in out["warnings"][0]


def test_failures_are_listed_in_key_order_not_text_order(tmp_path, keys_env):
    from keyrotate.crypto.envelope import seal

    db = tmp_path / "ints.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, encrypted_tokens TEXT)")
    old = MasterKey.from_secret(OLD_SECRET)
    conn.executemany("INSERT INTO accounts VALUES (?, ?)",
                     [(i, "{bad" if i in (9, 10, 100) else seal(b"{}", old)) for i in range(1, 120)])
    conn.commit()
    conn.close()
    res = _reencrypt(db, keys_env)
    out = last_json(res.output)
    assert res.exit_code == 1 and [f["id"] for f in out["failures"]] == ["9", "10", "100"]
    listed = last_json(run_cli("runs", "--db", f"file:{db}", out["run_id"], "--json").output)
    assert [f["id"] for f in listed["failures"]] == ["9", "10", "100"]
