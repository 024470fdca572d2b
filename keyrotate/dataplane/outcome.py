"""What a pass or a census over one target came to, rows and Durable Objects alike: the one
vocabulary a rotation reads (its steps, its state, status and the incident report).

The data-plane commands keep their own result types, whose JSON the README documents
(`rows_scanned`, `objects_rewrapped`, ...); each of them can say what it came to as an
Outcome, so nothing above the data plane needs to know whether a target holds rows or
objects.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

ROWS, OBJECTS = "rows", "objects"
LISTED = 20


@dataclass
class Outcome:
    target: str
    unit: str                      # rows | objects
    run_id: str | None = None      # a pass: the journal's run, or the ledger's rotation id
    status: str | None = None      # a pass: completed, rewritten, incomplete, ...
    scanned: int = 0               # a pass: rows or objects it looked at
    rewritten: int = 0             # a pass: written under the new key
    already_current: int = 0       # a pass: already under the new key
    total: int = 0                 # a census: rows or objects it saw
    current: int = 0               # a census: open under the new key
    old: int = 0                   # open under an old key
    null: int = 0                  # rows holding NULL
    missing: int = 0               # objects holding no envelope
    failed: int = 0                # open under no key
    conflicted: int = 0            # a pass: changed under it, tried again
    stale: int = 0                 # objects answering with a kid that is not the new key's
    unreached: int = 0             # rows paging missed, objects that never answered
    requests: int = 0              # objects: requests to the Worker
    by_kid: dict[str, int] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    behind: list[str] = field(default_factory=list)   # objects to send again (old, stale, unanswered)

    @property
    def still_old(self) -> int:
        """Rows or objects that may still need an old key, or that could not be seen."""
        return self.old + self.stale + self.unreached

    @property
    def incomplete(self) -> bool:
        return self.status == "incomplete"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["failures"] = self.failures[:LISTED]
        out.pop("behind")
        return out
