"""The environment's audit key (secrets/audit_key.py says what it keys): read from the
environment's store once per command, and made on first need, written to the store the
way `keygen --to` writes any new secret (never to the database).

A new key is refused when the trail already holds events authenticated with another one:
the operator lacks the environment's key (a .env store on a second machine, say), and a
fresh key would leave a trail that verifies for no one. Copy the key instead.
"""

from __future__ import annotations

import logging
from typing import Callable

from keyrotate.config.context import Context
from keyrotate.errors import ConfigError, SecretStoreError
from keyrotate.secrets.audit_key import AUDIT_KEY, AuditKey
from keyrotate.secrets.base import same_value
from keyrotate.secrets.keygen import generate

log = logging.getLogger("keyrotate.audit")


def load_audit_key(ctx: Context, create: bool,
                   trail_key: Callable[[], str | None] = lambda: None) -> AuditKey | None:
    """The store's audit key; with `create`, a new one if the store has none and the trail
    (`trail_key`: the audit key id its last event names) is not keyed already."""
    store = ctx.secrets
    ref = store.ref(AUDIT_KEY)
    value = store.read(AUDIT_KEY)
    if value is not None:
        return AuditKey.from_value(value, ref)
    if not create:
        return None
    named = trail_key()
    if named is not None:
        raise ConfigError(f"the audit trail of {ctx.env.name} is authenticated with audit key "
                          f"{named}, but {ref} holds no audit key: copy KEYROTATE_AUDIT_KEY from "
                          "the store of the operator who made it (a new key would leave the "
                          "trail unverifiable); nothing was changed")
    value = generate("hex", 32)
    try:
        store.write_new(AUDIT_KEY, value)
    except SecretStoreError:
        again = store.read(AUDIT_KEY)     # another command made it meanwhile
        if again is None:
            raise
        return AuditKey.from_value(again, ref)
    kept = store.read(AUDIT_KEY)
    if kept is None or not same_value(kept, value):
        raise SecretStoreError(f"{ref}: the store did not keep the new audit key")
    log.info("made the audit key of %s in %s (it authenticates the audit trail and keys "
             "fingerprints; keep it with the environment's other secrets)", ctx.env.name, ref)
    return AuditKey.from_value(value, ref, created=True)
