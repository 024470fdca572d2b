"""The audit trail's hash chain: each event carries the SHA-256 of the one before, so an
event altered, removed or moved is found by walking the chain.

Nothing here is keyed: someone who can write the table could rebuild the whole chain
after an edit. That is caught elsewhere: every operator's local copy (the JSON-lines
file) holds the hashes it wrote, and `audit verify` checks them against the table.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64


def canonical(record: dict[str, Any]) -> bytes:
    """One byte string per record, whoever writes it: sorted keys, no spaces, UTF-8."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest(record: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()


@dataclass(frozen=True)
class Link:
    seq: int
    record: dict[str, Any]
    prev_hash: str
    hash: str

    def label(self) -> str:
        r = self.record
        return (f"event #{self.seq} ({r.get('event')} at {r.get('at')}"
                + (f", {r['secret']}" if r.get("secret") else "") + ")")


@dataclass(frozen=True)
class Break:
    seq: int
    problem: str      # altered | broken-before | reordered
    message: str


def first_break(links: list[Link]) -> Break | None:
    """The first event, in the order they were stored, where the chain does not hold."""
    by_hash = {link.hash: i for i, link in enumerate(links)}
    expected = GENESIS
    for i, link in enumerate(links):
        if digest(link.record) != link.hash or link.record.get("prev") != link.prev_hash:
            return Break(link.seq, "altered", f"{link.label()} was altered: its content no "
                         "longer matches its hash")
        if link.prev_hash != expected:
            j = by_hash.get(link.prev_hash)
            if j is not None and j != i - 1:
                return Break(link.seq, "reordered", f"{link.label()} is out of order: it follows "
                             f"{links[j].label()} in the chain")
            return Break(link.seq, "broken-before", f"the event before {link.label()} was removed "
                         "or rewritten: the hash it follows is not in the trail")
        expected = link.hash
    return None
