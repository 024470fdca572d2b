"""Done means done, round 2 (issue 20): the corners where exit 0 still lied, the wrong file
was rotated, or a table was left split between keys."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from keyrotate.crypto.envelope import seal
from keyrotate.crypto.keys import MasterKey
from keyrotate.dataplane.codec_refs import codec_from_refs
from keyrotate.dataplane.reencrypt import ReencryptOptions, reencrypt
from keyrotate.dataplane.verify import verify
from keyrotate.db.connect import open_database
from keyrotate.db.table_shape import resolve_target
from tests.support.helpers import (
    NEW_SECRET,
    OLD_SECRET,
    THIRD_SECRET,
    interrupted_rotation,
    last_json,
    open_value,
    run_cli,
)

OLD = MasterKey.from_secret(OLD_SECRET)


def _cli(db: Path, keys: dict[str, str], target: str, *extra: str):
    return run_cli("reencrypt", "--db", f"file:{db}", "--target", target, "--old-key",
                   keys["old"], "--new-key", keys["new"], "--json", *extra)


def _values(db: Path, sql: str) -> list:
    conn = sqlite3.connect(db)
    try:
        return [v for (v,) in conn.execute(sql)]
    finally:
        conn.close()


def _all_new(db: Path, table: str = "t", column: str = "v") -> bool:
    values = _values(db, f"SELECT {column} FROM {table}")
    return all(v is None or open_value(v, NEW_SECRET) is not None for v in values)


# --- item 2: a NOCASE key column behind a BINARY unique index ---------------------------

def _nocase_table(db: Path, n: int = 60, keys: list[str] | None = None) -> list[str]:
    """ext is NOCASE, unique only under BINARY (the index): acc02 and ACC02 both live."""
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, ext TEXT COLLATE NOCASE NOT "
                       "NULL, v TEXT); CREATE UNIQUE INDEX t_ext ON t (ext COLLATE BINARY);")
    keys = keys or [f"acc{i:03d}" for i in range(n)] + [f"ACC{i:03d}" for i in range(0, n, 3)]
    conn.executemany("INSERT INTO t (ext, v) VALUES (?, ?)",
                     [(k, seal(k.encode(), OLD, with_kid=False)) for k in keys])
    conn.commit()
    conn.close()
    return keys


@pytest.mark.parametrize("batch", ["4", "7", "10"])
def test_a_nocase_key_behind_a_binary_index_pages_every_row(tmp_path, keys_env, batch):
    """Keyset paging compared keys under the column's NOCASE: one of each pair at a page
    boundary was skipped, every time, and every run exited 3. Keys are now compared under
    the collation they are unique under (the index's), which that index serves."""
    db = tmp_path / "nocase.db"
    keys = _nocase_table(db)
    res = _cli(db, keys_env, "t.v", "--key-column", "ext", "--batch-size", batch)
    assert res.exit_code == 0, res.output
    out = last_json(res.output)
    assert out["rows_rewritten"] == len(keys) and out["census"]["witness"] == "matched"
    assert _all_new(db)
    store = open_database(f"file:{db}")
    try:
        target = resolve_target(store, "t.v", "ext")
        assert target.collation == "BINARY"
        plan = store.query("EXPLAIN QUERY PLAN SELECT ext, v FROM t WHERE ext COLLATE BINARY > ? "
                           "ORDER BY ext COLLATE BINARY LIMIT 5", ("acc",))
        assert any("USING INDEX t_ext" in str(r[-1]) for r in plan), plan   # no full scan
    finally:
        store.close()


class DeleteDuringCensus:
    """Progress sink: after the census's first page, the application deletes a row the
    census has already counted (an ordinary DELETE)."""

    def __init__(self, db: Path, key: str):
        self.db, self.key, self.phase, self.done = db, key, 0, False

    def start(self, total: int) -> None:
        self.phase += 1

    def advance(self, rows: int) -> None:
        if self.phase == 2 and not self.done:
            conn = sqlite3.connect(self.db)
            conn.execute("DELETE FROM t WHERE ext = ?", (self.key,))
            conn.commit()
            conn.close()
            self.done = True

    def close(self) -> None:
        pass


def test_a_delete_during_the_census_never_balances_a_skipped_row(tmp_path, keys_env):
    """Issue 20 item 2: with one app DELETE of an already-counted row during the final
    census, the skipped row and the deleted one cancelled out in the counts: exit 0 with a
    row still under the old key. Now the run is never 'completed' with a row under the old
    key, and running it again finishes the job."""
    db = tmp_path / "nocase.db"
    _nocase_table(db)
    store = open_database(f"file:{db}")
    codec = codec_from_refs("tminus-envelope", keys_env["new"], keys_env["old"])
    try:
        result = reencrypt(store, resolve_target(store, "t.v", "ext"), codec,
                           ReencryptOptions(batch_size=23, workers=0),
                           DeleteDuringCensus(db, "acc001"))
    finally:
        store.close()
    assert result.status in ("incomplete", "completed"), result.problems
    if result.status == "completed":
        assert _all_new(db)
    res = _cli(db, keys_env, "t.v", "--key-column", "ext")
    assert res.exit_code == 0, res.output
    assert _all_new(db) and len(_values(db, "SELECT v FROM t")) == 79


def test_the_census_witness_is_not_fooled_by_counts(tmp_path, keys_env):
    """The witness itself. Paging that skips a row (the old NOCASE comparison, forced here:
    k03 and K03 tie across a page boundary) plus an app DELETE of a row the census already
    counted: the counts agree, the census must still say it did not see the table."""
    db = tmp_path / "nocase.db"
    _nocase_table(db, keys=["k00", "k01", "k02", "k03", "K03", "k04", "k05", "k06"])
    store = open_database(f"file:{db}")
    codec = codec_from_refs("tminus-envelope", keys_env["old"], None)
    try:
        broken = replace(resolve_target(store, "t.v", "ext"), collation=None)   # NOCASE paging
        alone = verify(store, broken, codec, batch_size=4, workers=0)
        assert alone.rows == 7 and alone.witness == "differs" and alone.exit_code == 3
        assert verify(store, resolve_target(store, "t.v", "ext"), codec, 4, 0).clean

        class DeleteCounted(DeleteDuringCensus):
            def start(self, total: int) -> None:
                self.phase = 2          # verify has one phase: the census

        census = verify(store, broken, codec, batch_size=4, workers=0,
                        progress=DeleteCounted(db, "k01"))
        assert census.rows == 7 and len(_values(db, "SELECT v FROM t")) == 7  # counts agree
        assert census.witness == "differs" and not census.clean and census.exit_code == 3
    finally:
        store.close()


# --- item 9: views and INTEGER PRIMARY KEY DESC ---------------------------------------

def test_a_view_is_refused(tmp_path, keys_env):
    """A view that takes updates (an INSTEAD OF trigger) has no rowid to page by and
    reports no changes: every run exited 3. It is refused, naming the fix."""
    db = tmp_path / "view.db"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT); CREATE VIEW tv AS SELECT * FROM t; "
                       "CREATE TRIGGER tv_up INSTEAD OF UPDATE ON tv BEGIN "
                       "UPDATE t SET v = NEW.v WHERE k = OLD.k; END;")
    conn.execute("INSERT INTO t VALUES ('a', ?)", (seal(b"x", OLD, with_kid=False),))
    conn.commit()
    conn.close()
    res = _cli(db, keys_env, "tv.v")
    assert res.exit_code == 2 and "is a view" in last_json(res.output)["error"]["message"]


