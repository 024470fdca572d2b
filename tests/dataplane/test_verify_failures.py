"""`verify` with a wrong key: the output says how many failures it did not list and how to
get every failed id (verify makes no run, so `keyrotate runs` is no pointer)."""

from __future__ import annotations

from keyrotate.demo.build import account_id
from tests.support.helpers import file_mode, last_json, run_cli

TARGET = "accounts.encrypted_tokens"


def _verify(db, *extra):
    return run_cli("verify", "--db", f"file:{db}", "--target", TARGET, "--key", "env:KR_NEW", *extra)


def test_a_wrong_key_lists_the_first_failures_and_says_so(ref_db, keys_env):
    db = ref_db(150)
    res = _verify(db, "--json")
    assert res.exit_code == 1
    out = last_json(res.output)
    assert out["failed"] == out["failures_total"] == 150
    assert len(out["failures"]) == 100 and out["failures_truncated"] is True
    text = _verify(db).output
    assert "130 more (`--failed-ids FILE` writes every failed id" in text
    assert "keyrotate runs" not in text

    clean = last_json(run_cli("verify", "--db", f"file:{db}", "--target", TARGET, "--key",
                              "env:KR_OLD", "--json").output)
    assert clean["failures_total"] == 0 and clean["failures_truncated"] is False


def test_failed_ids_writes_every_id_atomically(ref_db, keys_env, tmp_path):
    db = ref_db(150)
    ids = tmp_path / "out" / "failed.txt"
    missing_folder = _verify(db, "--failed-ids", str(ids))
    assert missing_folder.exit_code == 2 and "does not exist" in missing_folder.output
    ids.parent.mkdir()
    res = _verify(db, "--failed-ids", str(ids), "--json")
    assert res.exit_code == 1 and last_json(res.output)["failed_ids_file"] == str(ids)
    assert ids.read_text().splitlines() == [account_id(i) for i in range(150)]
    assert file_mode(ids) == 0o644
    assert f"every failed id is in {ids}" in _verify(db, "--failed-ids", str(ids)).output

    # a clean census replaces the list with an empty one; no temp file is left behind
    ok = run_cli("verify", "--db", f"file:{db}", "--target", TARGET, "--key", "env:KR_OLD",
                 "--failed-ids", str(ids))
    assert ok.exit_code == 0 and ids.read_text() == ""
    assert [p.name for p in ids.parent.iterdir()] == ["failed.txt"]
