"""From a store base (dotenv:PATH, keyring:SERVICE, vault:MOUNT/PATH) to a SecretStore."""

from __future__ import annotations

from keyrotate.errors import ConfigError
from keyrotate.refs import SecretRef
from keyrotate.secrets.base import SecretStore


def open_secret_store(base: str) -> SecretStore:
    scheme, sep, body = base.partition(":")
    if not sep or not body:
        raise ConfigError(f"secret store {base!r}: expected dotenv:PATH, keyring:SERVICE or "
                          "vault:MOUNT/PATH")
    if scheme == "dotenv":
        from keyrotate.secrets.dotenv import DotenvStore

        return DotenvStore(body)
    if scheme == "keyring":
        from keyrotate.secrets.keyring_store import KeyringStore

        return KeyringStore(body)
    if scheme == "vault":
        from keyrotate.secrets.vault_store import VaultStore

        return VaultStore(body)
    raise ConfigError(f"secret store {base!r}: stores are dotenv:, keyring: or vault:")


def store_for_new_secret(ref: SecretRef, value: str) -> str:
    """keygen --to keyring:SERVICE#NAME or vault:MOUNT/PATH: a brand-new secret only."""
    if ref.scheme == "keyring":
        from keyrotate.secrets.keyring_store import KeyringStore

        service, _, name = ref.body.rpartition("#")
        KeyringStore(service).write_new(name, value)
        return str(ref)
    if ref.scheme == "vault":
        from keyrotate.secrets.vault_store import VaultStore, parse_vault_ref

        vref = parse_vault_ref(ref.body)
        if vref.version is not None or vref.field != "value":
            raise ConfigError(f"--to {ref}: name the secret, without #FIELD or @VERSION")
        parent, _, name = vref.path.rpartition("/")
        VaultStore(f"{vref.mount}/{parent}" if parent else vref.mount).write_new(name, value)
        return str(ref)
    raise ConfigError(f"--to {ref.scheme}: is not a writable store")