def test_integer_primary_key_desc_with_nulls_is_no_rowid_alias(tmp_path, keys_env):
    """`INTEGER PRIMARY KEY DESC` is SQLite's quirk: not the rowid, a column that can hold
    NULL. Paging by it skipped those rows and every run exited 3; it is now paged by rowid,
    and naming it with --key-column is refused (exit 2)."""
    db = tmp_path / "desc.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY DESC, v TEXT)")
    conn.executemany("INSERT INTO t (k, v) VALUES (?, ?)",
                     [(None if i % 4 == 0 else i, seal(b"x", OLD, with_kid=False)) for i in range(40)])
    conn.commit()
    conn.close()
    asked = _cli(db, keys_env, "t.v", "--key-column", "k")
    assert asked.exit_code == 2 and "NULL" in last_json(asked.output)["error"]["message"]
    res = _cli(db, keys_env, "t.v", "--batch-size", "7")
    assert res.exit_code == 0, res.output
    assert last_json(res.output)["rows_rewritten"] == 40 and _all_new(db)


# --- item 3: Durable Object ids paged the same way --------------------------------------

def _ids_table(db: Path, ddl: str, ids: list[str]) -> None:
    conn = sqlite3.connect(db)
    conn.executescript(ddl)
    conn.executemany("INSERT INTO linked (account_id) VALUES (?)", [(i,) for i in ids])
    conn.commit()
    conn.close()


