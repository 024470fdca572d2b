"""The audit trail's chain: each event carries a MAC under the environment's audit key,
over the MAC of the one before and its own canonical record (README, "Audit trail"):

    mac = HMAC-SHA256(audit_key, prev_mac || canonical(record))

so an event forged, altered, removed, moved or rebuilt by someone without the audit key is
found by walking the chain. A keyed record names the key (`chain_key`, a one-way id).

Trails written by keyrotate 0.1 chained events with a plain SHA-256 of each record, which
anyone who can write the table can recompute. Those events still verify as a prefix: the
first keyed event follows the last of them (its `prev` is their head), so its MAC seals
them all. A plain event after a keyed one was written without the key: it is a finding.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from keyrotate.secrets.audit_key import AuditKey

GENESIS = "0" * 64
KEYED = "chain_key"


def canonical(record: dict[str, Any]) -> bytes:
    """One byte string per record, whoever writes it: sorted keys, no spaces, UTF-8."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest(record: dict[str, Any]) -> str:
    """keyrotate 0.1's unkeyed link (still checked for the events it wrote)."""
    return hashlib.sha256(canonical(record)).hexdigest()


def authentic(record: dict[str, Any], mac: str, key: AuditKey) -> bool:
    """The record is as it was written under `key`, after the event whose MAC is its `prev`."""
    prev = record.get("prev")
    if not isinstance(prev, str) or record.get(KEYED) != key.id:
        return False
    try:
        expected = key.mac(prev, canonical(record))
    except (UnicodeEncodeError, ValueError):
        return False
    return hmac.compare_digest(expected, mac)


# the plain columns of keyrotate_audit, beside the record they repeat (queries select by
# them: `records(event)`), and the record's name for each
COLUMNS = (("at", "at"), ("event", "event"), ("rotation_id", "rotation_id"), ("secret", "secret"))


@dataclass(frozen=True)
class Link:
    seq: int
    record: dict[str, Any]
    prev_hash: str
    hash: str
    columns: dict[str, Any] | None = None   # the row's plain columns, as stored
    stored: str | None = None               # the record's text, as stored

    @property
    def keyed(self) -> bool:
        return KEYED in self.record

    def label(self) -> str:
        r = self.record
        return (f"event #{self.seq} ({r.get('event')} at {r.get('at')}"
                + (f", {r['secret']}" if r.get("secret") else "") + ")")


@dataclass(frozen=True)
class Break:
    seq: int
    problem: str      # altered | foreign-key | unkeyed | broken-before | reordered | missing | ...
    message: str


def first_break(links: list[Link], key: AuditKey | None) -> Break | None:
    """The first event, in the order they were stored, where the chain does not hold."""
    by_hash = {link.hash: i for i, link in enumerate(links)}
    expected, keyed_seen = GENESIS, False
    for i, link in enumerate(links):
        if link.keyed:
            keyed_seen = True
            problem = _keyed_problem(link, key) or _columns_problem(link)
            if problem:
                return problem
        elif keyed_seen:
            return Break(link.seq, "unkeyed", f"{link.label()} carries no MAC, though the trail "
                         "was authenticated before it: it was written without the audit key "
                         "(forged)")
        elif digest(link.record) != link.hash or link.record.get("prev") != link.prev_hash:
            return Break(link.seq, "altered", f"{link.label()} was altered: its content no "
                         "longer matches its hash")
        if link.prev_hash != expected:
            j = by_hash.get(link.prev_hash)
            if j is not None and j != i - 1:
                return Break(link.seq, "reordered", f"{link.label()} is out of order: it follows "
                             f"{links[j].label()} in the chain")
            return Break(link.seq, "broken-before", f"the event before {link.label()} was removed "
                         "or rewritten: the MAC it follows is not in the trail")
        expected = link.hash
    return None


def _columns_problem(link: Link) -> Break | None:
    """A row whose plain columns, or whose record's text, say other than its authenticated
    record: a query by column (which events a key's lifecycle reads), or SQL's JSON
    functions on the text (json_extract keeps a duplicated key's first value where the
    MAC was checked over the last), would be misled while the MAC holds."""
    if link.stored is not None and link.stored != json.dumps(link.record, sort_keys=True):
        return Break(link.seq, "altered", f"{link.label()} was altered: its stored text is not "
                     "the record it authenticates as keyrotate writes it (a key given twice, "
                     "or other text around the same fields)")
    if link.columns is None:
        return None
    edited = [column for column, field in COLUMNS
              if link.columns.get(column) != link.record.get(field)]
    if not edited:
        return None
    return Break(link.seq, "columns", f"{link.label()} has columns ({', '.join(edited)}) that "
                 "differ from its authenticated record: they were edited after it was written")


def _keyed_problem(link: Link, key: AuditKey | None) -> Break | None:
    named = link.record.get(KEYED)
    if key is None or named != key.id:
        return Break(link.seq, "foreign-key", f"{link.label()} names audit key {named}, not the "
                     f"one in the environment's store ({key.id if key else 'none'}): forged, or the "
                     "store's audit key was replaced")
    if link.record.get("prev") != link.prev_hash or not authentic(link.record, link.hash, key):
        return Break(link.seq, "altered", f"{link.label()} is not authentic: its MAC does not "
                     "verify under the audit key (forged or altered)")
    return None


def unkeyed_prefix(links: list[Link]) -> int:
    """How many events at the start of the trail predate the audit key."""
    return next((i for i, link in enumerate(links) if link.keyed), len(links))
