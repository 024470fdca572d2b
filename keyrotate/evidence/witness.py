"""This machine's witness of the audit trail: every event it appends, copied as a JSON line
into `.keyrotate/audit-ENV.jsonl` (append-only, 0600).

Each keyed event names the witness that holds it (`witness`: a one-way id of this
operator and this file), so `audit verify` can tell an event this machine wrote that its
copy no longer holds (a deleted or cut witness) from another machine's event. A witness
that is missing, holds a line that is not a whole event, or holds an event the table no
longer has as written, is a finding: it is what catches a trail rebuilt by someone who
holds the audit key.

An append copies its events before it is sent too, into `audit-ENV.sent.jsonl` beside
the witness. A command stopped between sending and copying (a kill, or an interrupt while
a request was still on its way to D1 and committed after) leaves an event only there:
it may be in the table or not, and either is what happened, not a finding.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keyrotate.evidence.chain import Break, Link, authentic, digest
from keyrotate.secrets.audit_key import AuditKey


def witness_id(operator: str, path: Path) -> str:
    return hashlib.sha256(f"{operator}\0{os.path.abspath(path)}".encode()).hexdigest()[:16]


@dataclass
class WitnessFile:
    path: Path
    database: str
    env: str
    exists: bool = False
    entries: list[tuple[dict[str, Any], str]] = field(default_factory=list)  # (record, mac)
    unconfirmed: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    malformed: list[int] = field(default_factory=list)                       # line numbers

    @property
    def sent_path(self) -> Path:
        """Where an append's events are copied before it is sent."""
        return self.path.with_name(self.path.name.removesuffix(".jsonl") + ".sent.jsonl")

    def write(self, record: dict[str, Any], mac: str, confirmed: bool = True) -> None:
        """An event that landed (`confirmed`), or one about to be sent."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        line = json.dumps({**record, "hash": mac, "database": self.database}, sort_keys=True)
        path = self.path if confirmed else self.sent_path
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def read(self) -> "WitnessFile":
        """The events this machine appended to this database, and the lines that are not
        whole events (a cut, an edit); and the events it sent (whose copy after they
        landed may be missing: a stop between the two)."""
        self.entries, self.malformed = _events(self.path, self.database, self.env)
        self.exists = self.path.exists()
        # a line cut short there was being copied when the command stopped: not sent yet
        self.unconfirmed, _ = _events(self.sent_path, self.database, self.env)
        return self


def _events(path: Path, database: str, env: str) -> tuple[list[tuple[dict[str, Any], str]],
                                                           list[int]]:
    """(record, mac) of each line of `path` for this database and environment, and the
    numbers of the lines that are not whole events."""
    entries: list[tuple[dict[str, Any], str]] = []
    malformed: list[int] = []
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return entries, malformed
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        malformed.append(len(lines))    # no final newline: the last line was cut
    for n, raw in enumerate(lines, 1):
        try:
            entry = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            entry = None
        if not isinstance(entry, dict) or not isinstance(entry.get("hash"), str) \
                or "database" not in entry:
            if n not in malformed:
                malformed.append(n)
            continue
        if entry.get("database") == database and entry.get("env") == env:
            mac = entry.pop("hash")
            entry.pop("database")
            entries.append((entry, mac))
    return entries, malformed


def witness_problem(links: list[Link], witness: WitnessFile, me: str,
                    key: AuditKey | None) -> Break | None:
    """What this machine's copy says about the trail: None if it agrees."""
    where = str(witness.path)
    if witness.malformed:
        return Break(-1, "witness-malformed", f"line {', '.join(map(str, witness.malformed[:5]))} "
                     f"of the local witness {where} is not a whole event: it was cut or edited")
    stored = {link.hash: link for link in links}
    confirmed = {mac for _, mac in witness.entries}
    # an unconfirmed event that is in the table must be there as written; one that is not
    # was never committed (or is confirmed elsewhere: then that line speaks for it)
    sent = [(r, mac) for r, mac in witness.unconfirmed if mac in stored and mac not in confirmed]
    for record, mac in [*witness.entries, *sent]:
        link = stored.get(mac)
        ok = link is not None and link.record == record and (
            authentic(record, mac, key) if key is not None and "chain_key" in record
            else digest(record) == mac)
        if not ok:
            at = f"{record.get('event')} at {record.get('at')}"
            return Break(-1, "missing", f"the event {at}, which this machine appended (its "
                         f"local witness holds it), is not in the trail as written: the trail "
                         "was cut or rebuilt")
    held = confirmed | {mac for _, mac in sent}
    if not witness.exists:   # the copy is gone: what was sent does not stand in for it
        held = set()
    mine = [link for link in links if link.record.get("witness") == me and link.hash not in held]
    if not mine:
        return None
    seqs = f"#{mine[0].seq}" + (f" to #{mine[-1].seq}" if len(mine) > 1 else "")
    if not witness.exists:
        return Break(mine[0].seq, "witness-missing", f"the local witness {where} is missing, but "
                     f"the trail holds {len(mine)} events this machine wrote to it ({seqs}): "
                     "the copy was deleted")
    return Break(mine[0].seq, "witness-incomplete", f"the local witness {where} lacks {len(mine)} "
                 f"events this machine wrote ({seqs}): the copy was cut, or keyrotate was "
                 "stopped between recording an event and copying it here")
