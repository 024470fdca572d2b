"""`audit verify`: what the chain, this machine's witness and the store's record of the
head say about the trail, in that order; the first thing that does not hold is named.

- the chain: every keyed event authentic under the environment's audit key, in order,
  none missing in between; events from before the audit key (keyrotate 0.1's SHA-256
  chain) only as a prefix, sealed by the first keyed event after them;
- the witness: whole lines only, every event it holds in the table as written, and every
  event this machine wrote still in it (a deleted witness is a finding);
- the store's head: the trail reaches the event the store last saw as its head (a trail
  cut at its end, by anyone, falls short of it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keyrotate.errors import EXIT_FAILURES, ConfigError
from keyrotate.evidence.chain import GENESIS, Break, Link, first_break, unkeyed_prefix
from keyrotate.evidence.trail import AuditTrail
from keyrotate.evidence.witness import witness_problem


def head_problem(links: list[Link], head: str | None, where: str) -> Break | None:
    if head is None or any(link.hash == head for link in links):
        return None
    last = links[-1].seq if links else 0
    return Break(-1, "cut", f"the trail (ending at #{last}) no longer holds the event {where} "
                 f"recorded as its head (MAC {head[:16]}): events were deleted from its end, or "
                 "the trail was rebuilt (or the database restored from an earlier copy)")


def verify_trail(trail: AuditTrail) -> "AuditVerifyResult":
    links = trail.links()
    keyed = [link for link in links if link.keyed]
    key = trail._key(False)
    if key is None and keyed:
        raise ConfigError(f"cannot verify the audit trail of {trail.env}: it is authenticated "
                          f"with audit key {keyed[0].record.get('chain_key')}, and the "
                          "environment's store holds no KEYROTATE_AUDIT_KEY")
    witness = trail.witness().read()
    problem = first_break(links, key) or witness_problem(links, witness, trail.witness_id, key)
    stored_head = trail.store_head.read() if trail.store_head else None
    if problem is None and trail.store_head is not None:
        problem = head_problem(links, stored_head, trail.store_head.ref)
    head_seq = next((link.seq for link in links if link.hash == stored_head), None)
    unkeyed = unkeyed_prefix(links)
    return AuditVerifyResult(
        trail.env, len(links), links[-1].seq if links else None,
        links[-1].hash if links else GENESIS, key.id if key else None, unkeyed,
        links[unkeyed].seq if unkeyed and keyed else None,
        len(witness.entries), str(witness.path), head_seq, problem)


@dataclass(frozen=True)
class AuditVerifyResult:
    env: str
    events: int
    head_seq: int | None
    head: str
    audit_key: str | None       # the id of the key the events are authenticated with
    unkeyed: int                # events at the start written before the audit key
    unkeyed_before: int | None  # the first authenticated event after them (it seals them)
    witnessed: int
    witness_file: str
    store_head: int | None      # where the head the store recorded sits in the trail
    problem: Break | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_FAILURES if self.problem else 0

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.env, "events": self.events, "head": self.head,
                "head_seq": self.head_seq, "audit_key": self.audit_key,
                "authenticated": self.events - self.unkeyed, "unkeyed": self.unkeyed,
                "unkeyed_before": self.unkeyed_before,
                "witnessed_locally": self.witnessed, "witness_file": self.witness_file,
                "store_head": self.store_head, "ok": self.problem is None,
                "problem": None if self.problem is None else {
                    "seq": self.problem.seq if self.problem.seq >= 0 else None,
                    "kind": self.problem.problem, "message": self.problem.message}}

    def text(self) -> str:
        if self.problem is not None:
            return f"audit trail of {self.env}: TAMPERED: {self.problem.message}"
        if not self.events:
            return f"audit trail of {self.env}: no events yet"
        lines = [f"audit trail of {self.env}: {self.events} events, chain intact (head "
                 f"#{self.head_seq} {self.head[:16]})"]
        authenticated = self.events - self.unkeyed
        if authenticated:
            lines.append(f"  {authenticated} authenticated under audit key {self.audit_key}")
        if self.unkeyed:
            lines.append(f"  {self.unkeyed} written before the audit key (SHA-256 chained only)"
                         + (f": unkeyed before #{self.unkeyed_before}, which seals them"
                            if self.unkeyed_before else
                            ": whoever can write the database could rebuild them"))
        lines.append(f"  {self.witnessed} witnessed by this machine's copy ({self.witness_file}), "
                     "all present as written" if self.witnessed else
                     f"  none written from this machine (its witness: {self.witness_file})")
        if self.store_head is not None:
            lines.append(f"  reaches the head the store recorded (#{self.store_head})")
        return "\n".join(lines)
