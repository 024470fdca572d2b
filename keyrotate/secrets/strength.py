"""How much guessing a secret value would take, roughly: enough to refuse an obviously weak
external secret (a provider's client secret typed by hand, "acme42") before it is stored
and pushed, and to warn about a doubtful one. Never says anything about the value itself.

The estimate is deliberately simple and conservative: length times the lesser of the
bits per character its character classes allow and its observed (Shannon) entropy per
character, so "aaaaaaaaaaaaaaaaaaaaaaaa" counts as weak however long it is.
"""

from __future__ import annotations

import math
import string
from collections import Counter

REFUSE_BELOW_BITS = 64
WARN_BELOW_BITS = 112
MIN_CHARS = 16
_CLASSES = (string.ascii_lowercase, string.ascii_uppercase, string.digits)


def estimated_bits(value: str) -> float:
    if not value:
        return 0.0
    pool = sum(len(c) for c in _CLASSES if any(ch in c for ch in value))
    if any(not any(ch in c for c in _CLASSES) for ch in value):
        pool += 33   # punctuation and the rest
    counts = Counter(value)
    shannon = -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())
    return max(0.0, len(value) * min(math.log2(pool), shannon))


def weakness(value: str) -> tuple[str, str] | None:
    """("refuse" | "warn", why) for a weak value, None for a strong one; value-free."""
    bits = estimated_bits(value)
    if len(value) < MIN_CHARS or bits < REFUSE_BELOW_BITS:
        return ("refuse", f"is obviously weak ({len(value)} characters, about {bits:.0f} bits of "
                          f"guessing; at least {MIN_CHARS} characters and {REFUSE_BELOW_BITS} bits "
                          "are required)")
    if bits < WARN_BELOW_BITS:
        return ("warn", f"may be weak (about {bits:.0f} bits of guessing; a random secret of "
                        f"{WARN_BELOW_BITS} bits or more is expected)")
    return None
