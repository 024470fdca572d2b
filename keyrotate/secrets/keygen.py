"""New secret values, made like `openssl rand -base64 32`, and written straight into a store."""

from __future__ import annotations

import base64
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from keyrotate.crypto.keys import new_key_problem, new_key_size_problem
from keyrotate.errors import ConfigError
from keyrotate.secrets.refs import parse_ref
from keyrotate.secrets.schemes import scheme_for

KEY_FORMATS = ("base64", "hex", "fernet")
log = logging.getLogger("keyrotate.keygen")


def generate(fmt: str = "base64", nbytes: int = 32) -> str:
    problem = new_key_size_problem(nbytes)
    if problem:
        raise ConfigError(f"--bytes: {problem}")
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


@dataclass(frozen=True)
class KeygenResult:
    format: str
    bytes: int
    value: str | None = None        # only when printed (no --to)
    written_to: str | None = None
    exit_code: int = 0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": self.format, "bytes": self.bytes,
                               "written_to": self.written_to}
        if self.value is not None:
            out["value"] = self.value
        return out

    def text(self) -> str:
        return self.value or ""   # with --to, the command says where it went (on stderr)


def keygen(fmt: str, nbytes: int, to: str | None) -> KeygenResult:
    """A new random secret: returned to print, or written to `to` and never returned."""
    value = generate(fmt, nbytes)
    unfit = new_key_problem(value)
    if unfit:   # e.g. 48 bytes as hex: fine for a JWT secret, refused as a MASTER_KEY
        log.warning("this value would be refused as a new master key: it %s", unfit)
    if to is None:
        return KeygenResult(fmt, nbytes, value=value)
    return KeygenResult(fmt, nbytes, written_to=write_new_secret(to, value))


def write_new_secret(ref_text: str, value: str) -> str:
    """Store a brand-new value at a reference; never overwrites an existing key."""
    ref = parse_ref(ref_text, "--to")
    write_new = scheme_for(ref.scheme, f"--to {ref}").write_new
    assert write_new is not None
    write_new(ref.body, value)
    return str(ref)
