"""On D1 the census's rowid witness rides in the request of the page read that ends the
table, after that read (one transaction, in order), when the count at the start says the
page should be the last: one request less per census. Its answer counts only when no
read came after it; otherwise the witness is read alone at the end, as before. Each test
here says which requests went out, so each fails where the witness always went alone.
The application's writes land between pages, when the census has tallied some rows."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Callable

import pytest

from keyrotate.crypto.envelope import seal
from keyrotate.crypto.keys import MasterKey
from keyrotate.dataplane.codec_refs import codec_from_refs
from keyrotate.dataplane.verify import Census, take_census, verify
from keyrotate.dataplane.workers import CryptoRunner
from keyrotate.db.d1 import D1Store
from keyrotate.db.table_shape import resolve_target
from keyrotate.demo.build import account_id
from keyrotate.progress import NoProgress
from tests.support.cf_api import CloudflareStandIn
from tests.support.helpers import OLD_SECRET

TARGET = "accounts.encrypted_tokens"
OLD = MasterKey.from_secret(OLD_SECRET)


Write = Callable[[sqlite3.Connection], None]


class AfterRows:
    """Progress sink: once the census has tallied `at` rows, the application runs
    `writes[at]` on its own connection (each once)."""

    def __init__(self, db: Path, writes: dict[int, Write]):
        self.db, self.writes, self.seen = db, writes, 0

    def start(self, total: int) -> None:
        pass

    def advance(self, rows: int) -> None:
        before, self.seen = self.seen, self.seen + rows
        for at, write in self.writes.items():
            if before < at <= self.seen:
                conn = sqlite3.connect(self.db)
                write(conn)
                conn.commit()
                conn.close()

    def close(self) -> None:
        pass


def _sent(cf: CloudflareStandIn, since: int) -> list[str]:
    """What each D1 query request since `since` (in cf.log) read: count, page, witness, or
    page+witness (both, in that order, in one request)."""
    out = []
    for _, path, body in cf.log[since:]:
        if not path.endswith("/query"):
            continue
        req = json.loads(body)
        kinds = []
        for st in req.get("batch", [req]):
            sql = st["sql"]
            kinds.append("page" if "keyrotate_witness" in sql else
                         "witness" if sql.startswith("SELECT count(*), coalesce(sum(") else
                         "count" if sql.startswith("SELECT count(*) FROM") else sql)
        out.append("+".join(kinds))
    return out


def _verify(cf: CloudflareStandIn, db: Path, batch: int | None,
            progress: AfterRows | None = None, target: str = TARGET
            ) -> tuple[Census, list[str]]:
    """verify over d1://, and the requests it made."""
    cf.d1["db1"] = str(db)
    store = D1Store("d1://acct/db1")
    try:
        resolved = resolve_target(store, target, None)
        codec = codec_from_refs("tminus-envelope", "env:KR_OLD", None)
        since = len(cf.log)
        census = verify(store, resolved, codec, batch_size=batch, workers=0, progress=progress)
        return census, _sent(cf, since)
    finally:
        store.close()


def _insert(conn: sqlite3.Connection, key: str) -> None:
    conn.execute("INSERT INTO accounts (account_id, user_id, encrypted_tokens, created_at, "
                 "updated_at) VALUES (?, 'usr', ?, 'now', 'now')",
                 (key, seal(b'{"t":1}', OLD, with_kid=False)))


@pytest.mark.parametrize("rows, batch, sent", [
    (50, None, ["count", "page+witness"]),
    (50, 20, ["count", "page", "page", "page+witness"]),
    # the last page is full: the read that finds nothing more carries the witness
    (40, 20, ["count", "page", "page", "page+witness"]),
], ids=["one-page", "three-pages", "full-last-page"])
def test_a_verify_over_d1_costs_one_request_less(cf, ref_db, keys_env, rows, batch, sent):
    census, requests = _verify(cf, ref_db(rows), batch)
    assert census.clean and census.witness == "matched" and census.rows == rows, census
    assert requests == sent      # the witness went alone before: one request more


