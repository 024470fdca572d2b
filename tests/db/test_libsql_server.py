"""The http:// and ws:// paths against a real libSQL server (sqld)."""

from __future__ import annotations

import uuid

import libsql_client
import pytest

from keyrotate.crypto.envelope import seal
from keyrotate.crypto.keys import MasterKey
from keyrotate.demo.build import REFERENCE_SCHEMA, account_id, token_payload
from tests.support.helpers import NEW_SECRET, OLD_SECRET, last_json, open_value, run_cli


def _seed(url: str, table: str, n: int) -> dict[str, bytes]:
    key = MasterKey.from_secret(OLD_SECRET)
    payloads = {account_id(i): token_payload(i) for i in range(n)}
    schema = REFERENCE_SCHEMA.split("CREATE TABLE org_delegations")[0].replace("accounts", table)
    with libsql_client.create_client_sync(url) as c:
        c.execute(schema.strip().rstrip(";"))
        c.batch([libsql_client.Statement(
            f"INSERT INTO {table} (account_id, user_id, encrypted_tokens, created_at, updated_at) "
            "VALUES (?, ?, ?, 'now', 'now')", [k, "u", seal(p, key)]) for k, p in payloads.items()])
        c.execute(f"UPDATE {table} SET encrypted_tokens = '{{broken' WHERE account_id = ?",
                  [account_id(7)])
    payloads.pop(account_id(7))
    return payloads


@pytest.mark.parametrize("which", ["http", "ws"])
def test_reencrypt_and_verify_over_libsql_server(sqld_server, keys_env, which):
    url = sqld_server[0] if which == "http" else sqld_server[1]
    table = "acc_" + uuid.uuid4().hex[:8]
    payloads = _seed(url, table, 450)
    res = run_cli("reencrypt", "--db", url, "--target", f"{table}.encrypted_tokens",
                  "--old-key", keys_env["old"], "--new-key", keys_env["new"],
                  "--batch-size", "100", "--json")
    out = last_json(res.output)
    assert res.exit_code == 1, res.output  # one broken row
    assert out["rows_rewritten"] == 449 and out["rows_failed"] == 1
    assert out["failures"] == [{"id": account_id(7), "reason": "value is not valid JSON"}]
    with libsql_client.create_client_sync(url) as c:
        rows = {r[0]: r[1] for r in c.execute(f"SELECT account_id, encrypted_tokens FROM {table}").rows}
    assert rows[account_id(7)] == "{broken"
    for k, p in payloads.items():
        assert open_value(rows[k], NEW_SECRET) == p
    census = run_cli("verify", "--db", url, "--target", f"{table}.encrypted_tokens",
                     "--key", keys_env["new"], "--old-key", keys_env["old"], "--json")
    c = last_json(census.output)
    assert (c["ok"], c["old"], c["failed"]) == (449, 0, 1)
    again = last_json(run_cli("reencrypt", "--db", url, "--target", f"{table}.encrypted_tokens",
                              "--old-key", keys_env["old"], "--new-key", keys_env["new"],
                              "--json").output)
    assert again["rows_rewritten"] == 0


def test_auth_token_in_url_is_refused(keys_env):
    res = run_cli("runs", "--db", "libsql://example.invalid?authToken=abc")
    assert res.exit_code == 2 and "LIBSQL_AUTH_TOKEN" in res.output
