"""Manifests that would break the application are refused when keyrotate.toml is loaded:
exit 2, the file and the line, no traceback, and before any command touches a Worker, a
store or a row (issue 19, item 6 and the manifest part of item 9)."""

from __future__ import annotations

import time

import pytest

from keyrotate.config.load import load_manifest
from keyrotate.config.template import TEMPLATE
from keyrotate.errors import ConfigError
from keyrotate.secrets.formats import ValueFormat
from tests.support.helpers import run_cli

BASE = '''
[project]
name = "tminus"
worker_name = "tminus-{worker}-{env}"
deploy_order = ["api", "oauth"]
wrangler = ["npx", "wrangler"]

[environments.staging]
database = "file:staging.db"
secrets = "dotenv:.env.staging"
health = { api = "https://api-staging.example/health" }

[secrets.MASTER_KEY]
kind = "master-key"
workers = ["api", "oauth"]
format = "hex:32"
previous = "MASTER_KEY_PREVIOUS"

[secrets.JWT_SECRET]
kind = "jwt-hs256"
workers = ["api", "oauth"]
generate = "base64:32"
previous = "JWT_SECRET_PREVIOUS"
max_token_ttl = "1h"

[secrets.STRIPE_KEY]
kind = "external"
workers = ["api"]
format = "regex:sk_live_[0-9a-zA-Z]{24}"

[[encrypted]]
secret = "MASTER_KEY"
table = "accounts"
column = "encrypted_tokens"
'''

JWT_PREVIOUS = 'generate = "base64:32"\nprevious = "JWT_SECRET_PREVIOUS"'
STRIPE = 'format = "regex:sk_live_[0-9a-zA-Z]{24}"'