def test_object_ids_are_paged_under_the_collation_they_are_unique_under(tmp_path):
    """`acc_00004` and `ACC_00004` tie under the column's NOCASE at ids 1,000 and 1,001 (a
    page boundary): `c > ?` skipped one. (The Worker side is tested end to end in
    tests/dataplane/objects/test_objects_e2e.py.)"""
    from keyrotate.dataplane.objects.driver import IdSource

    db = tmp_path / "ids.db"
    ids = [f"aaa_{i:04d}" for i in range(995)] + [f"acc_{i:05d}" for i in range(20)] + ["ACC_00004"]
    _ids_table(db, "CREATE TABLE linked (n INTEGER PRIMARY KEY, account_id TEXT COLLATE NOCASE "
                   "NOT NULL); CREATE UNIQUE INDEX linked_id ON linked (account_id COLLATE BINARY);",
               ids)
    store = open_database(f"file:{db}")
    try:
        listed = [i for page in IdSource("linked", "account_id").pages(store) for i in page]
        assert sorted(listed) == sorted(ids)
    finally:
        store.close()


@pytest.mark.parametrize("ddl", [
    "CREATE TABLE linked (n INTEGER PRIMARY KEY, account_id TEXT)",
    "CREATE TABLE linked (n INTEGER PRIMARY KEY, account_id TEXT); "
    "CREATE UNIQUE INDEX linked_p ON linked (account_id) WHERE account_id > 'b'",
])
def test_an_ids_column_that_is_not_unique_is_refused(tmp_path, ddl):
    from keyrotate.dataplane.objects.driver import IdSource
    from keyrotate.errors import ConfigError

    db = tmp_path / "ids.db"
    _ids_table(db, ddl, ["a", "a", "b"])
    store = open_database(f"file:{db}")
    try:
        with pytest.raises(ConfigError, match="not unique"):
            list(IdSource("linked", "account_id").pages(store))
    finally:
        store.close()


def test_the_objects_census_witness_catches_ids_it_did_not_list(tmp_path):
    """What the objects census compares at the end: the ids it listed against the ids the
    table holds, by the rowid witness: a listed id deleted and one never listed balance in
    counts, not in the witness."""
    from keyrotate.dataplane.objects.driver import IdSource, IdWalk
    from keyrotate.db.base import new_salt

    db = tmp_path / "ids.db"
    _ids_table(db, "CREATE TABLE linked (n INTEGER PRIMARY KEY, account_id TEXT UNIQUE)",
               [f"id{i:03d}" for i in range(30)])
    store = open_database(f"file:{db}")
    try:
        source = IdSource("linked", "account_id")
        walk = IdWalk(new_salt())
        listed = [i for page in source.pages(store, 10, walk) for i in page]
        assert len(listed) == 30 and source.unlisted(store, walk) == 0
        conn = sqlite3.connect(db)
        conn.execute("DELETE FROM linked WHERE account_id = 'id003'")     # listed, then gone
        conn.execute("INSERT INTO linked (account_id) VALUES ('id999')")  # never listed
        conn.commit()
        conn.close()
        assert source.count(store) == walk.count and source.unlisted(store, walk) >= 1
    finally:
        store.close()


# --- item 4: a file: URL names exactly one path ------------------------------------------

def _file_db(path: Path, n: int = 5) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t (v) VALUES (?)", [(seal(b"x", OLD, with_kid=False),)] * n)
    conn.commit()
    conn.close()


