"""What a secret's value must look like, when the application insists (`format =` in
keyrotate.toml): `hex:32` (exactly 64 hex characters: the tminus API Worker accepts only
that MASTER_KEY), `base64:N` (N bytes, standard base64), or `regex:PATTERN`. A value
that does not fit is refused before anything changes; it is never echoed."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from keyrotate.errors import ConfigError

_SPEC = re.compile(r"(hex|base64):(\d+)|regex:(.+)", re.S)


@dataclass(frozen=True)
class ValueFormat:
    kind: str            # hex | base64 | regex
    nbytes: int = 0
    pattern: str = ""

    @classmethod
    def parse(cls, text: str, where: str) -> "ValueFormat":
        m = _SPEC.fullmatch(text)
        if not m:
            raise ConfigError(f"{where}: format must be like hex:32, base64:32 or regex:PATTERN")
        if m.group(3) is not None:
            try:
                re.compile(m.group(3))
            except re.error as e:
                raise ConfigError(f"{where}: format regex does not compile ({e})") from None
            return cls("regex", pattern=m.group(3))
        return cls(m.group(1), nbytes=int(m.group(2)))

    def __str__(self) -> str:
        return f"regex:{self.pattern}" if self.kind == "regex" else f"{self.kind}:{self.nbytes}"

    @property
    def can_generate(self) -> bool:
        return self.kind in ("hex", "base64")

    def problem(self, value: str) -> str | None:
        """Why `value` does not fit (None if it does). Never includes the value."""
        if self.kind == "regex":
            return None if re.fullmatch(self.pattern, value) else f"does not match {self}"
        if self.kind == "hex":
            ok = len(value) == 2 * self.nbytes and all(c in "0123456789abcdefABCDEF" for c in value)
            return None if ok else f"is not {2 * self.nbytes} hex characters ({self})"
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return f"is not standard base64 ({self})"
        return None if len(raw) == self.nbytes else f"decodes to {len(raw)} bytes, not {self.nbytes}"
