"""The encrypted columns of a secret, each with its codec: the one loop that reencrypt,
verify and status share."""

from __future__ import annotations

from typing import Iterator

from keyrotate.controlplane.context import Context
from keyrotate.controlplane.manifest import EncryptedTarget
from keyrotate.crypto.codecs import Codec
from keyrotate.dataplane.keys import codec_from_refs
from keyrotate.db.base import Target, resolve_target


def each_target(ctx: Context, secret: str, new_ref: str, old_ref: str | None,
                mode: str = "rewrap") -> Iterator[tuple[EncryptedTarget, Target, Codec]]:
    """(manifest target, resolved target, codec) for every [[encrypted]] of `secret`."""
    for t in ctx.manifest.targets_of(secret):
        codec = codec_from_refs(t.format, new_ref, old_ref, mode)
        yield t, resolve_target(ctx.db, t.name, t.key_column), codec