@pytest.mark.parametrize("name,url", [
    ("a%41.db", "file:{dir}/a%41.db"),          # file:PATH is literal: %41 is three characters
    ("x#y.db", "file:{dir}/x#y.db"),            # '#' is part of the name
    ("q?mode=ro.db", "file:{dir}/q?mode=ro.db"),
    ("x#y.db", "file://{dir}/x%23y.db"),        # file:// is RFC 8089: percent-decoded
    ("sp ace.db", "file://localhost{dir}/sp%20ace.db"),
])
def test_a_file_url_names_exactly_one_path(tmp_path, keys_env, name, url):
    """`file:/…/a%41.db` rotated aA.db; `file:/…/x#y.db` created an empty file x. The named
    file is the one rotated; no other file is touched or created."""
    for other in ("aA.db", "x", "q"):
        _file_db(tmp_path / other)
    _file_db(tmp_path / name)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != name}
    res = run_cli(
        "reencrypt", "--db", url.format(dir=tmp_path), "--target", "t.v", "--old-key",
        keys_env["old"], "--new-key", keys_env["new"], "--json")
    assert res.exit_code == 0, res.output
    assert _all_new(tmp_path / name)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != name}
    assert after == before                       # nothing else touched, nothing created


@pytest.mark.parametrize("url,message", [
    ("file://{dir}/a.db?mode=ro&immutable=1", "no query string"),
    ("file://{dir}/a.db#frag", "no query string or fragment"),
    ("file://otherhost{dir}/a.db", "cannot name a host"),
    ("file:{dir}/x#missing.db", "not found"),
    ("file://{dir}/missing%3F.db", "not found"),
])
def test_file_urls_that_cannot_be_honoured_are_refused(tmp_path, keys_env, url, message):
    _file_db(tmp_path / "a.db")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    res = run_cli("reencrypt", "--db", url.format(dir=tmp_path), "--target", "t.v", "--old-key",
                  keys_env["old"], "--new-key", keys_env["new"], "--json")
    assert res.exit_code == 2, res.output
    assert message in last_json(res.output)["error"]["message"]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before   # never created


def test_a_hash_in_a_file_name_never_creates_another_file(tmp_path, keys_env):
    _file_db(tmp_path / "x#y.db")
    res = run_cli("reencrypt", "--db", f"file:{tmp_path}/x#y.db", "--target", "t.v", "--old-key",
                  keys_env["old"], "--new-key", keys_env["new"], "--json")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x#y.db"] and _all_new(tmp_path / "x#y.db")


# --- item 5: runs that are refused only when `running` -----------------------------------

REF = "accounts.encrypted_tokens"


def _rotate(db: Path, old: str, new: str, *extra: str):
    return run_cli("reencrypt", "--db", f"file:{db}", "--target", REF, "--old-key", old,
                   "--new-key", new, "--json", *extra)


