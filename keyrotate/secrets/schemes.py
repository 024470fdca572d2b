"""The one registry of secret-reference schemes.

Each scheme says what it can do with a reference body: read it (every scheme), write a
brand-new secret there (`keygen --to`; never replaces a key), and open a store base
(`dotenv:PATH`, `keyring:SERVICE`, `vault:MOUNT/PATH`) holding current / pending /
previous values. Heavy backends (keyring, hvac) are imported only when used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from keyrotate.errors import ConfigError

if TYPE_CHECKING:
    from keyrotate.secrets.base import SecretStore


@dataclass(frozen=True)
class Scheme:
    name: str
    read: Callable[[str], str]
    write_new: Callable[[str, str], None] | None = None
    open_store: Callable[[str], "SecretStore"] | None = None


# scheme -> the module that defines SCHEME for it
MODULES = {
    "env": "keyrotate.secrets.plain",
    "file": "keyrotate.secrets.plain",
    "dotenv": "keyrotate.secrets.dotenv",
    "keyring": "keyrotate.secrets.keyring_store",
    "vault": "keyrotate.secrets.vault_store",
}
NAMES = tuple(MODULES)
STORE_NAMES = ("dotenv", "keyring", "vault")
STORE_HELP = "dotenv:PATH, keyring:SERVICE or vault:MOUNT/PATH"


def scheme_for(name: str, what: str = "reference") -> Scheme:
    if name not in MODULES:
        raise ConfigError(f"{what}: unknown scheme {name!r}")
    try:
        module = importlib.import_module(MODULES[name])
    except ModuleNotFoundError:
        raise ConfigError(f"{what}: {name}: references are not available in this "
                          "installation") from None
    handlers: dict[str, Scheme] = module.SCHEMES
    return handlers[name]


def is_store_base(base: object) -> bool:
    return isinstance(base, str) and base.partition(":")[0] in STORE_NAMES and bool(
        base.partition(":")[2])


def open_secret_store(base: str) -> "SecretStore":
    """From a store base (dotenv:PATH, keyring:SERVICE, vault:MOUNT/PATH) to a SecretStore."""
    name, sep, body = base.partition(":")
    if not sep or not body or name not in STORE_NAMES:
        raise ConfigError(f"secret store {base!r}: expected {STORE_HELP}")
    opener = scheme_for(name, f"secret store {base}").open_store
    assert opener is not None
    return opener(body)
