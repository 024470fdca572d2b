"""Fixtures: keys in the environment, reference databases, and a real libSQL server."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from keyrotate.demo.build import build_reference_db
from tests.support.cloudflare_project import project  # noqa: F401 (a fixture)
from tests.support.helpers import NEW_SECRET, OLD_SECRET, THIRD_SECRET
from tests.support.services import OpenBaoDev, SecretService, Sqld


@pytest.fixture
def keys_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """OLD (base64 derivation) and NEW (64-hex raw) in env vars KR_OLD / KR_NEW."""
    monkeypatch.setenv("KR_OLD", OLD_SECRET)
    monkeypatch.setenv("KR_NEW", NEW_SECRET)
    return {"old": "env:KR_OLD", "new": "env:KR_NEW"}


@pytest.fixture
def three_keys(monkeypatch: pytest.MonkeyPatch) -> tuple[str, str, str]:
    """References to three keys: OLD, NEW and a third (KR_A, KR_B, KR_C)."""
    monkeypatch.setenv("KR_A", OLD_SECRET)
    monkeypatch.setenv("KR_B", NEW_SECRET)
    monkeypatch.setenv("KR_C", THIRD_SECRET)
    return "env:KR_A", "env:KR_B", "env:KR_C"


@pytest.fixture
def ref_db(tmp_path: Path):
    """A factory: reference-schema database with n accounts sealed under OLD (no kid)."""

    def make(n: int = 500, name: str = "ref.db", null_every: int = 0) -> Path:
        path = tmp_path / name
        build_reference_db(str(path), n, OLD_SECRET, null_every=null_every)
        return path

    return make


@pytest.fixture(scope="session")
def sqld_server(tmp_path_factory: pytest.TempPathFactory):
    """A real libSQL server. Yields (http_url, ws_url)."""
    server = Sqld(tmp_path_factory.mktemp("sqld"))
    yield server.http_url, server.ws_url
    server.stop()


@pytest.fixture(scope="session")
def bao(tmp_path_factory):
    server = OpenBaoDev(tmp_path_factory.mktemp("bao") / "bao.log")
    yield server
    server.stop()


@pytest.fixture
def vault_env(bao, monkeypatch):
    monkeypatch.setenv("VAULT_ADDR", bao.addr)
    monkeypatch.setenv("VAULT_TOKEN", bao.token)
    return bao


@pytest.fixture(scope="session")
def secret_service(tmp_path_factory):
    service = SecretService(tmp_path_factory.mktemp("keyring-home"))
    yield service
    service.stop()


@pytest.fixture
def keyring_env(secret_service, monkeypatch):
    import keyring
    from keyring.backends import SecretService as SS

    for k in ("DBUS_SESSION_BUS_ADDRESS", "XDG_RUNTIME_DIR"):
        monkeypatch.setenv(k, secret_service.env[k])
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.SecretService.Keyring")
    previous = keyring.get_keyring()
    keyring.set_keyring(SS.Keyring())
    yield secret_service
    keyring.set_keyring(previous)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The real wrangler (node) takes seconds a command: its tests are in the slow tier."""
    for item in items:
        if item.get_closest_marker("real_wrangler") is not None:
            item.add_marker(pytest.mark.slow)


def pytest_configure(config: pytest.Config) -> None:
    if shutil.which("node") is None:
        raise pytest.UsageError("node is required for the WebCrypto interop tests")


@pytest.fixture
def cf(monkeypatch):
    """The Cloudflare API stand-in (D1's REST rules over real SQLite), reached by
    d1:// URLs and wrangler through the environment."""
    from tests.support.cf_api import CloudflareStandIn

    standin = CloudflareStandIn()
    monkeypatch.setenv("CLOUDFLARE_API_BASE_URL", standin.base_url)
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", "test-token")
    yield standin
    standin.stop()