def _keys_of(db: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for (v,) in sqlite3.connect(db).execute("SELECT encrypted_tokens FROM accounts"):
        name = next((n for n, s in (("K1", OLD_SECRET), ("K2", NEW_SECRET), ("K3", THIRD_SECRET))
                     if open_value(v, s) is not None), "?")
        out[name] = out.get(name, 0) + 1
    return out


def test_chaining_on_from_an_unfinished_run_is_refused(ref_db, three_keys):
    """K1->K2 killed partway, then K2->K3: accepted before (the unfinished run's new key is
    this run's old key), and it ended with rows under K1 and K3. Refused now, before
    anything is written, naming the run to finish."""
    k1, k2, k3 = three_keys
    db = ref_db(1_000)
    interrupted_rotation(db, k1, k2, 3)
    assert _keys_of(db) == {"K1": 700, "K2": 300}
    for dry in ((), ("--dry-run",)):
        onward = _rotate(db, k2, k3, *dry)
        assert onward.exit_code == 2, onward.output
        message = last_json(onward.output)["error"]["message"]
        assert "split between keys" in message and "Finish it first" in message
        assert _keys_of(db) == {"K1": 700, "K2": 300}          # nothing written
    assert _rotate(db, k1, k2).exit_code == 0                   # finish it
    done = _rotate(db, k2, k3)
    assert done.exit_code == 0, done.output
    assert _keys_of(db) == {"K3": 1_000}


def test_a_run_that_ended_incomplete_is_unfinished(ref_db, three_keys):
    """A K1->K2 run that ended with exit 3 is not `running`: a K1->K3 run was accepted and
    ended split. Any run not ended completed is unfinished."""
    k1, k2, k3 = three_keys
    db = ref_db(500)
    store = open_database(f"file:{db}")
    try:

        class OldRowsBehind:        # the app writes rows under K1 behind the cursor
            def start(self, total: int) -> None:
                pass

            def advance(self, rows: int) -> None:
                conn = sqlite3.connect(db)
                conn.execute("UPDATE accounts SET encrypted_tokens = ? WHERE account_id = "
                             "(SELECT min(account_id) FROM accounts)",
                             (seal(b"{}", OLD, with_kid=False),))
                conn.commit()
                conn.close()

            def close(self) -> None:
                pass

        codec = codec_from_refs("tminus-envelope", k2, k1)
        result = reencrypt(store, resolve_target(store, REF, None), codec,
                           ReencryptOptions(batch_size=100, workers=0), OldRowsBehind())
        assert result.status == "incomplete" and result.exit_code == 3
    finally:
        store.close()
    before = _keys_of(db)
    assert before.get("K1") and before.get("K2")
    other = _rotate(db, k1, k3)
    assert other.exit_code == 2 and "(incomplete)" in last_json(other.output)["error"]["message"]
    assert _keys_of(db) == before
    again = _rotate(db, k1, k2)                       # the same command starts it over
    assert again.exit_code == 0, again.output
    assert _keys_of(db) == {"K2": 500} and not last_json(again.output)["resumed"]
    statuses = [s for (s,) in sqlite3.connect(db).execute(
        "SELECT status FROM keyrotate_runs ORDER BY started_at")]
    assert statuses == ["superseded", "completed"]


# --- item 9: lost D1 answers while creating keyrotate's tables or a run -------------------

@pytest.fixture
def cf(cf, monkeypatch):
    """The stand-in, and keyrotate's retry pauses cut short (what is tested is that it
    retries, not how long it waits)."""
    import time as _time

    real_sleep = _time.sleep
    monkeypatch.setattr("keyrotate.cloudflare_api.time.sleep", lambda s: real_sleep(min(s, 0.05)))
    return cf


@pytest.mark.parametrize("needle", [b"CREATE TABLE IF NOT EXISTS keyrotate_runs",
                                    b"ALTER TABLE keyrotate_checkpoints ADD COLUMN seq",
                                    b"INSERT INTO keyrotate_runs"])
def test_a_lost_answer_while_creating_tables_or_the_run_resumes(cf, ref_db, keys_env, needle):
    """D1 committed, the answer was lost, the client sent the request again: the replay
    met its own work (UNIQUE, duplicate column) and the run exited 2. It goes on now."""
    db = ref_db(300)
    cf.d1["db1"] = str(db)
    cf.matching_faults.append(("commit-drop", needle))
    res = run_cli("reencrypt", "--db", "d1://acct/db1", "--target", REF, "--old-key",
                  keys_env["old"], "--new-key", keys_env["new"], "--workers", "0", "--json")
    assert not cf.matching_faults, "the lost answer was met"
    assert res.exit_code == 0, res.output
    assert last_json(res.output)["rows_rewritten"] == 300 and _keys_of(db) == {"K2": 300}


def test_a_lost_answer_on_the_run_s_end_is_the_end_it_recorded(cf, ref_db, keys_env):
    """The run's end (last checkpoint, verdict, lease given back) committed and its answer
    was lost; the replay met the lease already given back. That is the run's own end,
    read back from the journal: exit 0, not a lease taken over (exit 3)."""
    db = ref_db(300)
    cf.d1["db1"] = str(db)
    cf.matching_faults.append(("commit-drop", b"UPDATE keyrotate_runs SET status"))
    res = run_cli("reencrypt", "--db", "d1://acct/db1", "--target", REF, "--old-key",
                  keys_env["old"], "--new-key", keys_env["new"], "--workers", "0", "--json")
    assert not cf.matching_faults, "the lost answer was met"
    assert res.exit_code == 0, res.output
    assert last_json(res.output)["status"] == "completed" and _keys_of(db) == {"K2": 300}
    (status,), = sqlite3.connect(db).execute("SELECT status FROM keyrotate_runs").fetchall()
    assert status == "completed"


def test_two_first_runs_creating_the_tables_at_once(ref_db, monkeypatch):
    """The second of two first runs read "nothing applied" before the first applied
    keyrotate's migrations: its own attempt fails (UNIQUE, duplicate column), which the
    ledger explains. It used to exit 2."""
    from keyrotate.db import own_schema

    db = ref_db(10)
    first, second = open_database(f"file:{db}"), open_database(f"file:{db}")
    try:
        everything = own_schema.discover(own_schema.migrations_dir())
        assert everything
        # the second run reads "nothing applied" (before the first applied them)
        monkeypatch.setattr(own_schema, "read_many", lambda store, sts: [[] for _ in sts])
        own_schema.ensure_journal_schema(first)
        own_schema.ensure_journal_schema(second)     # raised StoreError (exit 2) before
    finally:
        first.close()
        second.close()


def test_the_wrong_key_probe_skips_leading_null_rows(ref_db, three_keys):
    """With 250 leading NULL rows the probe saw only NULLs, a wrong old key passed it, and
    the run wrote 50 failure records. The probe reads the first non-NULL rows."""
    _, k2, k3 = three_keys
    db = ref_db(300)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE accounts SET encrypted_tokens = NULL WHERE account_id IN "
                 "(SELECT account_id FROM accounts ORDER BY account_id LIMIT 250)")
    conn.commit()
    conn.close()
    res = _rotate(db, k3, k2)                 # K3 sealed nothing here
    assert res.exit_code == 2 and "none of the first 50 non-NULL rows" in res.output
    failures = sqlite3.connect(db).execute(
        "SELECT count(*) FROM sqlite_master WHERE name = 'keyrotate_row_failures'").fetchone()[0]
    assert not failures or not sqlite3.connect(db).execute(
        "SELECT count(*) FROM keyrotate_row_failures").fetchone()[0]


