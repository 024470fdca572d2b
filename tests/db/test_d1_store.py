"""The d1:// store against the Cloudflare API stand-in (real SQLite behind D1's API rules)."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest

from keyrotate.cloudflare_api import RequestBudget
from keyrotate.db.d1 import D1Store
from keyrotate.errors import StoreError
from tests.support.helpers import NEW_SECRET, OLD_SECRET, last_json, open_value, rows_of, run_cli


def _d1(cf, path, db_id="db1") -> str:
    cf.d1[db_id] = str(path)
    return f"d1://acct/{db_id}"


def _reencrypt(url, keys, *extra):
    return run_cli("reencrypt", "--db", url, "--target", "accounts.encrypted_tokens",
                   "--old-key", keys["old"], "--new-key", keys["new"], "--json", *extra)


def test_rotation_over_d1_costs_few_requests(cf, ref_db, keys_env):
    db = ref_db(10_000)
    payloads = {k: open_value(v.decode(), OLD_SECRET) for k, v in rows_of(db).items()}
    url = _d1(cf, db)
    res = _reencrypt(url, keys_env, "--workers", "0")
    assert res.exit_code == 0, res.output
    assert last_json(res.output)["rows_rewritten"] == 10_000
    # 3 pages of about 2 MB, each written by one request that also reads the next (the
    # last read shows the end of the table: nothing reads past it); the census reads every
    # row again in pages of up to 5 MB (2 requests here), and its rowid witness, one
    # aggregate, rides in the request of its last page read; the target's shape (2),
    # keyrotate's tables created on the way (2), the lease (its claim and who holds it,
    # with the plan and the probe with the table's size, in one), the run with the first
    # page's read, and the end with the lease given back in one: 12 (45 before issue 22,
    # 19 after its merge with issue 20, 16 while the witness went alone and the plan, the
    # probe and the first page each had a request; issue 22's own census, which trusted a
    # digest of the pass and read nothing back, made it 11); one more for the lease's
    # heartbeat (every 10 s on d1://) when a loaded machine is slow
    assert cf.d1_requests <= 13, f"{cf.d1_requests} requests for 10,000 rows"
    assert {k: open_value(v.decode(), NEW_SECRET) for k, v in rows_of(db).items()} == payloads
    # the same command again, with nothing left to do: no row is written (a page that
    # changed nothing writes no checkpoint); the run is still written down under its lease
    # and its census reads every row again (10: the schema check, the lease with the plan
    # and the probe, the run with the first page, 2 pages read, the census's 2 pages, the
    # second carrying its witness, the end; and a heartbeat when slow). The census opens none: the pass
    # opened each row and found it current (dataplane/vouch.py)
    since, requests = len(cf.log), cf.d1_requests
    again = _reencrypt(url, keys_env, "--workers", "0")
    assert again.exit_code == 0 and last_json(again.output)["status"] == "completed", again.output
    assert last_json(again.output)["census"]["vouched"] == 10_000
    assert cf.d1_requests - requests <= 11, f"{cf.d1_requests - requests} requests for a re-run"
    statements = [st["sql"] for _, path, body in cf.log[since:] if path.endswith("/query")
                  for st in json.loads(body).get("batch", [json.loads(body)])]
    assert not any('UPDATE "accounts"' in sql for sql in statements)
    census = last_json(run_cli("verify", "--db", url, "--target", "accounts.encrypted_tokens",
                               "--key", keys_env["new"], "--json").output)
    assert census["ok"] == 10_000


def test_rotation_survives_429_500_slow_and_dropped_connections(cf, ref_db, keys_env, monkeypatch):
    real_sleep = time.sleep
    monkeypatch.setattr("keyrotate.cloudflare_api.time.sleep", lambda s: real_sleep(min(s, 0.05)))
    db = ref_db(3_000)
    payloads = {k: open_value(v.decode(), OLD_SECRET) for k, v in rows_of(db).items()}
    url = _d1(cf, db)
    cf.inject("429", "500", "drop", "slow", "429", "drop", "500", "500", "slow", "drop")
    res = _reencrypt(url, keys_env, "--batch-size", "250", "--workers", "0")
    assert res.exit_code == 0, res.output
    assert not cf.faults, "every injected fault was met"
    after = rows_of(db)
    assert {k: open_value(v.decode(), NEW_SECRET) for k, v in after.items()} == payloads


def test_stand_in_enforces_d1_limits(cf, ref_db):
    url = _d1(cf, ref_db(3))
    store = D1Store(url)
    with pytest.raises(StoreError, match="7500"):
        store.query("BEGIN")
    with pytest.raises(StoreError, match="100 parameters|allows 100"):
        store.query("SELECT " + ",".join("?" * 101), [1] * 101)
    with pytest.raises(StoreError, match="7500.*no such table"):
        store.query("SELECT * FROM nosuch")
    # and the stand-in itself refuses what our store would not send
    import httpx

    r = httpx.post(f"{cf.base_url}/accounts/a/d1/database/db1/query",
                   json={"sql": "SELECT " + ",".join("?" * 101), "params": [1] * 101})
    assert r.status_code == 400 and r.json()["errors"][0]["code"] == 7500
    store.close()


def test_store_paces_itself_under_the_budget(cf, ref_db):
    cf.rate_limit, cf.rate_window = 6, 1.0   # the "API" allows 6 requests a second
    url = _d1(cf, ref_db(3))
    store = D1Store(url, budget=RequestBudget(5, 1.0))
    for _ in range(12):
        store.query("SELECT count(*) FROM accounts")
    assert cf.d1_requests == 12  # no 429 was ever answered, so nothing was retried
    store.close()


def test_429_with_retry_after_is_honoured(cf, ref_db, monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr("keyrotate.cloudflare_api.time.sleep", lambda s: waits.append(s))
    url = _d1(cf, ref_db(3))
    store = D1Store(url)
    cf.inject("429")
    assert store.query("SELECT count(*) FROM accounts") == [(3,)]
    assert 1.0 in waits  # the stand-in's Retry-After: 1
    store.close()


def test_cas_conflict_over_d1(cf, ref_db, keys_env):
    from keyrotate.dataplane.codec_refs import codec_from_refs
    from keyrotate.dataplane.reencrypt import ReencryptOptions, reencrypt
    from keyrotate.db.table_shape import resolve_target

    db = ref_db(300)
    store = D1Store(_d1(cf, db))
    real_exchange = store.exchange   # every write goes through it (apply too)

    def meddling_exchange(writes, target, statements, reads):
        if writes and writes[0][1] == "acc_00000000":
            other = sqlite3.connect(db)
            other.execute("UPDATE accounts SET encrypted_tokens = NULL WHERE account_id = 'acc_00000005'")
            other.commit()
            other.close()
        return real_exchange(writes, target, statements, reads)

    store.exchange = meddling_exchange  # type: ignore[method-assign]
    codec = codec_from_refs("tminus-envelope", keys_env["new"], keys_env["old"])
    target = resolve_target(store, "accounts.encrypted_tokens", None)
    result = reencrypt(store, target, codec, ReencryptOptions(batch_size=100, workers=0))
    assert result.counts.rows_conflicted == 1 and result.counts.rows_null == 1
    assert rows_of(db)["acc_00000005"] is None  # the application's write stands
    store.close()


def test_d1_needs_a_token(monkeypatch):
    monkeypatch.delenv("CLOUDFLARE_API_TOKEN", raising=False)
    res = run_cli("runs", "--db", "d1://acct/db")
    assert res.exit_code == 2 and "CLOUDFLARE_API_TOKEN" in res.output


def test_a_batch_replayed_after_a_lost_answer_counts_once(cf, ref_db, keys_env, monkeypatch):
    """D1 committed a page, the answer was lost, the client sent the page again: its CAS
    writes all miss (they landed the first time) and its checkpoint must not count twice."""
    real_sleep = time.sleep
    monkeypatch.setattr("keyrotate.cloudflare_api.time.sleep", lambda s: real_sleep(min(s, 0.05)))
    db = ref_db(1_000)
    url = _d1(cf, db)
    cf.matching_faults.extend([("commit-drop", b"SET \\\"encrypted_tokens\\\"")] * 3)
    res = _reencrypt(url, keys_env, "--batch-size", "100", "--workers", "0")
    assert not cf.matching_faults, "every lost answer was met"
    assert res.exit_code == 0, res.output
    out = last_json(res.output)
    assert (out["rows_rewritten"], out["rows_conflicted"], out["rows_scanned"]) == (1_000, 0, 1_000)
    conn = sqlite3.connect(db)
    journal = conn.execute("SELECT rows_scanned, rows_rewritten, rows_conflicted, batches "
                           "FROM keyrotate_checkpoints").fetchone()
    assert journal == (1_000, 1_000, 0, 10)
    assert all(open_value(v.decode(), NEW_SECRET) for v in rows_of(db).values())
