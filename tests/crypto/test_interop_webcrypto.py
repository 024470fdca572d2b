"""Interop with the Workers' real crypto: WebCrypto in Node (globalThis.crypto.subtle).

Both directions, both key derivations (base64 string -> SHA-256; 64 hex -> raw), both modes.
"""

from __future__ import annotations

import json

import pytest

from keyrotate.crypto.envelope import seal
from keyrotate.crypto.keys import MasterKey
from keyrotate.demo.build import token_payload
from tests.support.helpers import (
    NEW_SECRET,
    OLD_SECRET,
    last_json,
    make_reference_db,
    rows_of,
    run_cli,
    webcrypto,
)

PAIRS = [(OLD_SECRET, NEW_SECRET), (NEW_SECRET, OLD_SECRET)]  # base64 -> hex, hex -> base64


@pytest.mark.parametrize("old,new", PAIRS, ids=["base64-to-hex", "hex-to-base64"])
@pytest.mark.parametrize("mode", ["rewrap", "fresh-dek"])
def test_node_seals_keyrotate_rotates_node_opens(tmp_path, monkeypatch, old, new, mode):
    payloads = [token_payload(i).decode() for i in range(40)] + ["", "ü\u2028 emoji 🔑"]
    envelopes = webcrypto({"op": "seal", "key": old, "payloads": payloads})["envelopes"]
    db = tmp_path / "interop.db"
    make_reference_db(db, payloads, envelopes + [None])
    monkeypatch.setenv("OLD", old)
    monkeypatch.setenv("NEW", new)
    res = run_cli("reencrypt", "--db", f"file:{db}", "--target", "accounts.encrypted_tokens",
                  "--old-key", "env:OLD", "--new-key", "env:NEW", "--mode", mode, "--json")
    assert res.exit_code == 0, res.output
    assert last_json(res.output)["rows_rewritten"] == len(payloads)
    stored = [v.decode() if v is not None else None for v in rows_of(db).values()]
    opened = webcrypto({"op": "open", "key": new, "envelopes": stored})["payloads"]
    assert opened == payloads + [None]
    # and the old key no longer opens anything
    stale = webcrypto({"op": "open", "key": old, "envelopes": stored[:-1]})["payloads"]
    assert all(isinstance(p, dict) and "error" in p for p in stale)


@pytest.mark.parametrize("secret", [OLD_SECRET, NEW_SECRET], ids=["base64", "hex"])
def test_keyrotate_seals_node_opens(secret):
    payloads = [token_payload(i).decode() for i in range(20)]
    key = MasterKey.from_secret(secret)
    envelopes = [seal(p.encode(), key, with_kid=bool(i % 2)) for i, p in enumerate(payloads)]
    assert webcrypto({"op": "open", "key": secret, "envelopes": envelopes})["payloads"] == payloads


def test_node_envelopes_are_what_keyrotate_parses():
    env = webcrypto({"op": "seal", "key": NEW_SECRET, "payloads": ["x"]})["envelopes"][0]
    assert list(json.loads(env)) == ["iv", "ciphertext", "encryptedDek", "dekIv"]
    from keyrotate.crypto.codecs import EnvelopeCodec

    new = MasterKey.from_secret(NEW_SECRET)
    assert EnvelopeCodec(new=new).census(env) == new.kid


ODD = [',"exp":1e400', ',"neg":-1E+400,"z":-0', ',"big":' + "9" * 400 + ',"f":1.50',
       ',"n":{"a":[1e999,{"b":-0.0e0}],"s":"\\u00e9\\ud83d\\ude00"}', ' , "sp" : [ ] ']
REFUSED = [',"exp":NaN', ',"exp":Infinity', ',"exp":-Infinity']


@pytest.mark.parametrize("mode", ["rewrap", "fresh-dek"])
def test_odd_numbers_come_back_as_the_worker_read_them(tmp_path, monkeypatch, mode):
    """Issue 20 item 1, judged by Node's real JSON.parse: envelopes with extra fields
    holding 1e400 (JSON.parse reads Infinity), -0, huge integers, nested odd numbers are
    rotated with every such byte kept, and still parse and open in Node afterwards; the
    tokens JSON.parse refuses (NaN, Infinity) are failures, never "ok", and are left as
    they were."""
    payloads = [token_payload(i).decode() for i in range(len(ODD) + len(REFUSED))]
    sealed = webcrypto({"op": "seal", "key": OLD_SECRET, "payloads": payloads})["envelopes"]
    envelopes = [e[:-1] + extra + "}" for e, extra in zip(sealed, ODD + REFUSED)]
    node_before = webcrypto({"op": "extras", "envelopes": envelopes})["extras"]
    assert all(isinstance(x, str) for x in node_before[:len(ODD)])
    assert all(x == {"error": "SyntaxError"} for x in node_before[len(ODD):])
    db = tmp_path / "odd.db"
    make_reference_db(db, payloads, envelopes)
    monkeypatch.setenv("OLD", OLD_SECRET)
    monkeypatch.setenv("NEW", NEW_SECRET)
    res = run_cli("reencrypt", "--db", f"file:{db}", "--target", "accounts.encrypted_tokens",
                  "--old-key", "env:OLD", "--new-key", "env:NEW", "--mode", mode, "--json")
    out = last_json(res.output)
    assert res.exit_code == 1, res.output
    assert out["rows_rewritten"] == len(ODD) and out["rows_failed"] == len(REFUSED)
    assert out["census"]["ok"] == len(ODD) and out["census"]["failed"] == len(REFUSED)
    stored = [v.decode() for v in rows_of(db).values()]
    assert stored[len(ODD):] == envelopes[len(ODD):]            # refused rows untouched
    for extra, value in zip(ODD, stored):
        assert extra in value                                   # byte-identical
    assert webcrypto({"op": "extras", "envelopes": stored})["extras"] == node_before
    opened = webcrypto({"op": "open", "key": NEW_SECRET, "envelopes": stored})["payloads"]
    assert opened[:len(ODD)] == payloads[:len(ODD)]
    census = run_cli("verify", "--db", f"file:{db}", "--target", "accounts.encrypted_tokens",
                     "--key", "env:NEW", "--json")
    assert census.exit_code == 1 and last_json(census.output)["failed"] == len(REFUSED)


@pytest.mark.parametrize("mode", ["rewrap", "fresh-dek"])
def test_heavy_rows_rotated_in_chunks_still_open_in_node(tmp_path, monkeypatch, mode):
    """Heavy ciphertexts are authenticated a chunk at a time and rewritten in place (issue
    20 item 7): what Node's WebCrypto sealed still opens there afterwards."""
    payloads = ["é" * 700_000, "x" * 2_500_000, "small"]
    envelopes = webcrypto({"op": "seal", "key": OLD_SECRET, "payloads": payloads})["envelopes"]
    db = tmp_path / "heavy.db"
    make_reference_db(db, payloads, envelopes)
    monkeypatch.setenv("OLD", OLD_SECRET)
    monkeypatch.setenv("NEW", NEW_SECRET)
    res = run_cli("reencrypt", "--db", f"file:{db}", "--target", "accounts.encrypted_tokens",
                  "--old-key", "env:OLD", "--new-key", "env:NEW", "--mode", mode, "--workers",
                  "2", "--json")
    assert res.exit_code == 0, res.output
    stored = [v.decode() for v in rows_of(db).values()]
    assert webcrypto({"op": "open", "key": NEW_SECRET, "envelopes": stored})["payloads"] == payloads