# --- item 9: waits are capped ------------------------------------------------------------

def test_a_day_long_retry_after_stops_with_exit_3(cf, ref_db, keys_env):
    """A 429 with Retry-After: 86400 was slept in full. keyrotate waits at most 120 s, then
    stops with exit 3 and the time to run it again; nothing is half-written."""
    db = ref_db(50)
    cf.d1["db1"] = str(db)
    cf.inject("429:86400")
    res = run_cli("reencrypt", "--db", "d1://acct/db1", "--target", REF, "--old-key",
                  keys_env["old"], "--new-key", keys_env["new"], "--json")
    assert res.exit_code == 3, res.output
    message = last_json(res.output)["error"]["message"]
    assert "86,400 s" in message and "run the same command again after" in message
    assert _keys_of(db) == {"K1": 50}


def test_retry_after_as_an_http_date_is_capped_too():
    import email.utils
    from datetime import datetime, timedelta, timezone

    import httpx

    from keyrotate.cloudflare_api import retry_after, wait_too_long

    later = datetime.now(timezone.utc) + timedelta(hours=2)
    resp = httpx.Response(429, headers={"retry-after": email.utils.format_datetime(later, usegmt=True)})
    wait = retry_after(resp)
    assert wait is not None and 7000 < wait <= 7200
    assert wait_too_long("x", wait) and wait_too_long("x", 119.0) is None


# --- item 8: a text key that is not UTF-8 ------------------------------------------------

