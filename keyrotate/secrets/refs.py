"""Secret references: key material is always named, never given.

    env:NAME | file:PATH | dotenv:PATH#NAME | keyring:SERVICE#NAME
    vault:MOUNT/PATH#FIELD@VERSION

A literal key where a reference is expected is refused, so keys never reach argv, shell
history or CI logs. Error messages name the reference, never the value.
"""

from __future__ import annotations

from dataclasses import dataclass

from keyrotate.errors import ConfigError, SecretStoreError
from keyrotate.secrets.names import check_name
from keyrotate.secrets.schemes import NAMES as SCHEMES
from keyrotate.secrets.schemes import scheme_for


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
    if scheme in ("dotenv", "keyring"):
        if "#" not in body:
            raise ConfigError(f"{what} {text} needs #NAME ({scheme}:"
                              f"{'PATH' if scheme == 'dotenv' else 'SERVICE'}#NAME)")
        check_name(body.rpartition("#")[2], f"{what} {scheme}:{body.rpartition('#')[0]}#...")
    if scheme == "env":
        check_name(body, f"{what} env:...")
    return SecretRef(scheme, body)


def required(ref: str, value: str | None, missing: str = "is not set") -> str:
    """A reference's value, or a clear error naming the reference (never a value)."""
    if value is None:
        raise SecretStoreError(f"{ref} {missing}")
    if value == "":
        raise SecretStoreError(f"{ref} is empty")
    return value


def resolve(text: str, what: str = "secret reference") -> str:
    """The secret value a reference names. Raises SecretStoreError / ConfigError."""
    ref = parse_ref(text, what)
    return scheme_for(ref.scheme, f"{what} {ref}").read(ref.body)