def _edit(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


# (the manifest, the line the error must name, what the message must say)
CASES = {
    "previous is the secret itself": (
        _edit('previous = "MASTER_KEY_PREVIOUS"', 'previous = "MASTER_KEY"'),
        'previous = "MASTER_KEY"', "previous is the secret's own name"),
    "two secrets share one previous": (
        _edit(JWT_PREVIOUS, 'generate = "base64:32"\nprevious = "MASTER_KEY_PREVIOUS"  # shared'),
        'previous = "MASTER_KEY_PREVIOUS"  # shared', "also the previous of [secrets.MASTER_KEY]"),
    "previous names another secret (a cycle)": (
        _edit('previous = "MASTER_KEY_PREVIOUS"', 'previous = "JWT_SECRET"'),
        'previous = "JWT_SECRET"', "is [secrets.JWT_SECRET] itself"),
    "previous names another secret's store slot": (
        _edit(STRIPE, STRIPE + '\nprevious = "JWT_SECRET_PENDING"'),
        'previous = "JWT_SECRET_PENDING"', "store slot of JWT_SECRET"),
    "a secret named like a pending slot": (
        BASE + '\n[secrets.SESSION_PENDING]\nkind = "generic"\nworkers = ["api"]\n',
        "[secrets.SESSION_PENDING]", "ends in _PENDING"),
    "a secret named like a previous slot": (
        BASE + '\n[secrets.MASTER_KEY_PREVIOUS]\nkind = "generic"\nworkers = ["api"]\n',
        "[secrets.MASTER_KEY_PREVIOUS]", "ends in _PREVIOUS"),
    "a secret named like the keyring's age stamp": (
        BASE + '\n[secrets.TOKEN_SET_AT]\nkind = "generic"\nworkers = ["api"]\n',
        "[secrets.TOKEN_SET_AT]", "ends in _SET_AT"),
    "a master key no Worker holds": (
        _edit('workers = ["api", "oauth"]\nformat = "hex:32"', 'workers = []\nformat = "hex:32"'),
        "workers = []", "no Worker holds it"),
    "a JWT secret no Worker holds": (
        _edit('kind = "jwt-hs256"\nworkers = ["api", "oauth"]', 'kind = "jwt-hs256"'),
        "[secrets.JWT_SECRET]", "no Worker holds it"),
    "worker_name with an unknown placeholder": (
        _edit('"tminus-{worker}-{env}"', '"tminus-{worker}-{environment}"'),
        'worker_name = "tminus-{worker}-{environment}"', "unknown placeholder {environment}"),
    "worker_name with an unclosed brace": (
        _edit('"tminus-{worker}-{env}"', '"tminus-{worker}-{env"'),
        'worker_name = "tminus-{worker}-{env"', "unclosed or stray brace"),
    "worker_name with a stray closing brace": (
        _edit('"tminus-{worker}-{env}"', '"tminus-{worker}-env}"'),
        'worker_name = "tminus-{worker}-env}"', "unclosed or stray brace"),
    "worker_name with a format spec": (
        _edit('"tminus-{worker}-{env}"', '"tminus-{worker!r}-{env}"'),
        'worker_name = "tminus-{worker!r}-{env}"', "plain {worker}, {env} or {project}"),
    "worker_name without {env} while two environments share it": (
        _edit('"tminus-{worker}-{env}"', '"tminus-{worker}"') + '\n[environments.production]\n'
        'database = "file:prod.db"\nsecrets = "dotenv:.env.production"\n',
        'worker_name = "tminus-{worker}"', "every environment would act on the same Workers"),
    "an empty wrangler command": (
        _edit('wrangler = ["npx", "wrangler"]', "wrangler = []"),
        "wrangler = []", "wrangler must name the command"),
    "a key_column that is not a name": (
        BASE + "key_column = 5\n", "key_column = 5", "key_column must be a column name"),
    "a column that is not a name": (
        _edit('column = "encrypted_tokens"', "column = 7"), "column = 7", "column must be a column name"),
    "generate below 32 bytes (a new key)": (
        _edit('generate = "base64:32"', 'generate = "base64:8"'),
        'generate = "base64:8"', "outside 32 to 1024 bytes"),
    "generate above 1024 bytes": (
        _edit('generate = "base64:32"', 'generate = "hex:4096"'),
        'generate = "hex:4096"', "outside 32 to 1024 bytes"),
    "format below 16 bytes": (
        _edit('format = "hex:32"', 'format = "hex:8"'), 'format = "hex:8"', "between 16 and 1024 bytes"),
    "format above 1024 bytes": (
        _edit('format = "hex:32"', 'format = "base64:2048"'),
        'format = "base64:2048"', "between 16 and 1024 bytes"),
    "a health URL with a password": (
        _edit("https://api-staging.example/health", "https://ops:s3cr3t-pw@api-staging.example/health"),
        'health = { api = "https://ops:s3cr3t-pw@api-staging.example/health" }',
        "must not carry credentials"),
    "a health URL with a token parameter": (
        _edit("https://api-staging.example/health", "https://api-staging.example/health?token=s3cr3t-pw"),
        'health = { api = "https://api-staging.example/health?token=s3cr3t-pw" }',
        "must not carry credentials"),
    "a regex that backtracks forever": (
        _edit(STRIPE, 'format = "regex:(a|a)+$"'), 'format = "regex:(a|a)+$"', "took too long"),
    "a regex that backtracks forever after a literal prefix": (
        _edit(STRIPE, 'format = "regex:sk_(x|x|x)+y"'), 'format = "regex:sk_(x|x|x)+y"', "took too long"),
    "a regex that backtracks forever after a class prefix": (
        _edit(STRIPE, 'format = "regex:[0-9]{4}(a|a)*$"'), 'format = "regex:[0-9]{4}(a|a)*$"',
        "took too long"),
    "a regex that accepts an empty value": (
        _edit(STRIPE, 'format = "regex:[0-9a-z]*"'), 'format = "regex:[0-9a-z]*"',
        "accepts an empty value"),
    "a regex that does not compile": (
        _edit(STRIPE, 'format = "regex:sk_(live"'), 'format = "regex:sk_(live"', "does not compile"),
    "a JWT overlap without max_token_ttl": (
        _edit('max_token_ttl = "1h"\n', ""), 'previous = "JWT_SECRET_PREVIOUS"', "max_token_ttl"),
}


def test_the_base_manifest_and_the_init_template_load(tmp_path):
    for text in (BASE, TEMPLATE):
        (tmp_path / "keyrotate.toml").write_text(text)
        load_manifest(tmp_path / "keyrotate.toml")


@pytest.mark.parametrize("case", list(CASES))
def test_a_manifest_that_breaks_the_app_is_refused_at_load_with_its_line(tmp_path, monkeypatch, case):
    text, line_text, message = CASES[case]
    path = tmp_path / "keyrotate.toml"
    path.write_text(text)
    line = text.splitlines().index(line_text) + 1
    monkeypatch.chdir(tmp_path)
    res = run_cli("validate", "--env", "staging", "--json")
    assert res.exit_code == 2, res.output
    assert message in res.output and f"keyrotate.toml:{line}:" in res.output, res.output
    assert "Traceback" not in res.output and "s3cr3t-pw" not in res.output
    assert not (tmp_path / "staging.db").exists() and not (tmp_path / ".keyrotate").exists()


def test_a_pattern_that_slipped_past_the_probe_cannot_hang_a_rotation():
    """The probe at load is a heuristic; matching itself has a deadline. This pattern needs
    "x", a digit and "y" before its runaway part, which no probe string has."""
    fmt = ValueFormat("regex", pattern="x[0-9]y(a|a)*$")
    started = time.monotonic()
    problem = fmt.problem("x0y" + "a" * 64 + "!")
    assert problem is not None and "took too long" in problem and "aaaa" not in problem
    assert time.monotonic() - started < 60      # bounded by the deadline, not by 2**64 steps
    assert fmt.problem("x0yaaa") is None


def test_values_are_checked_with_the_regex_engine_the_probe_used():
    with pytest.raises(ConfigError, match="does not compile"):
        ValueFormat.parse("regex:sk_(live", "keyrotate.toml")
    fmt = ValueFormat.parse(r"regex:sk_live_\p{Alnum}{24}", "keyrotate.toml")   # `regex` syntax
    assert fmt.problem("sk_live_" + "a" * 24) is None and fmt.problem("sk_live_short") is not None
