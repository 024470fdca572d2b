"""Key lifecycle states (NIST SP 800-57 Part 1 §7), per key id per environment, each
transition with its time, operator and rotation, as `key.state` events in the audit trail:

    pre-activation  made and stored as pending; protects nothing yet
    active          the value the Workers seal (or sign) with
    deactivated     kept to open (verify) what it protected; seals nothing new
    compromised     known or suspected to be disclosed
    destroyed       every copy keyrotate controls is gone (what remains elsewhere is
                    listed in the event)

A key is named by its kid (master keys: the id envelopes carry) or, for other
secrets, by its fingerprint (keyed by the audit key). The trail is the record: the state
of a key is its last `key.state` event. Keys the trail has never seen (set before keyrotate
kept lifecycles) are placed by the store slot that holds them (status `store`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from keyrotate.crypto.keys import MasterKey
from keyrotate.evidence.event import Event
from keyrotate.evidence.trail import AuditTrail
from keyrotate.secrets.audit_key import AuditKey

STATES = ("pre-activation", "active", "deactivated", "compromised", "destroyed")
SLOT_STATES = {"pending": "pre-activation", "current": "active", "previous": "deactivated"}
EVENT = "key.state"


@dataclass(frozen=True)
class KeyIdentity:
    secret: str
    fingerprint: str
    kid: str | None = None     # master keys only

    @property
    def id(self) -> str:
        return self.kid or self.fingerprint

    def names(self, text: str) -> bool:
        """`text` (a kid or a fingerprint) names this key."""
        return text in (self.kid, self.fingerprint) or (
            not text.startswith("fp:") and "fp:" + text == self.fingerprint)


def identify(secret: str, kind: str, value: str, audit_key: AuditKey) -> KeyIdentity:
    kid = MasterKey.from_secret(value).kid if kind == "master-key" else None
    return KeyIdentity(secret, audit_key.fingerprint(value), kid)


def key_state_event(env: str, key: KeyIdentity, state: str, rotation_id: str | None = None,
                    why: str = "", **detail: Any) -> Event:
    if state not in STATES:
        raise ValueError(f"unknown key state {state!r}")
    summary = f"{key.secret} key {key.id} is {state}" + (f": {why}" if why else "")
    return Event(EVENT, env, summary, key.secret, rotation_id, detail={
        "key": key.id, "kid": key.kid, "fingerprint": key.fingerprint, "state": state,
        **({"why": why} if why else {}), **detail})


@dataclass(frozen=True)
class Transition:
    state: str
    at: str
    by: str
    rotation_id: str | None
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "at": self.at, "by": self.by, "rotation_id": self.rotation_id,
                **({"why": self.detail["why"]} if self.detail.get("why") else {})}


@dataclass
class KeyLife:
    key: KeyIdentity
    transitions: list[Transition] = field(default_factory=list)

    @property
    def last(self) -> Transition | None:
        return self.transitions[-1] if self.transitions else None

    @property
    def state(self) -> str | None:
        return self.last.state if self.last else None

    def first(self, state: str) -> Transition | None:
        return next((t for t in self.transitions if t.state == state), None)


def lifecycles(trail: AuditTrail) -> dict[tuple[str, str], KeyLife]:
    """(secret, key id) -> its transitions, in the order the trail holds them."""
    out: dict[tuple[str, str], KeyLife] = {}
    for r in trail.records(EVENT):
        d = r.get("detail")
        if not isinstance(d, dict) or d.get("state") not in STATES or not r.get("secret"):
            continue
        key = KeyIdentity(str(r["secret"]), str(d.get("fingerprint")), d.get("kid"))
        life = out.setdefault((key.secret, key.id), KeyLife(key))
        life.transitions.append(Transition(str(d["state"]), str(r.get("at")),
                                           str(r.get("operator")), r.get("rotation_id"),
                                           {k: v for k, v in d.items() if k not in
                                            ("key", "kid", "fingerprint", "state")}))
    return out
