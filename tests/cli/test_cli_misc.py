"""keygen, runs, demo, and the CLI's contract (help, --json last line, no tracebacks)."""

from __future__ import annotations

import base64
import sys

import pytest

from keyrotate.cli import main
from keyrotate.secrets.refs import resolve
from tests.support.helpers import cli_commands, file_mode, last_json, run_cli


def test_keygen_prints_openssl_style_base64_and_hex():
    b64 = run_cli("keygen").output.strip()
    assert len(base64.b64decode(b64, validate=True)) == 32
    hexkey = run_cli("keygen", "--format", "hex").output.strip()
    assert len(bytes.fromhex(hexkey)) == 32 and len(hexkey) == 64
    assert run_cli("keygen").output.strip() != b64


def test_keygen_to_file_and_dotenv_never_prints_and_never_overwrites(tmp_path):
    f = tmp_path / "master.key"
    res = run_cli("keygen", "--to", f"file:{f}")
    assert res.exit_code == 0
    value = resolve(f"file:{f}")
    assert value not in res.output and file_mode(f) == 0o600
    again = run_cli("keygen", "--to", f"file:{f}")
    assert again.exit_code == 2 and "refusing to overwrite" in again.output
    assert resolve(f"file:{f}") == value

    env = tmp_path / ".env"
    env.write_text("# app settings\nAPI_URL=https://x\n")
    res = run_cli("keygen", "--format", "hex", "--to", f"dotenv:{env}#MASTER_KEY")
    assert res.exit_code == 0
    lines = env.read_text().splitlines()
    assert lines[:2] == ["# app settings", "API_URL=https://x"]
    assert lines[2].startswith("# keyrotate: MASTER_KEY set ") and lines[3].startswith("MASTER_KEY=")
    assert resolve(f"dotenv:{env}#MASTER_KEY") not in res.output
    # an existing file keeps its mode (0644 from write_text here), with a warning
    assert file_mode(env) == 0o644 and "readable by every user" in res.output


def test_keygen_to_env_is_refused():
    res = run_cli("keygen", "--to", "env:X")
    assert res.exit_code == 2 and "read-only" in res.output


def test_demo_rotates_and_verifies(tmp_path):
    res = run_cli("demo", "--rows", "400", "--dir", str(tmp_path / "d"), "--json")
    assert res.exit_code == 0, res.output
    out = last_json(res.output)
    assert out["clean"] and out["verify"]["ok"] == 400 and out["reencrypt"]["rows_rewritten"] == 400
    assert file_mode(tmp_path / "d" / ".env") == 0o600
    # under the test runner keyrotate is no script on PATH: the commands say how to run it
    assert out["commands"][0].startswith(f"{sys.executable} -m keyrotate.cli keygen ")
    assert "-m keyrotate.cli" in out["note"]


def test_runs_on_a_database_without_journal(ref_db):
    db = ref_db(3)
    res = run_cli("runs", "--db", f"file:{db}", "--json")
    assert res.exit_code == 0 and last_json(res.output) == {"runs": []}
    res = run_cli("runs", "--db", f"file:{db}", "r-nope")
    assert res.exit_code == 2 and "no run" in res.output


@pytest.mark.parametrize("command", ["reencrypt", "verify", "runs", "keygen", "demo"])
def test_every_command_has_help(command):
    res = run_cli(command, "--help")
    assert res.exit_code == 0 and "Usage:" in res.output


def test_console_script_is_declared():
    assert main.name == "main" and set(main.commands) >= {"reencrypt", "verify", "runs", "keygen", "demo"}


def test_json_errors_are_json_too(ref_db):
    db = ref_db(3)
    bad_ref = run_cli("reencrypt", "--db", f"file:{db}", "--target", "accounts.encrypted_tokens",
                      "--old-key", "env:KR_NOT_SET", "--new-key", "env:KR_NOT_SET_EITHER", "--json")
    assert bad_ref.exit_code == 2
    err = last_json(bad_ref.output)["error"]
    assert err["exit_code"] == 2 and err["type"] == "SecretStoreError" and "KR_NOT_SET" in err["message"]

    usage = run_cli("reencrypt", "--target", "a.b", "--json")  # --db missing
    assert usage.exit_code == 2
    assert last_json(usage.output)["error"]["type"] == "UsageError"
    assert "--db" in last_json(usage.output)["error"]["message"]

    no_json = run_cli("reencrypt", "--target", "a.b")
    assert no_json.exit_code == 2 and "Usage:" in no_json.output and "{" not in no_json.output


