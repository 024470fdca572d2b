"""The key lifecycle a rotation moves through, recorded as it goes (evidence/lifecycle.py):

    stage              the new key: pre-activation
    push / promote     the new key: active; the old one: deactivated
    a compromise       the current key (and any older one it inherits): compromised
    --abort            the new key: destroyed, when the store no longer holds it
    superseded         the same, for a pending value a compromise discarded

The keys are identified once, when they are known for sure (the new key when staged, the
old one when the rotation starts), and kept in the rotation's detail; each state is
recorded once per rotation, so a re-run repeats nothing. The events go into the trail in
the same transaction as the rotation's own event and state (the Recorder commits them).
"""

from __future__ import annotations

from typing import Any, Protocol

from keyrotate.config.context import Context
from keyrotate.evidence.event import Event
from keyrotate.evidence.lifecycle import STATES, KeyIdentity, identify, key_state_event
from keyrotate.evidence.record import audit_key
from keyrotate.secrets.base import same_secret

PUSHES = ("push", "push-overlap", "switch", "promote")   # the new key seals from here


class Rotation(Protocol):
    """What of a rotation (rotation/state.py) its key lifecycle needs."""

    rotation_id: str
    secret: str
    kind: str
    compromised: bool
    detail: dict[str, Any]


class KeyLog:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def _identity(self, rot: Rotation, slot: str) -> KeyIdentity | None:
        value = self.ctx.secrets.read(rot.secret, slot)   # type: ignore[arg-type]
        return identify(rot.secret, rot.kind, value, audit_key(self.ctx)) if value else None

    def _known(self, rot: Rotation, role: str) -> KeyIdentity | None:
        d = rot.detail.get("keys", {}).get(role)
        return KeyIdentity(rot.secret, d["fingerprint"], d.get("kid")) if d else None

    def _remember(self, rot: Rotation, role: str, key: KeyIdentity | None) -> None:
        if key is not None:
            rot.detail.setdefault("keys", {})[role] = {"fingerprint": key.fingerprint, "kid": key.kid}

    def _set(self, rot: Rotation, key: KeyIdentity | None, state: str, why: str,
             **detail: Any) -> list[Event]:
        done: dict[str, str] = rot.detail.setdefault("key_states", {})
        if key is None:
            return []
        if key.id in done and STATES.index(state) <= STATES.index(done[key.id]):
            return []   # recorded already, or past it (a compromised key is never just retired)
        done[key.id] = state
        return [key_state_event(self.ctx.env.name, key, state, rot.rotation_id, why, **detail)]

    def started(self, rot: Rotation) -> list[Event]:
        self._remember(rot, "old", self._identity(rot, "current"))
        if not rot.compromised:
            return []
        why = f"compromise response {rot.rotation_id}"
        out = self._set(rot, self._known(rot, "old"), "compromised", why)
        for slot in rot.detail.get("also_old", []):
            out += self._set(rot, self._identity(rot, slot), "compromised", why)
        return out

    def step(self, rot: Rotation, step: str) -> list[Event]:
        if step == "stage":
            self._remember(rot, "new", self._identity(rot, "pending"))
            return self._set(rot, self._known(rot, "new"), "pre-activation", "stored as pending")
        if step in PUSHES:
            out = self._activate(rot, "pushed to the Workers" if step != "promote" else "promoted")
            return out + (self._replaced(rot) if step == "promote" else [])
        return []

    def _replaced(self, rot: Rotation) -> list[Event]:
        """The previous value the promote overwrote (a .env file or the keyring keep one),
        destroyed with it when no other copy is left in the store. Safe: the finish's census
        proved no row is under it before the promote."""
        d = rot.detail.get("replaced_previous")
        if not d:
            return []
        key = KeyIdentity(rot.secret, d["fingerprint"], d.get("kid"))
        if self._stored(key):
            return []
        return self._set(rot, key, "destroyed", "the store's previous value, replaced at the "
                         "promote", destroyed=[self.ctx.secrets.ref(rot.secret, "previous")])

    def _activate(self, rot: Rotation, why: str) -> list[Event]:
        new, old = self._known(rot, "new"), self._known(rot, "old")
        if new is None:   # a rotation staged before keyrotate kept lifecycles
            new = self._identity(rot, "pending") or self._identity(rot, "current")
        return (self._set(rot, new, "active", why)
                + self._set(rot, old, "deactivated", f"replaced by {new.id if new else 'the new key'}"))

    def ended(self, rot: Rotation, state: str) -> list[Event]:
        if state == "finished":
            return self._activate(rot, "rotation finished")
        if state in ("aborted", "superseded"):
            new, out = self._known(rot, "new"), []
            used = rot.detail.get("key_states", {}).get(new.id) == "active" if new else False
            if state == "aborted" and used:
                out += self._restore_old(rot)
            if new is not None and not self._stored(new):
                why = (f"discarded by the {state} after use: rows and objects moved back, copies "
                       "may remain in Worker versions (keys residue)" if used else
                       f"pending value discarded ({state} before use)")
                out += self._set(rot, new, "destroyed", why,
                                 destroyed=[self.ctx.secrets.ref(rot.secret, "pending")])
            return out
        return []

    def _restore_old(self, rot: Rotation) -> list[Event]:
        """An abort after the switch puts the old key back as the one the Workers seal
        under: active again (the only step back the lifecycle takes)."""
        old = self._known(rot, "old")
        done: dict[str, str] = rot.detail.setdefault("key_states", {})
        if old is None or done.get(old.id) != "deactivated":
            return []
        done[old.id] = "active"
        return [key_state_event(self.ctx.env.name, old, "active", rot.rotation_id,
                                "the abort put it back as the current value")]

    def _stored(self, key: KeyIdentity) -> bool:
        """The store still keeps this key somewhere (any slot, any version)."""
        return any(c.value is not None and same_secret(c.value, key.fingerprint,
                                                       audit_key(self.ctx))
                   for c in self.ctx.secrets.copies(key.secret))