@pytest.mark.parametrize("stop_after", [None, 1, 2, 3])
def test_text_keys_that_are_not_utf8_are_rotated_and_resumed(tmp_path, keys_env, stop_after):
    """A key with invalid UTF-8 ended every run in a UnicodeEncodeError traceback at the
    same row. Such keys are bound back as the bytes they are: their rows rotate, a run
    interrupted with one as its cursor resumes, and a failure lists it printably."""
    from keyrotate.errors import Interrupted
    from tests.support.helpers import StopAfter

    db = tmp_path / "utf8.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT)")
    for i in range(6):
        conn.execute("INSERT INTO t VALUES (?, ?)", (f"k{i}", seal(b"x", OLD, with_kid=False)))
        conn.execute("INSERT INTO t VALUES (CAST(? AS TEXT), ?)",
                     (f"k{i}".encode() + b"\xff\xfe", seal(b"x", OLD, with_kid=False)))
    conn.execute("INSERT INTO t VALUES (CAST(x'6b80' AS TEXT), 'not an envelope')")
    conn.commit()
    conn.close()
    if stop_after:
        store = open_database(f"file:{db}")
        try:
            codec = codec_from_refs("tminus-envelope", keys_env["new"], keys_env["old"])
            with pytest.raises(Interrupted):
                reencrypt(store, resolve_target(store, "t.v", None), codec,
                          ReencryptOptions(batch_size=2, workers=0), StopAfter(stop_after))
        finally:
            store.close()
    res = _cli(db, keys_env, "t.v", "--batch-size", "2")
    assert res.exit_code == 1, res.output
    out = last_json(res.output)
    assert out["failures"] == [{"id": "k\\x80", "reason": "value is not valid JSON"}]
    assert out["census"]["ok"] == 12 and out["census"]["witness"] == "matched"
    text = run_cli("reencrypt", "--db", f"file:{db}", "--target", "t.v", "--old-key",
                   keys_env["old"], "--new-key", keys_env["new"])   # the text output prints it
    assert "row k\\x80" in text.output
    conn = sqlite3.connect(db)
    conn.text_factory = bytes
    rows = dict(conn.execute("SELECT k, v FROM t"))
    conn.close()
    assert len(rows) == 13
    assert all(open_value(v.decode(), NEW_SECRET) for k, v in rows.items() if k != b"k\x80")


def test_only_real_placeholders_are_rebound():
    from keyrotate.db.sqlite_file import bindable

    sql = 'SELECT "a?b", \'?\' FROM "t?" WHERE k = ? -- ?\n AND /* ? */ j = ?'
    out, params = bindable(sql, ["k\udcff", "plain"])
    assert out == ('SELECT "a?b", \'?\' FROM "t?" WHERE k = CAST(? AS TEXT) -- ?\n AND /* ? */ j = ?')
    assert params == (b"k\xff", "plain")
    assert bindable("SELECT ?", ["ü"]) == ("SELECT ?", ("ü",))


# --- item 7: memory for heavy rows ---------------------------------------------------------

def _tree_peak_mb(argv: list[str], env: dict[str, str]) -> tuple[int, float]:
    """Exit code, and the peak of the whole process tree's RSS summed at each sample."""
    import subprocess
    import time

    import psutil

    proc = psutil.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]))
        except psutil.Error:
            pass
        time.sleep(0.005)
    out, err = proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    return proc.returncode, peak / 2**20


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["rewrap", "fresh-dek"])
def test_heavy_rows_keep_the_process_tree_under_250_mb(tmp_path, mode):
    """Issue 20 item 7: 20 rows of 10 MB peaked at 731 MB for the tree with --workers 2.
    The bytes in flight are bounded across reader, workers and writer, a heavy ciphertext
    is authenticated in chunks, and freed blocks go back to the OS: 40 rows of 5 MB stay
    under 250 MB for the whole tree (README, "Speed and memory")."""
    import sys

    from tests.support.helpers import big_reference_db

    db, originals, env = big_reference_db(tmp_path, 40, "heavy.db", payload_bytes=5_000_000)
    env = dict(env, KR_THIRD=THIRD_SECRET)
    new = "env:KR_THIRD" if mode == "fresh-dek" else "env:KR_NEW"
    argv = [sys.executable, "-m", "keyrotate.cli", "reencrypt", "--db", f"file:{db}", "--target",
            REF, "--old-key", "env:KR_OLD", "--new-key", new, "--mode", mode, "--workers", "2",
            "--json"]
    _, peak = _tree_peak_mb(argv, env)
    assert peak <= 250, f"the process tree peaked at {peak:.0f} MB"
    secret = THIRD_SECRET if mode == "fresh-dek" else NEW_SECRET
    conn = sqlite3.connect(db)
    for key, value in conn.execute("SELECT account_id, encrypted_tokens FROM accounts"):
        assert open_value(value, secret) == originals[key]
    conn.close()


def test_ids_the_census_could_not_list_keep_a_rewrap_from_completing():
    from keyrotate.dataplane.objects.driver import ObjectsCensus, ObjectsRewrap

    census = ObjectsCensus("AccountDO", "kid", objects=10, current=10, unlisted=1)
    assert not census.clean and census.exit_code == 3
    rewrap = ObjectsRewrap("r", "AccountDO", rewrapped=10, census=census)
    assert rewrap.status == "incomplete" and rewrap.exit_code == 3
