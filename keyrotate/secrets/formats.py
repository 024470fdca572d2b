"""What a secret's value must look like, when the application insists (`format =` in
keyrotate.toml): `hex:32` (exactly 64 hex characters: the tminus API Worker accepts only
that MASTER_KEY), `base64:N` (N bytes, standard base64), or `regex:PATTERN`. A value
that does not fit is refused before anything changes; it is never echoed.

Patterns run on the `regex` engine, never `re`: it backtracks far less, and every match
has a deadline, so a hostile or careless pattern cannot hang a rotation at `stage`. A
pattern is also probed when the manifest is read (fit_problem): one that runs away on a
probe string, accepts an empty value or does not compile is refused there."""

from __future__ import annotations

import base64
import binascii
import functools
import re
from dataclasses import dataclass
from typing import Iterator

import regex

from keyrotate.errors import ConfigError

_SPEC = re.compile(r"(hex|base64):(\d+)|regex:(.+)", re.S)
MIN_BYTES, MAX_BYTES = 16, 1024   # a format may describe a provider's value; what keyrotate makes is 32+ (crypto.keys)
MATCH_DEADLINE = 1.0      # seconds for one value; a fitting pattern needs microseconds
PROBE_DEADLINE = 0.25     # seconds for one probe string
PROBE_LENGTH = 128        # longer than any hex:32 / base64:32 value
_META = frozenset("\\^$.|?*+()[]{}")
_GENERIC = "aAzZ09 -_+/=."   # what \w, \d, \s, . and the base64/hex classes take


def bytes_problem(nbytes: int) -> str | None:
    """Why a byte count cannot be a key's size (None if it can)."""
    if MIN_BYTES <= nbytes <= MAX_BYTES:
        return None
    return f"must be between {MIN_BYTES} and {MAX_BYTES} bytes (it is {nbytes})"


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
            problem = fit_problem(m.group(3))
            if problem:
                raise ConfigError(f"{where}: format regex {problem}")
            return cls("regex", pattern=m.group(3))
        problem = bytes_problem(int(m.group(2)))
        if problem:
            raise ConfigError(f"{where}: format {problem}")
        return cls(m.group(1), nbytes=int(m.group(2)))

    def __str__(self) -> str:
        return f"regex:{self.pattern}" if self.kind == "regex" else f"{self.kind}:{self.nbytes}"

    @property
    def can_generate(self) -> bool:
        return self.kind in ("hex", "base64")

    def problem(self, value: str) -> str | None:
        """Why `value` does not fit (None if it does). Never includes the value."""
        if self.kind == "regex":
            try:
                fits = _compiled(self.pattern).fullmatch(value, timeout=MATCH_DEADLINE)
            except TimeoutError:
                return (f"took too long to check against {self} (over {MATCH_DEADLINE:.0f} s): "
                        "the pattern backtracks; simplify it")
            return None if fits else f"does not match {self}"
        if self.kind == "hex":
            ok = len(value) == 2 * self.nbytes and all(c in "0123456789abcdefABCDEF" for c in value)
            return None if ok else f"is not {2 * self.nbytes} hex characters ({self})"
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return f"is not standard base64 ({self})"
        return None if len(raw) == self.nbytes else f"decodes to {len(raw)} bytes, not {self.nbytes}"


@functools.lru_cache(maxsize=64)
def _compiled(pattern: str) -> "regex.Pattern[str]":
    return regex.compile(pattern)


@functools.lru_cache(maxsize=64)
def fit_problem(pattern: str) -> str | None:
    """Why a pattern is unfit to check secret values (None if it is fit): it does not
    compile, it accepts an empty value, or it runs past the deadline on a probe string."""
    try:
        compiled = _compiled(pattern)
    except (regex.error, ValueError, OverflowError) as e:
        return f"does not compile ({e})"
    try:
        if compiled.fullmatch("", timeout=PROBE_DEADLINE):
            return "accepts an empty value: it would let any value through"
        for probe in _probes(pattern):
            compiled.fullmatch(probe, timeout=PROBE_DEADLINE)
    except TimeoutError:
        return (f"took too long on a probe string of {PROBE_LENGTH} characters (over "
                f"{PROBE_DEADLINE} s): it backtracks without end on some values; simplify it "
                "(no repeated group whose branches can match the same text)")
    return None


def _probes(pattern: str) -> Iterator[str]:
    """Strings that make a runaway pattern run away: a long run of one character the
    pattern mentions (or a class would take), after a prefix that gets past the pattern's
    start (one of its literal runs, or one or four of a character), ending in a
    character nothing expects. A heuristic: the deadline in `problem` is the guarantee."""
    reps = sorted({c for c in pattern if c not in _META and c.isprintable()} | set(_GENERIC))[:64]
    prefixes = {""} | set(_literal_runs(pattern)[:16]) | {c * k for c in reps for k in (1, 4)}
    for prefix in sorted(prefixes):
        for c in reps:
            yield prefix + c * PROBE_LENGTH + "\x00"


def _literal_runs(pattern: str) -> list[str]:
    """The runs of plain characters outside classes and escapes: `sk_live_` of
    `sk_live_[0-9a-zA-Z]{24}`."""
    runs, current, i, in_class = [], "", 0, False
    while i < len(pattern):
        ch = pattern[i]
        plain = not in_class and ch not in _META
        if not plain and current:
            runs.append(current)
            current = ""
        if ch == "\\":
            i += 2
            continue
        if plain:
            current += ch
        elif ch == "[":
            in_class = True
        elif ch == "]":
            in_class = False
        i += 1
    return runs + ([current] if current else [])
