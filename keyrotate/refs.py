"""Secret references: key material is always named, never given.

    env:NAME | file:PATH | dotenv:PATH#NAME | keyring:SERVICE#NAME
    vault:MOUNT/PATH#FIELD@VERSION

A literal key where a reference is expected is refused, so keys never reach argv, shell
history or CI logs. Error messages name the reference, never the value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from keyrotate.errors import ConfigError, SecretStoreError

SCHEMES = ("env", "file", "dotenv", "keyring", "vault")


@dataclass(frozen=True)
class SecretRef:
    scheme: str
    body: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.body}"


def parse_ref(text: str, what: str = "secret reference") -> SecretRef:
    """Parse a reference. The text is echoed only if it is recognisably a reference."""
    scheme, sep, body = text.partition(":")
    if not sep or scheme not in SCHEMES:
        # never echo `text`: it may be a pasted key
        raise ConfigError(f"{what} is not a secret reference (expected one of "
                          f"{', '.join(s + ':' for s in SCHEMES)}); literal keys are refused "
                          "so they never land in argv or shell history")
    if not body:
        raise ConfigError(f"{what} {scheme}: names nothing")
    if scheme in ("dotenv", "keyring") and "#" not in body:
        raise ConfigError(f"{what} {text} needs #NAME ({scheme}:{'PATH' if scheme == 'dotenv' else 'SERVICE'}#NAME)")
    return SecretRef(scheme, body)


def required(ref: str, value: str | None, missing: str = "is not set") -> str:
    """A reference's value, or a clear error naming the reference (never a value)."""
    if value is None:
        raise SecretStoreError(f"{ref} {missing}")
    if value == "":
        raise SecretStoreError(f"{ref} is empty")
    return value


def _read_env(body: str) -> str:
    return required(f"env:{body}", os.environ.get(body))


def _read_file(body: str) -> str:
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


def _read_dotenv(body: str) -> str:
    from keyrotate.secrets.dotenv import read_dotenv

    path, _, name = body.rpartition("#")
    return required(f"dotenv:{body}:", read_dotenv(path).get(name), f"{name} is not set in {path}")


Reader = Callable[[str], str]
_READERS: dict[str, Reader] = {"env": _read_env, "file": _read_file, "dotenv": _read_dotenv}


def register_reader(scheme: str, reader: Reader) -> None:
    """Plug a secret store into reference resolution (keyring:, vault:)."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme}")
    _READERS[scheme] = reader


def _reader_for(scheme: str) -> Reader:
    if scheme not in _READERS:
        # lazy: stores with heavy dependencies register themselves on import
        import importlib

        importlib.import_module(f"keyrotate.secrets.{scheme}_store")
    return _READERS[scheme]


def resolve(text: str, what: str = "secret reference") -> str:
    """The secret value a reference names. Raises SecretStoreError / ConfigError."""
    ref = parse_ref(text, what)
    try:
        reader = _reader_for(ref.scheme)
    except ModuleNotFoundError:
        raise ConfigError(f"{what} {ref}: {ref.scheme}: references are not available "
                          "in this installation") from None
    return reader(ref.body)
