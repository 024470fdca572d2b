"""One SHA-256 over a page of (key, value) rows: what the pass left in a key range, and
what the census reads back from it. Equal digests mean equal rows, byte for byte: each
key and value is fed with its type and length, so no two different pages encode alike,
and finding two that collide is finding a SHA-256 collision."""

from __future__ import annotations

import hashlib
from typing import Any, Iterable

Row = tuple[Any, Any]


def _feed(update: Any, item: Any) -> None:
    if item.__class__ is str:
        data = item.encode("utf-8", "surrogatepass")   # lenient reads keep bad bytes as surrogates
        update(b"s%d:" % len(data))
        update(data)
    elif item is None:
        update(b"n")
    elif isinstance(item, (bytes, bytearray, memoryview)):
        data = bytes(item)
        update(b"b%d:" % len(data))
        update(data)
    else:  # int, float: repr round-trips exactly
        text = f"{type(item).__name__}:{item!r}".encode()
        update(b"r%d:" % len(text))
        update(text)


class PageDigest:
    """Fed row by row in key order."""

    __slots__ = ("_hash", "rows")

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.rows = 0

    def add(self, key: Any, value: Any) -> None:
        update = self._hash.update
        _feed(update, key)
        _feed(update, value)
        self.rows += 1

    def digest(self) -> bytes:
        return self._hash.digest()


def page_digest(rows: Iterable[Row]) -> bytes:
    d = PageDigest()
    for key, value in rows:
        d.add(key, value)
    return d.digest()