def test_every_result_carries_its_exit_code_and_renders_itself():
    import importlib
    import inspect
    import pkgutil

    import keyrotate
    from keyrotate.results import Result

    results = []
    for info in pkgutil.walk_packages(keyrotate.__path__, "keyrotate."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        results += [c for _, c in inspect.getmembers(module, inspect.isclass)
                    if c.__module__ == info.name and callable(getattr(c, "as_dict", None))
                    and ("exit_code" in getattr(c, "__dataclass_fields__", {})
                         or isinstance(getattr(c, "exit_code", None), property))]
    assert len(results) >= 20
    for kind in results:
        assert callable(getattr(kind, "text", None)), f"{kind.__name__} does not render itself"
    assert not isinstance(object(), Result)


@pytest.mark.parametrize("name", ["MASTER_KEY ", "export MASTER_KEY", "MASTER_KEY=x", "", "BAD NAME",
                                  "9LIVES", "MASTER-KEY"])
def test_keygen_to_refuses_names_that_are_not_names(tmp_path, name):
    env = tmp_path / ".env"
    env.write_text("MASTER_KEY=keep-this-one\n")
    res = run_cli("keygen", "--to", f"dotenv:{env}#{name}")
    assert res.exit_code == 2 and "secret name must be" in res.output, res.output
    assert env.read_text() == "MASTER_KEY=keep-this-one\n"
    assert resolve(f"dotenv:{env}#MASTER_KEY") == "keep-this-one"


@pytest.mark.parametrize("url", ["libsql://user:s3cr3t-t0ken@db.example", "https://:s3cr3t-t0ken@db.example",
                                 "libsql://db.example?authToken=s3cr3t-t0ken",
                                 "wss://db.example/?jwt=s3cr3t-t0ken", "d1://s3cr3t-t0ken@acct/db"])
def test_credentials_in_database_urls_are_refused_and_never_printed(url):
    res = run_cli("runs", "--db", url, "--json")
    assert res.exit_code == 2 and "must not carry credentials" in res.output
    assert "s3cr3t-t0ken" not in res.output


def test_demo_refuses_a_folder_it_did_not_make(tmp_path):
    real = tmp_path / "app"
    real.mkdir()
    (real / ".env").write_text("MASTER_KEY=the-real-one\n")
    (real / "demo.db").write_bytes(b"not the demo's")
    res = run_cli("demo", "--rows", "10", "--dir", str(real))
    assert res.exit_code == 2 and "did not make" in res.output
    assert (real / ".env").read_text() == "MASTER_KEY=the-real-one\n"
    assert (real / "demo.db").read_bytes() == b"not the demo's"
    ours = tmp_path / "d"
    assert run_cli("demo", "--rows", "10", "--dir", str(ours)).exit_code == 0
    assert run_cli("demo", "--rows", "10", "--dir", str(ours)).exit_code == 0  # its own: again
    assert run_cli("demo", "--rows", "10", "--dir", str(real), "--force").exit_code == 0


def test_keygen_json(tmp_path):
    printed = last_json(run_cli("keygen", "--format", "hex", "--json").output)
    assert len(bytes.fromhex(printed["value"])) == 32 and printed["written_to"] is None
    f = tmp_path / "k"
    stored = run_cli("keygen", "--to", f"file:{f}", "--json")
    out = last_json(stored.output)
    assert out["written_to"] == f"file:{f}" and "value" not in out
    assert resolve(f"file:{f}") not in stored.output


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_and_quiet_work_before_and_after_the_command(ref_db, keys_env, tmp_path, where):
    db = ref_db(5)
    args = ["reencrypt", "--db", f"file:{db}", "--target", "accounts.encrypted_tokens",
            "--old-key", keys_env["old"], "--new-key", keys_env["new"]]
    loud = run_cli(*(["-v", *args] if where == "before" else [*args, "-v"]))
    assert loud.exit_code == 0, loud.output
    assert "keyrotate: debug:" in loud.stderr

    demo = ["demo", "--rows", "5", "--dir", str(tmp_path / "d")]
    quiet = run_cli(*(["-q", *demo] if where == "before" else [*demo, "-q"]))
    assert quiet.exit_code == 0 and "building" not in quiet.stderr
    said = run_cli(*demo)
    assert said.exit_code == 0 and "building" in said.stderr   # what -q silenced


def test_every_command_takes_verbose_and_quiet_after_it():
    for path, cmd in cli_commands().items():
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        assert {"-v", "--verbose", "-q", "--quiet"} <= opts, path
