"""Secret references: env, file, dotenv; literals refused without echoing them."""

from __future__ import annotations

import os

import pytest

from keyrotate.errors import ConfigError, SecretStoreError
from keyrotate.secrets.dotenv import DotenvStore, read_dotenv
from keyrotate.secrets.refs import parse_ref, resolve
from tests.support.helpers import NEW_SECRET, OLD_SECRET, file_mode


def test_env(monkeypatch):
    monkeypatch.setenv("K1", OLD_SECRET)
    assert resolve("env:K1") == OLD_SECRET
    monkeypatch.delenv("K1")
    with pytest.raises(SecretStoreError, match="env:K1 is not set"):
        resolve("env:K1")


def test_file_strips_exactly_one_newline(tmp_path):
    p = tmp_path / "k"
    p.write_text(NEW_SECRET + "\n\n")
    assert resolve(f"file:{p}") == NEW_SECRET + "\n"
    p.write_text(NEW_SECRET + "\r\n")
    assert resolve(f"file:{p}") == NEW_SECRET
    p.write_text(NEW_SECRET)
    assert resolve(f"file:{p}") == NEW_SECRET
    with pytest.raises(SecretStoreError, match="does not exist"):
        resolve(f"file:{tmp_path}/missing")


def test_dotenv_parsing(tmp_path):
    p = tmp_path / ".env"
    p.write_text("# comment\n\nexport A=plain # trailing comment\nB='single # kept'\n"
                 'C="esc\\"aped\\nline"\nD = spaced \nA=second\n')
    values = read_dotenv(str(p))
    assert values == {"A": "second", "B": "single # kept", "C": 'esc"aped\nline', "D": "spaced"}
    assert resolve(f"dotenv:{p}#B") == "single # kept"
    with pytest.raises(SecretStoreError, match="Z is not set"):
        resolve(f"dotenv:{p}#Z")
    p.write_text("this is not a dotenv line\n")
    with pytest.raises(SecretStoreError, match="line 1 is not NAME=value"):
        resolve(f"dotenv:{p}#A")


@pytest.mark.parametrize("literal", [OLD_SECRET, NEW_SECRET, "hunter2", "MASTER_KEY"])
def test_literal_keys_are_refused_and_not_echoed(literal):
    with pytest.raises(ConfigError) as err:
        parse_ref(literal, "--old-key")
    assert literal not in str(err.value)
    assert "literal keys are refused" in str(err.value)


def test_ref_shapes():
    with pytest.raises(ConfigError, match="needs #NAME"):
        parse_ref("dotenv:.env")
    with pytest.raises(ConfigError, match="names nothing"):
        parse_ref("env:")
    assert str(parse_ref("vault:secret/app/MASTER_KEY#value@2")) == "vault:secret/app/MASTER_KEY#value@2"


def test_add_new_entry_keeps_lines_and_mode_and_never_overwrites(tmp_path):
    p = tmp_path / ".env"
    p.write_text("# keep me\nOTHER='x'  \n")
    os.chmod(p, 0o600)
    DotenvStore(str(p)).write_new("MASTER_KEY", OLD_SECRET)
    lines = p.read_text().splitlines()
    assert lines[:2] == ["# keep me", "OTHER='x'  "] and lines[3] == f"MASTER_KEY={OLD_SECRET}"
    assert lines[2].startswith("# keyrotate: MASTER_KEY set ")
    assert DotenvStore(str(p)).set_at("MASTER_KEY") is not None
    assert file_mode(p) == 0o600
    with pytest.raises(SecretStoreError, match="already set"):
        DotenvStore(str(p)).write_new("MASTER_KEY", NEW_SECRET)
    assert resolve(f"dotenv:{p}#MASTER_KEY") == OLD_SECRET


def test_dotenv_quoted_values_may_carry_a_comment(tmp_path):
    p = tmp_path / ".env"
    p.write_text('A="v1" # the first\nB=\'v 2\'   # the second\nC="a \\"q\\" # not a comment"\n')
    assert read_dotenv(str(p)) == {"A": "v1", "B": "v 2", "C": 'a "q" # not a comment'}
    p.write_text('A="v1" trailing\n')
    with pytest.raises(SecretStoreError, match="after the closing quote"):
        read_dotenv(str(p))


def test_dotenv_writes_follow_a_symlink_and_keep_mode_and_group(tmp_path):
    real = tmp_path / "secrets" / "app.env"
    real.parent.mkdir()
    real.write_text("A=1\n")
    os.chmod(real, 0o640)
    gid = next((g for g in os.getgroups() if g != os.stat(real).st_gid), os.stat(real).st_gid)
    os.chown(real, -1, gid)
    link = tmp_path / ".env"
    link.symlink_to(real)
    DotenvStore(str(link)).write_new("MASTER_KEY", NEW_SECRET)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert read_dotenv(str(real))["MASTER_KEY"] == NEW_SECRET
    assert file_mode(real) == 0o640 and os.stat(real).st_gid == gid
    fresh = tmp_path / "new.env"
    DotenvStore(str(fresh)).write_new("MASTER_KEY", NEW_SECRET)
    assert file_mode(fresh) == 0o600


def test_a_missing_folder_is_a_clear_error(tmp_path):
    from tests.support.helpers import run_cli

    res = run_cli("keygen", "--to", f"dotenv:{tmp_path}/no/such/dir/.env#MASTER_KEY")
    assert res.exit_code == 2 and "does not exist" in res.output and "Traceback" not in res.output
