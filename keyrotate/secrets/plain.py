"""`env:NAME` (read-only) and `file:PATH` (the whole file, one trailing newline stripped)."""

from __future__ import annotations

import os

from keyrotate.errors import ConfigError, SecretStoreError
from keyrotate.files import atomic_write_secret
from keyrotate.secrets.refs import required
from keyrotate.secrets.schemes import Scheme


def read_env(body: str) -> str:
    return required(f"env:{body}", os.environ.get(body))


def write_env(body: str, value: str) -> None:
    raise ConfigError("env: references are read-only; write to file:, dotenv:, keyring: or vault:")


def read_file(body: str) -> str:
    try:
        with open(body, "r", encoding="utf-8", newline="") as fh:
            value = fh.read()
    except FileNotFoundError:
        raise SecretStoreError(f"file:{body} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SecretStoreError(f"file:{body} cannot be read ({type(e).__name__})") from None
    if value.endswith("\r\n"):
        value = value[:-2]
    elif value.endswith("\n"):
        value = value[:-1]
    if value == "":
        raise SecretStoreError(f"file:{body} is empty")
    return value


def write_new_file(body: str, value: str) -> None:
    if os.path.exists(body):
        raise SecretStoreError(f"file:{body} exists; refusing to overwrite a key")
    atomic_write_secret(body, value + "\n")


SCHEMES = {"env": Scheme("env", read_env, write_env),
           "file": Scheme("file", read_file, write_new_file)}
