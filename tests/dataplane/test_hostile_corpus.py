"""Guarantee 3: junk rows never stop a run, are never modified, and each gets its reason."""

from __future__ import annotations

import base64
import json
import sqlite3

from keyrotate.crypto.envelope import seal
from keyrotate.crypto.keys import MasterKey
from tests.support.helpers import NEW_SECRET, OLD_SECRET, last_json, open_value, run_cli

OLD, NEW = MasterKey.from_secret(OLD_SECRET), MasterKey.from_secret(NEW_SECRET)


def _good(payload: bytes = b'{"access_token":"t"}') -> dict:
    return json.loads(seal(payload, OLD, with_kid=False))


def _b64(n: int) -> str:
    return base64.b64encode(b"\1" * n).decode()


def _junk() -> dict[str, tuple[str, object, str | None]]:
    """id -> (SQL expression kind, value, expected reason or None if it must rotate)."""
    g = _good()
    return {
        "h01-malformed-json": ("text", '{"iv": "abc",', "value is not valid JSON"),
        "h02-missing-field": ("text", json.dumps({k: g[k] for k in ("iv", "ciphertext", "dekIv")}),
                              "missing field encryptedDek"),
        "h03-bad-base64": ("text", json.dumps(dict(g, ciphertext="***")), "ciphertext is not valid base64"),
        "h04-iv-16": ("text", json.dumps(dict(g, iv=_b64(16))), "iv is 16 bytes, expected 12"),
        "h05-dek-31": ("text", json.dumps(dict(g, encryptedDek=_b64(31 + 16))), "encryptedDek is 47 bytes"),
        "h06-truncated-tag": ("text", json.dumps(dict(g, ciphertext=_b64(15))), "shorter than the GCM tag"),
        "h07-empty": ("text", "", "value is an empty string"),
        "h08-junk-1mb": ("text", "x" * 1_000_000, "value is not valid JSON"),
        "h09-non-utf8": ("hex-text", "7b22697622ff", "value is not valid UTF-8 text"),
        "h10-blob": ("blob", "00ff00ff", "value is a BLOB, not JSON text"),
        "h11-third-key": ("text", seal(b"x", MasterKey.from_secret("a third key")),
                          "opens under neither the old nor the new key"),
        "h12-tampered-dek": ("text", json.dumps(dict(g, encryptedDek=_b64(48))),
                             "opens under neither the old nor the new key"),
        "h13-number": ("int", 12345, "value is JSON but not an object"),  # TEXT affinity
        "h14-json-string": ("text", '"just a string"', "value is JSON but not an object"),
        # these are not failures
        "ok-null": ("null", None, None),
        "ok-extra-fields": ("text", json.dumps(dict(g, note="kept", v=2)), None),
        "ok-already-new": ("text", seal(b'{"a":1}', NEW, with_kid=False), None),
        "ok-1mb-payload": ("text", json.dumps(_good(b"p" * 1_000_000)), None),
    }


def test_hostile_corpus(tmp_path, keys_env):
    db = tmp_path / "hostile.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE accounts (account_id TEXT PRIMARY KEY, encrypted_tokens TEXT)")
    corpus = _junk()
    for key, (kind, value, _) in corpus.items():
        expr = {"hex-text": "CAST(X'" + str(value) + "' AS TEXT)",
                "blob": "X'" + str(value) + "'"}.get(kind, "?")
        params = (key,) if kind in ("hex-text", "blob") else (key, value)
        conn.execute(f"INSERT INTO accounts VALUES (?, {expr})", params)
    good = {f"g{i:04d}": seal(f'{{"n":{i}}}'.encode(), OLD, with_kid=False) for i in range(300)}
    conn.executemany("INSERT INTO accounts VALUES (?, ?)", good.items())
    conn.commit()
    before = _raw(conn)
    conn.close()

    res = run_cli("reencrypt", "--db", f"file:{db}", "--target", "accounts.encrypted_tokens",
                  "--old-key", keys_env["old"], "--new-key", keys_env["new"], "--json",
                  "--batch-size", "50")
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    out = last_json(res.output)
    reasons = {f["id"]: f["reason"] for f in out["failures"]}
    expected = {k: r for k, (_, _, r) in corpus.items() if r is not None}
    assert set(reasons) == set(expected)
    for key, reason in expected.items():
        assert reason in reasons[key], (key, reasons[key])
    assert out["rows_failed"] == len(expected)
    assert out["rows_null"] == 1 and out["rows_already_current"] == 1
    assert out["rows_rewritten"] == 300 + 2  # good rows, extra fields, 1 MB payload

    conn = sqlite3.connect(db)
    after = _raw(conn)
    for key in expected:
        assert after[key] == before[key], f"{key} was modified"  # byte- and type-identical
    assert after["ok-already-new"] == before["ok-already-new"]  # never rewritten
    rotated = json.loads(after["ok-extra-fields"][1])
    assert rotated["note"] == "kept" and rotated["v"] == 2 and rotated["kid"] == NEW.kid
    assert open_value(after["ok-1mb-payload"][1].decode(), NEW_SECRET) == b"p" * 1_000_000
    for key in good:
        assert open_value(after[key][1].decode(), NEW_SECRET) is not None
    conn.close()


def _raw(conn: sqlite3.Connection) -> dict[str, tuple[str, bytes | None]]:
    """Each row's storage type and exact bytes."""
    return {k: (t, v if v is None or isinstance(v, bytes) else str(v).encode())
            for k, t, v in conn.execute(
                "SELECT account_id, typeof(encrypted_tokens), CAST(encrypted_tokens AS BLOB) "
                "FROM accounts")}