def test_a_census_told_the_rows_costs_one_request(cf, ref_db, keys_env):
    """reencrypt's census knows the rows from its pass (rows_hint): no count, and the
    witness rides on the one page."""
    cf.d1["db1"] = str(ref_db(50))
    store = D1Store("d1://acct/db1")
    codec = codec_from_refs("tminus-envelope", "env:KR_OLD", None)
    runner = CryptoRunner(codec, 0)
    try:
        target = resolve_target(store, TARGET, None)
        since = cf.d1_requests
        census = take_census(store, target, codec, runner, None, NoProgress(), rows_hint=50)
        assert census.clean and census.witness == "matched" and census.rows == 50, census
        assert cf.d1_requests - since == 1
    finally:
        runner.close()
        store.close()


def _behind(conn: sqlite3.Connection) -> None:
    _insert(conn, account_id(3) + "a")       # between two rows the census has read


def _swap(read: int, unread: int) -> Write:
    """A row the census read and one it has not exchange rowids: the census sees one rowid
    twice and the other never, and the counts agree."""

    def write(conn: sqlite3.Connection) -> None:
        (a,), (b,) = (conn.execute("SELECT rowid FROM accounts WHERE account_id = ?",
                                   (account_id(i),)).fetchone() for i in (read, unread))
        conn.execute("UPDATE accounts SET rowid = -1 WHERE rowid = ?", (a,))
        conn.execute("UPDATE accounts SET rowid = ? WHERE rowid = ?", (a, b))
        conn.execute("UPDATE accounts SET rowid = ? WHERE rowid = -1", (b,))

    return write


# pages of 20 rows: 50 rows ride on the third page read (10 rows), 40 on the third read,
# which finds nothing; `at`: the rows the census has tallied when the application writes
@pytest.mark.parametrize("rows, at, write", [
    (50, 40, _behind), (40, 40, _behind), (50, 40, _swap(5, 45)), (40, 20, _swap(5, 25)),
], ids=["insert-behind", "insert-behind-empty-read", "rowids-swapped",
        "rowids-swapped-empty-read"])
def test_the_riding_witness_still_sees_what_changed_between_pages(cf, ref_db, keys_env,
                                                                 rows, at, write):
    db = ref_db(rows)
    census, requests = _verify(cf, db, 20, AfterRows(db, {at: write}))
    assert requests == ["count", "page", "page", "page+witness"]   # it rode
    assert census.witness == "differs" and not census.clean and census.exit_code == 3, census
    assert census.unreached >= 1 and census.rows == rows


def test_a_riding_witness_followed_by_another_read_is_read_again(cf, ref_db, keys_env):
    """Rows inserted ahead of the cursor fill the page the witness rode on, so another
    read follows it, and a row inserted after that page was read makes the carried answer
    stale: the census reads the witness again at the end and is clean."""
    db = ref_db(50)

    def ahead(conn: sqlite3.Connection) -> None:
        for i in range(50, 65):
            _insert(conn, account_id(i))

    def one_more(conn: sqlite3.Connection) -> None:
        _insert(conn, account_id(70))

    census, requests = _verify(cf, db, 20, AfterRows(db, {40: ahead, 60: one_more}))
    assert requests == ["count", "page", "page", "page+witness", "page", "witness"]
    assert census.clean and census.witness == "matched" and census.rows == 66, census


def test_heavy_rows_carry_the_witness_only_where_their_bytes_fit(cf, tmp_path, keys_env):
    """12 rows of about 400 KB, pages of 20 rows and 2 MB: the count alone says every page
    could be the last, but after the first page the bytes per row say the rest does not
    fit one page (the witness, an aggregate over the whole table, is not sent in vain)."""
    db = tmp_path / "heavy.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t (v) VALUES (?)",
                     [(seal(bytes([65 + i]) * 300_000, OLD, with_kid=False),) for i in range(12)])
    conn.commit()
    conn.close()
    census, sent = _verify(cf, db, 20, target="t.v")
    assert census.clean and census.witness == "matched" and census.rows == 12, census
    # the first read knows nothing of the bytes (a miss); the second (6 rows of 12) does;
    # the third finds nothing more
    assert sent == ["count", "page+witness", "page", "page+witness"]
