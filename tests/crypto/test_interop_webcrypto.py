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
