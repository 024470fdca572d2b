"""What this run already saw open under the new key, so its closing census need not open
it a second time.

The census (verify.py) reads every row and judges each by its stored value alone:
`codec.census` is a function of the value as read (its SQL type and its bytes), of
nothing else. So a row holding exactly a value this run has already judged "opens under
the new key, payload included" would be judged so again. This module remembers those
values, as keyed digests, in the order the pass met them (one per row):

- a value the pass read and found current (codec.rotate opened it under the new key,
  payload included), and
- a value the pass wrote: codec.rotate verifies every value it makes opens under the new
  key as a Worker reads it before it hands it out (crypto/codecs.py), and only TEXT is
  ever written or opened (a BLOB or a number fails every codec: never vouched for).

NULL and failed rows are vouched for by nobody (zeros). The census, reading the table in
the same key order, compares each row's digest with the digest at the same position,
else with any digest in a window around it (rows inserted or deleted meanwhile shift
positions); a match is counted under the new key unopened. Everything else is opened as
`verify` opens it: a value the application wrote after the pass (same length or not),
rows of an earlier process of a resumed run, rows past the window.

Why a match proves the row: the digest is BLAKE2b keyed with 32 random bytes drawn for
this run, held in this process (and its workers) only, never written anywhere; without
the key nobody can make another value whose digest the census trusts (odds 2^-128 per
try). Digests are never saved with the journal, so no forged journal can vouch for a row.
The census still reads every row and keeps its rowid witness exactly as before.

Memory: 16 bytes a row, spilled to a temporary file (mode 0600, deleted on close) past
16 MB, about a million rows.
"""

from __future__ import annotations

import functools
import secrets
import tempfile
import threading
from hashlib import blake2b
from typing import Any, Sequence

from keyrotate.db.base import Value

DIGEST = 16
NOBODY = bytes(DIGEST)          # a row nobody vouches for
SLACK = 512                     # rows of the window either side of a census page
IN_MEMORY = 16 << 20            # digests kept in memory before they spill to a file
_CHUNK = 1 << 20                # characters hashed at a time (a heavy value is not copied whole)
_PERSON = b"keyrotate vouch1"   # BLAKE2b's personalisation: these digests and no others

# (key, window, where the page's first row sits in the window): what a page takes along
Vouch = tuple[bytes, bytes, int]


@functools.lru_cache(maxsize=4)
def _keyed(key: bytes) -> Any:
    """BLAKE2b with the key taken in once (copying it costs less than keying anew)."""
    return blake2b(key=key, digest_size=DIGEST, person=_PERSON)


def digest(key: bytes, value: Value) -> bytes:
    """The keyed digest of a stored value; NOBODY for anything but TEXT (no codec opens
    anything else). TEXT read leniently (not UTF-8) hashes its own bytes back."""
    if value.__class__ is not str:
        return NOBODY
    h = _keyed(key).copy()
    if len(value) <= _CHUNK:
        h.update(value.encode("utf-8", "surrogateescape"))
    else:
        for i in range(0, len(value), _CHUNK):
            h.update(value[i:i + _CHUNK].encode("utf-8", "surrogateescape"))
    return h.digest()


def digests(key: bytes, values: Sequence[Value]) -> list[bytes]:
    """`digest` of each value (the common short TEXT without a call per value)."""
    keyed, out = _keyed(key), []
    for v in values:
        if v.__class__ is str and len(v) <= _CHUNK:
            h = keyed.copy()
            h.update(v.encode("utf-8", "surrogateescape"))
            out.append(h.digest())
        else:
            out.append(digest(key, v))
    return out


class Window:
    """The digests a census page is checked against, by the reader: row by row at the
    same position (the whole page in one comparison, when nothing moved), else against
    all of them."""

    __slots__ = ("key", "data", "at")

    def __init__(self, vouch: Vouch):
        self.key, self.data, self.at = vouch

    def vouched(self, values: Sequence[Value]) -> list[bool]:
        """For each value of the page, in order: whether the pass vouched for it."""
        mine = digests(self.key, values)
        start, data = self.at * DIGEST, self.data
        if start >= 0 and b"".join(mine) == data[start:start + len(mine) * DIGEST]:
            return [d != NOBODY for d in mine]
        known = {data[k:k + DIGEST] for k in range(0, len(data), DIGEST)}
        known.discard(NOBODY)
        return [d in known for d in mine]


class Vouched:
    """The digests of one pass, in the pass's order, and the census's windows onto them.
    `offset`: census rows expected before the pass's first row (a resumed run's earlier
    rows, which this process never saw)."""

    def __init__(self, offset: int = 0, in_memory: int = IN_MEMORY):
        self.key = secrets.token_bytes(32)
        self.offset = offset
        self.rows = 0
        self._file = tempfile.SpooledTemporaryFile(max_size=in_memory)
        self._lock = threading.Lock()

    def add(self, page: bytes) -> None:
        """The next page's digests (DIGEST bytes a row)."""
        with self._lock:
            self._file.seek(0, 2)
            self._file.write(page)
            self.rows += len(page) // DIGEST

    def window(self, ordinal: int, n: int) -> Vouch:
        """For census rows [ordinal, ordinal + n): the digests of the pass's rows at the
        same positions, SLACK more either side."""
        mine = ordinal - self.offset
        lo, hi = max(0, mine - SLACK), min(self.rows, mine + n + SLACK)
        if hi <= lo:
            return self.key, b"", 0
        with self._lock:
            self._file.seek(lo * DIGEST)
            data = self._file.read((hi - lo) * DIGEST)
        return self.key, data, mine - lo

    def close(self) -> None:
        """The digests dropped, and the key with them (none lingers in the hasher cache)."""
        self._file.close()
        _keyed.cache_clear()


def page_digests(key: bytes, values: Sequence[Value | None]) -> bytes:
    """A page's digests in row order; None (nobody vouches) as zeros."""
    return b"".join(digests(key, values))
