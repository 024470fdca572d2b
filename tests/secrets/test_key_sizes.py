"""One range for new keys everywhere: what keygen makes, the manifest's generate/format, and
what reencrypt accepts as --new-key agree, and --help shows it."""

from __future__ import annotations

import pytest

from keyrotate.config.load import load_manifest
from keyrotate.crypto.keys import MAX_NEW_KEY_BYTES, MIN_NEW_KEY_BYTES
from keyrotate.errors import ConfigError
from tests.support.helpers import OLD_SECRET, last_json, run_cli


@pytest.mark.parametrize("nbytes", [MIN_NEW_KEY_BYTES, 48, MAX_NEW_KEY_BYTES])
def test_every_size_keygen_makes_is_a_new_key_reencrypt_takes(ref_db, tmp_path, nbytes):
    db = ref_db(5)
    key = tmp_path / f"k{nbytes}"
    assert run_cli("keygen", "--bytes", str(nbytes), "--to", f"file:{key}").exit_code == 0
    res = run_cli("reencrypt", "--db", f"file:{db}", "--target", "accounts.encrypted_tokens",
                  "--old-key", "env:KR_OLD", "--new-key", f"file:{key}", "--dry-run", "--json",
                  env={"KR_OLD": OLD_SECRET})
    assert res.exit_code == 0, res.output
    assert last_json(res.output)["rows_scanned"] == 5


@pytest.mark.parametrize("nbytes", [16, MIN_NEW_KEY_BYTES - 1, MAX_NEW_KEY_BYTES + 1])
def test_keygen_refuses_what_reencrypt_would_refuse(nbytes):
    res = run_cli("keygen", "--bytes", str(nbytes))
    assert res.exit_code == 2 and f"{MIN_NEW_KEY_BYTES}<=x<={MAX_NEW_KEY_BYTES}" in res.output


def test_keygen_help_shows_the_range():
    out = " ".join(run_cli("keygen", "--help").output.split())
    assert f"{MIN_NEW_KEY_BYTES} to {MAX_NEW_KEY_BYTES} bytes" in out


def test_a_hex_key_that_is_no_master_key_is_warned_about():
    res = run_cli("keygen", "--format", "hex", "--bytes", "48")
    assert res.exit_code == 0 and "refused as a new master key" in res.output


def _manifest(tmp_path, secret_lines: str):
    path = tmp_path / "keyrotate.toml"
    path.write_text(f'''
[project]
name = "app"
deploy_order = ["api"]

[environments.staging]
database = "file:staging.db"
secrets = "dotenv:.env.staging"

[secrets.TOKEN]
workers = ["api"]
{secret_lines}
''')
    return path


@pytest.mark.parametrize("lines", ['kind = "internal"\ngenerate = "base64:16"',
                                   'kind = "internal"\nformat = "hex:16"',
                                   'kind = "jwt-hs256"\ngenerate = "hex:2048"'])
def test_the_manifest_refuses_new_keys_outside_the_range(tmp_path, lines):
    with pytest.raises(ConfigError, match=f"outside {MIN_NEW_KEY_BYTES} to {MAX_NEW_KEY_BYTES} bytes"):
        load_manifest(_manifest(tmp_path, lines))


def test_an_external_secret_may_have_the_providers_shorter_format(tmp_path):
    m = load_manifest(_manifest(tmp_path, 'kind = "external"\nformat = "base64:16"'))
    assert str(m.secret("TOKEN").format) == "base64:16"
