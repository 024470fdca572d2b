"""Secret stores against the real things: a .env file, gnome-keyring's Secret Service over
D-Bus, and an OpenBao dev server (Vault KV v2)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import hvac
import pytest

from keyrotate.errors import SecretStoreError
from keyrotate.secrets.dotenv import DotenvStore
from keyrotate.secrets.keyring_store import KeyringStore
from keyrotate.secrets.refs import resolve
from keyrotate.secrets.schemes import open_secret_store
from keyrotate.secrets.vault_store import VaultSecret, VaultStore
from tests.support.helpers import (
    NEW_SECRET,
    OLD_SECRET,
    file_mode,
    last_json,
    open_value,
    rows_of,
    run_cli,
)
from tests.support.services import OpenBaoDev, SecretService


def _unique() -> str:
    return "kr-" + uuid.uuid4().hex[:10]


@pytest.fixture(params=["dotenv", "keyring", "vault"])
def store(request, tmp_path):
    if request.param == "dotenv":
        return DotenvStore(str(tmp_path / ".env"))
    if request.param == "keyring":
        request.getfixturevalue("keyring_env")
        return KeyringStore(_unique())
    request.getfixturevalue("vault_env")
    return VaultStore(f"secret/{_unique()}/production")


def test_pending_promote_previous_contract(store):
    assert store.read("MASTER_KEY") is None
    store.write_pending("MASTER_KEY", OLD_SECRET)
    assert store.read("MASTER_KEY") is None and store.read("MASTER_KEY", "pending") == OLD_SECRET
    store.promote("MASTER_KEY")
    assert store.read("MASTER_KEY") == OLD_SECRET and store.read("MASTER_KEY", "pending") is None

    store.write_pending("MASTER_KEY", NEW_SECRET)
    store.write_pending("MASTER_KEY", NEW_SECRET)  # idempotent: a re-run of the same rotation
    assert store.read("MASTER_KEY") == OLD_SECRET  # nothing changes for readers yet
    with pytest.raises(SecretStoreError, match="different pending"):
        store.write_pending("MASTER_KEY", "a third value")
    assert resolve(store.ref("MASTER_KEY", "pending")) == NEW_SECRET
    store.promote("MASTER_KEY")
    assert store.read("MASTER_KEY") == NEW_SECRET
    assert store.read("MASTER_KEY", "previous") == OLD_SECRET
    assert resolve(store.ref("MASTER_KEY")) == NEW_SECRET
    assert resolve(store.ref("MASTER_KEY", "previous")) == OLD_SECRET
    with pytest.raises(SecretStoreError, match="nothing pending"):
        store.promote("MASTER_KEY")
    assert "MASTER_KEY" in store.names()
    set_at = store.set_at("MASTER_KEY")
    assert set_at is not None and datetime.now(timezone.utc) - set_at < timedelta(minutes=5)

    store.write_pending("MASTER_KEY", "abandoned")
    store.discard_pending("MASTER_KEY")
    assert store.read("MASTER_KEY", "pending") is None and store.read("MASTER_KEY") == NEW_SECRET


def test_dotenv_rewrite_keeps_every_other_byte(tmp_path):
    path = tmp_path / ".env"
    original = ("# production settings\r\nexport API_URL=https://api.example  # inline\r\n\r\n"
                "MASTER_KEY=" + OLD_SECRET + "\r\nMASTER_KEY_PREVIOUS=older\r\n"
                "GOOGLE_CLIENT_ID='abc#def'\r\n# trailing comment\r\n")
    path.write_bytes(original.encode())
    path.chmod(0o600)
    store = DotenvStore(str(path))
    store.write_pending("MASTER_KEY", NEW_SECRET)
    store.promote("MASTER_KEY")
    after = path.read_bytes().decode()
    kept = [ln for ln in original.split("\r\n") if not ln.startswith("MASTER_KEY")]
    assert [ln for ln in after.split("\r\n") if not ln.startswith(("MASTER_KEY", "# keyrotate:"))] == kept
    assert f"MASTER_KEY={NEW_SECRET}\r\n" in after and f"MASTER_KEY_PREVIOUS={OLD_SECRET}\r\n" in after
    assert after.count("MASTER_KEY_PREVIOUS=") == 1 and "MASTER_KEY_PENDING" not in after
    assert file_mode(path) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".keyrotate-")]


def test_reencrypt_between_two_vault_versions(vault_env, ref_db):
    name = f"secret/{_unique()}/MASTER_KEY"
    client = hvac.Client(url=vault_env.addr, token=vault_env.token)
    mount, path = name.split("/", 1)
    client.secrets.kv.v2.create_or_update_secret(path=path, secret={"value": OLD_SECRET}, mount_point=mount)
    client.secrets.kv.v2.create_or_update_secret(path=path, secret={"value": NEW_SECRET}, mount_point=mount)
    db = ref_db(200)
    res = run_cli("reencrypt", "--db", f"file:{db}", "--target", "accounts.encrypted_tokens",
                  "--old-key", f"vault:{name}@1", "--new-key", f"vault:{name}", "--json")
    assert res.exit_code == 0, res.output
    assert last_json(res.output)["rows_rewritten"] == 200
    assert all(open_value(v.decode(), NEW_SECRET) for v in rows_of(db).values())


def test_reencrypt_between_two_keyring_entries(keyring_env, ref_db):
    service = _unique()
    store = KeyringStore(service)
    store.write_new("MASTER_KEY", OLD_SECRET)
    store.write_pending("MASTER_KEY", NEW_SECRET)
    db = ref_db(200)
    res = run_cli("reencrypt", "--db", f"file:{db}", "--target", "accounts.encrypted_tokens",
                  "--old-key", store.ref("MASTER_KEY"), "--new-key", store.ref("MASTER_KEY", "pending"),
                  "--json")
    assert res.exit_code == 0, res.output
    assert all(open_value(v.decode(), NEW_SECRET) for v in rows_of(db).values())


def test_vault_write_racing_a_promote_is_detected(vault_env, monkeypatch):
    store = VaultStore(f"secret/{_unique()}")
    store.write_pending("JWT_SECRET", OLD_SECRET)
    store.promote("JWT_SECRET")
    store.write_pending("JWT_SECRET", NEW_SECRET)
    other = hvac.Client(url=vault_env.addr, token=vault_env.token)
    real_write = VaultSecret.write

    def racing_write(self, data, cas):
        # someone else writes between our read and our check-and-set write
        other.secrets.kv.v2.create_or_update_secret(
            path=self.path, secret={"value": "written by someone else"}, mount_point=self.mount)
        return real_write(self, data, cas)

    monkeypatch.setattr(VaultSecret, "write", racing_write)
    with pytest.raises(SecretStoreError, match="changed concurrently"):
        store.promote("JWT_SECRET")
    monkeypatch.undo()
    assert store.read("JWT_SECRET") == "written by someone else"  # not overwritten


def test_vault_errors_name_the_reference_not_the_value(vault_env, monkeypatch, tmp_path):
    base = f"secret/{_unique()}"
    store = VaultStore(base)
    store.write_new("K", OLD_SECRET)
    store.write_pending("K", NEW_SECRET)
    store.promote("K")
    cases = {
        f"vault:{base}/missing": "no such secret",
        f"vault:{base}/K#nofield": "no field 'nofield'",
        f"vault:{base}/K@99": "no such secret version",
        f"vault:nosuchmount/{base}/K": "no such secret",
    }
    for ref, message in cases.items():
        with pytest.raises(SecretStoreError, match=message):
            resolve(ref)
    client = hvac.Client(url=vault_env.addr, token=vault_env.token)
    client.secrets.kv.v2.destroy_secret_versions(path=f"{base.split('/', 1)[1]}/K", versions=[1],
                                                 mount_point="secret")
    with pytest.raises(SecretStoreError, match="deleted or destroyed"):
        resolve(f"vault:{base}/K@1")
    weak = client.auth.token.create(policies=["default"], ttl="5m")["auth"]["client_token"]
    monkeypatch.setenv("VAULT_TOKEN", weak)
    with pytest.raises(SecretStoreError, match="permission denied"):
        resolve(f"vault:{base}/K")
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:9")  # nothing listens on port 9
    res = run_cli("reencrypt", "--db", "file:/nonexistent", "--target", "a.b",
                  "--old-key", f"vault:{base}/K@2", "--new-key", f"vault:{base}/K")
    # unreachable may pass: resumable, exit 3, and it says to run again
    assert res.exit_code == 3 and "unreachable" in res.output and "Traceback" not in res.output
    assert "run the same command again" in res.output
    assert OLD_SECRET not in res.output and NEW_SECRET not in res.output


def test_sealed_vault_is_a_clear_error(tmp_path, monkeypatch):
    server = OpenBaoDev(tmp_path / "sealed.log")  # its own server: sealing is for good
    try:
        monkeypatch.setenv("VAULT_ADDR", server.addr)
        monkeypatch.setenv("VAULT_TOKEN", server.token)
        VaultStore("secret/app").write_new("K", OLD_SECRET)
        hvac.Client(url=server.addr, token=server.token).sys.seal()
        with pytest.raises(SecretStoreError, match="sealed"):
            resolve("vault:secret/app/K")
    finally:
        server.stop()


def test_keyring_backend_missing_is_a_clear_error(monkeypatch):
    import keyring
    from keyring.backends import fail

    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        with pytest.raises(SecretStoreError, match="no OS keyring backend"):
            resolve("keyring:svc#MASTER_KEY")
    finally:
        keyring.set_keyring(previous)


def test_keygen_to_keyring_and_vault_and_show(keyring_env, vault_env):
    service, base = _unique(), f"secret/{_unique()}"
    for ref in (f"keyring:{service}#MASTER_KEY", f"vault:{base}/MASTER_KEY"):
        res = run_cli("keygen", "--format", "hex", "--to", ref)
        assert res.exit_code == 0, res.output
        value = resolve(ref)
        assert len(value) == 64 and value not in res.output
        again = run_cli("keygen", "--to", ref)
        assert again.exit_code == 2 and "overwrite" in again.output
        shown = run_cli("secrets", "show", ref, "--json")
        info = last_json(shown.output)
        # no environment, no audit key: no fingerprint (an unkeyed one is a guessing oracle)
        assert value not in shown.output and info["fingerprint"] is None
        assert info["master_key_kid"] and "fingerprint" not in shown.stdout.split("{")[0]
        assert info["derivation"].startswith("raw 32 bytes")
        revealed = last_json(run_cli("secrets", "show", ref, "--reveal", "--json").output)
        assert revealed["value"] == value


def test_open_secret_store_bases(tmp_path):
    assert isinstance(open_secret_store(f"dotenv:{tmp_path}/.env"), DotenvStore)
    assert isinstance(open_secret_store("keyring:svc"), KeyringStore)
    assert isinstance(open_secret_store("vault:secret/app"), VaultStore)


def test_locked_keyring_is_a_clear_error(tmp_path, monkeypatch):
    import keyring
    import secretstorage
    from keyring.backends import SecretService as SS

    service = SecretService(tmp_path)  # its own daemon: locking is for good
    try:
        for k in ("DBUS_SESSION_BUS_ADDRESS", "XDG_RUNTIME_DIR"):
            monkeypatch.setenv(k, service.env[k])
        previous = keyring.get_keyring()
        keyring.set_keyring(SS.Keyring())
        try:
            KeyringStore("svc").write_new("MASTER_KEY", OLD_SECRET)
            connection = secretstorage.dbus_init()
            secretstorage.get_default_collection(connection).lock()
            with pytest.raises(SecretStoreError, match="locked"):
                resolve("keyring:svc#MASTER_KEY")
        finally:
            keyring.set_keyring(previous)
    finally:
        service.stop()


def test_a_keyring_promote_stopped_midway_finishes_without_losing_the_old_value(keyring_env):
    """Review: a keyring promote is several writes. Stopped after the new value became
    current, the resumed promote copied "current" (the new value) to previous: the old
    value was gone and the new one sat in both slots."""
    store = KeyringStore(_unique())
    store.write_pending("MASTER_KEY", OLD_SECRET)
    store.promote("MASTER_KEY")
    store.write_pending("MASTER_KEY", NEW_SECRET)
    real_set, writes = store._set, []

    def killed_after_the_current_value(key: str, value: str) -> None:
        real_set(key, value)
        writes.append(key)
        if key == "MASTER_KEY":
            raise SystemExit(137)

    store._set = killed_after_the_current_value
    with pytest.raises(SystemExit):
        store.promote("MASTER_KEY")
    store._set = real_set
    assert writes == ["MASTER_KEY_PREVIOUS", "MASTER_KEY"]
    store.promote("MASTER_KEY")                       # the same command, resumed
    assert store.read("MASTER_KEY") == NEW_SECRET
    assert store.read("MASTER_KEY", "previous") == OLD_SECRET
    assert store.read("MASTER_KEY", "pending") is None
