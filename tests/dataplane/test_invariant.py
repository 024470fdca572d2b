"""The invariant, as a property over generated schemas, tables and interrupt schedules:

    reencrypt exits 0 only if every row of the target opens under the new key (with the
    payload it had) or is NULL; exit 1 only if, besides those, the rows it lists open
    under no key and were left byte-identical; anything else is exit 3, and running the
    same command again gets there.

Interrupts (Ctrl-C after k committed batches) and application writes during a run
(rows moved back under the old key, set to NULL, inserted, deleted) are generated.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyrotate.crypto.codecs import Codec
from keyrotate.crypto.envelope import seal
from keyrotate.crypto.keys import MasterKey
from keyrotate.dataplane.codec_refs import codec_from_refs
from keyrotate.dataplane.reencrypt import ReencryptOptions, reencrypt
from keyrotate.db.connect import open_database
from keyrotate.db.table_shape import resolve_target
from keyrotate.errors import (
    EXIT_FAILURES,
    EXIT_INCOMPLETE,
    EXIT_USAGE,
    ConfigError,
    Interrupted,
)
from tests.support.helpers import NEW_SECRET, OLD_SECRET, open_value

OLD, NEW = MasterKey.from_secret(OLD_SECRET), MasterKey.from_secret(NEW_SECRET)
THIRD = MasterKey.from_secret("a third key nobody gave keyrotate, 32+ bytes long")
SCHEMAS = {
    "integer pk": "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)",
    "text pk": "CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT)",
    "unique not null": "CREATE TABLE t (k TEXT NOT NULL UNIQUE, v TEXT)",
    "no key": "CREATE TABLE t (k TEXT, v TEXT)",
    "without rowid": "CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID",
}
STATES = ["old", "old", "old", "new", "null", "junk", "third"]


def _value(state: str, payload: bytes) -> str | None:
    return {"old": lambda: seal(payload, OLD, with_kid=False), "new": lambda: seal(payload, NEW),
            "null": lambda: None, "junk": lambda: '{"iv": "nope"',
            "third": lambda: seal(payload, THIRD)}[state]()


def _key(schema: str, i: int) -> object:
    return i * 7 + 3 if schema == "integer pk" else f"k{i:04d}"


class World:
    """The table, and what each row must hold: its payload, or its exact bad value."""

    def __init__(self, path: Path, schema: str, states: list[str]):
        self.path, self.schema = path, schema
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute(SCHEMAS[schema])
        self.expect: dict[object, tuple[str, object]] = {}
        self.next = 0
        for state in states:
            self.insert(state)

    def insert(self, state: str) -> None:
        key, payload = _key(self.schema, self.next), f'{{"n":{self.next}}}'.encode()
        self.next += 1
        value = _value(state, payload)
        self.conn.execute("INSERT INTO t (k, v) VALUES (?, ?)", (key, value))
        self._remember(key, state, value, payload)

    def _remember(self, key, state, value, payload) -> None:
        self.expect[key] = (("payload", payload) if state in ("old", "new")
                            else ("null", None) if state == "null" else ("bad", value))

    def mutate(self, op: str, pick: int) -> None:
        """An application write: a row moved back under the old key, set NULL, deleted,
        or a new row."""
        keys = sorted(self.expect, key=str)
        if op == "insert" or not keys:
            self.insert(["old", "new"][pick % 2])
            return
        key = keys[pick % len(keys)]
        if op == "delete":
            self.conn.execute("DELETE FROM t WHERE k = ?", (key,))
            del self.expect[key]
            return
        payload = f'{{"app":{pick}}}'.encode()
        state = "old" if op == "old" else "null"
        value = _value(state, payload)
        self.conn.execute("UPDATE t SET v = ? WHERE k = ?", (value, key))
        self._remember(key, state, value, payload)

    def check(self, exit_code: int, failures: list[dict[str, str]]) -> None:
        rows = dict(self.conn.execute("SELECT k, v FROM t"))
        assert set(rows) == set(self.expect)
        bad = {k for k, (kind, _) in self.expect.items() if kind == "bad"}
        for key, (kind, want) in self.expect.items():
            value = rows[key]
            if kind == "bad":
                assert value == want, f"bad row {key} was modified"
            elif kind == "null":
                assert value is None
            elif exit_code in (0, 1):
                assert open_value(value, NEW_SECRET) == want, f"row {key} not under the new key"
        if exit_code == 0:
            assert not bad
        if exit_code == 1:
            assert bad and len(failures) == min(len(bad), 100)


class StopOrMeddle:
    """Progress sink: the application writes after some batches of the rewrite phase;
    Ctrl-C after some batch of either phase (the rewrite, then the final census). A write
    behind the final census's cursor comes after the proof, like any write after the
    run: the census is the run's end."""

    def __init__(self, world: World, meddle: dict[int, tuple[str, int]], stop: int | None):
        self.world, self.meddle, self.stop, self.batch = world, meddle, stop, 0
        self.phase = 0

    def start(self, total: int) -> None:
        self.phase += 1

    def advance(self, rows: int) -> None:
        self.batch += 1
        if self.phase == 1 and self.batch in self.meddle:
            self.world.mutate(*self.meddle[self.batch])
        if self.stop is not None and self.batch >= self.stop:
            raise KeyboardInterrupt

    def close(self) -> None:
        pass


runs = st.lists(st.tuples(
    st.integers(1, 9),                                             # batch size
    st.one_of(st.none(), st.integers(1, 6)),                       # Ctrl-C after k batches
    st.dictionaries(st.integers(1, 6), st.tuples(
        st.sampled_from(["old", "null", "insert", "delete"]), st.integers(0, 99)), max_size=3),
), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=st.sampled_from(sorted(SCHEMAS)), states=st.lists(st.sampled_from(STATES), max_size=40),
       schedule=runs)
def test_exit_codes_keep_their_promise(schema, states, schedule):
    os.environ["KR_INV_OLD"], os.environ["KR_INV_NEW"] = OLD_SECRET, NEW_SECRET
    codec = codec_from_refs("tminus-envelope", "env:KR_INV_NEW", "env:KR_INV_OLD")
    with tempfile.TemporaryDirectory() as tmp:
        world = World(Path(tmp) / "t.db", schema, states)
        try:
            for batch_size, stop, meddle in schedule:
                _run(world, codec, batch_size, meddle, stop)
            for _ in range(3):  # the application has stopped: running again settles it
                code = _run(world, codec, 5, {}, None)
                if code != EXIT_INCOMPLETE:
                    break
            assert code in (0, EXIT_FAILURES, EXIT_USAGE), code
        finally:
            world.conn.close()


def _run(world: World, codec: Codec, batch_size: int, meddle: dict[int, tuple[str, int]],
         stop: int | None) -> int:
    store = open_database(f"file:{world.path}")
    try:
        target = resolve_target(store, "t.v", None)
        try:
            result = reencrypt(store, target, codec,
                               ReencryptOptions(batch_size=batch_size, workers=0),
                               StopOrMeddle(world, meddle, stop))
        except Interrupted:
            world.check(EXIT_INCOMPLETE, [])
            return EXIT_INCOMPLETE
        except ConfigError as e:  # the probe: no row opens under either key, nothing written
            assert "none of the first" in str(e)
            world.check(EXIT_USAGE, [])
            return EXIT_USAGE
        world.check(result.exit_code, result.failures)
        return result.exit_code
    finally:
        store.close()
