"""New secret values, made like `openssl rand -base64 32`, and written straight into a store."""

from __future__ import annotations

import base64
import os
import secrets

from keyrotate.errors import ConfigError, SecretStoreError
from keyrotate.refs import parse_ref
from keyrotate.secrets.files import atomic_write_secret

KEY_FORMATS = ("base64", "hex", "fernet")


def generate(fmt: str = "base64", nbytes: int = 32) -> str:
    if nbytes < 16 or nbytes > 1024:
        raise ConfigError("--bytes must be between 16 and 1024")
    raw = secrets.token_bytes(nbytes)
    if fmt == "base64":
        return base64.b64encode(raw).decode("ascii")
    if fmt == "hex":
        return raw.hex()
    if fmt == "fernet":
        if nbytes != 32:
            raise ConfigError("a Fernet key is exactly 32 bytes")
        return base64.urlsafe_b64encode(raw).decode("ascii")
    raise ConfigError(f"unknown key format {fmt!r}; expected one of {', '.join(KEY_FORMATS)}")


def write_new_secret(ref_text: str, value: str) -> str:
    """Store a brand-new value at a reference; never overwrites an existing key."""
    ref = parse_ref(ref_text, "--to")
    if ref.scheme == "file":
        if os.path.exists(ref.body):
            raise SecretStoreError(f"file:{ref.body} exists; refusing to overwrite a key")
        atomic_write_secret(ref.body, value + "\n")
        return str(ref)
    if ref.scheme == "dotenv":
        from keyrotate.secrets.dotenv import add_new_entry

        path, _, name = ref.body.rpartition("#")
        add_new_entry(path, name, value)
        return str(ref)
    if ref.scheme == "env":
        raise ConfigError("env: references are read-only; write to file:, dotenv:, keyring: or vault:")
    try:
        from keyrotate.secrets.stores import store_for_new_secret  # keyring:, vault:
    except ModuleNotFoundError:
        raise ConfigError(f"--to {ref.scheme}: is not available in this installation") from None
    return store_for_new_secret(ref, value)
