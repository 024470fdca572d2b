"""Every key an environment knows: each value its store keeps (every slot, every Vault
version) and each key its audit trail has a lifecycle for, grouped by key id.

Values are read to be identified and compared, and never leave this process: what the
rest of keyrotate sees is a key's id (its kid, or its keyed fingerprint), where it lives
and its lifecycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from keyrotate.config.context import Context
from keyrotate.errors import ConfigError
from keyrotate.evidence.lifecycle import SLOT_STATES, KeyIdentity, KeyLife, identify, lifecycles
from keyrotate.evidence.record import audit_key, audit_trail
from keyrotate.secrets.audit_key import AUDIT_KEY, AuditKey
from keyrotate.secrets.base import StoredCopy


@dataclass
class KnownKey:
    key: KeyIdentity
    kind: str
    copies: list[StoredCopy] = field(default_factory=list)   # where the store keeps it
    life: KeyLife | None = None
    value: str | None = field(default=None, repr=False)     # to compare and census only

    @property
    def slots(self) -> set[str]:
        return {c.slot for c in self.copies}

    @property
    def in_use(self) -> str | None:
        """'current' or 'pending' when the store uses it so (never destroyed)."""
        return next((s for s in ("current", "pending") if s in self.slots), None)

    @property
    def state(self) -> str:
        if self.life is not None and self.life.state:
            return self.life.state
        for slot in ("current", "pending"):
            if slot in self.slots:
                return SLOT_STATES[slot]
        return "deactivated" if self.copies else "unknown"

    @property
    def source(self) -> str:
        """Where the state comes from: the trail's key.state events, or the store slot."""
        return "trail" if self.life is not None and self.life.state else "store"


def _identify(name: str, kind: str, value: str, key: AuditKey) -> KeyIdentity:
    found = identify(name, kind, value, key)
    if name == AUDIT_KEY:   # named by the id its chain events carry
        return KeyIdentity(name, found.fingerprint, AuditKey.from_value(value, name).id)
    return found


def inventory(ctx: Context) -> list[KnownKey]:
    """Every key of the manifest's secrets (and the audit key), store and trail together."""
    key = audit_key(ctx)
    lives = lifecycles(audit_trail(ctx))
    out: list[KnownKey] = []
    specs = [(s.name, s.kind) for s in ctx.manifest.secrets.values()] + [(AUDIT_KEY, "internal")]
    for name, kind in specs:
        mine: dict[str, KnownKey] = {}
        for copy in ctx.secrets.copies(name):
            if copy.value is None:
                continue
            ident = _identify(name, kind, copy.value, key)
            known = mine.setdefault(ident.id, KnownKey(ident, kind, value=copy.value))
            known.copies.append(copy)
        for (secret, kid), life in lives.items():
            if secret == name:
                mine.setdefault(kid, KnownKey(life.key, kind)).life = life
        out += mine.values()
    return out


def find(ctx: Context, kid: str) -> KnownKey:
    """The one key `kid` (a kid, a fingerprint, or its 12 hex) names; refuses an unknown or
    an ambiguous one."""
    found = [k for k in inventory(ctx) if k.key.names(kid)]
    if not found:
        raise ConfigError(f"no key {kid} in {ctx.env.name}: neither its store nor its audit trail "
                          f"knows it (keyrotate keys --env {ctx.env.name} lists them)")
    if len(found) > 1:
        raise ConfigError(f"{kid} names {len(found)} keys in {ctx.env.name} "
                          f"({', '.join(k.key.secret for k in found)}): give the whole fingerprint")
    return found[0]
