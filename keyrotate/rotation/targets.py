"""The encrypted columns of a secret, each with its codec: the one loop that reencrypt,
verify and status share."""

from __future__ import annotations

from typing import Iterator, Sequence

from keyrotate.controlplane.context import Context
from keyrotate.controlplane.manifest import ColumnTarget
from keyrotate.crypto.codecs import Codec
from keyrotate.dataplane.keys import codec_from_refs
from keyrotate.db.base import Target


def each_target(ctx: Context, secret: str, new_ref: str, old_ref: str | None,
                mode: str = "rewrap", also_old: Sequence[str] = (), writing: bool = False
                ) -> Iterator[tuple[ColumnTarget, Target, Codec]]:
    """(manifest target, resolved target, codec) for every encrypted column of `secret`;
    `writing`: rows will be written under new_ref, which must be fit to be a new key."""
    for t in ctx.manifest.columns_of(secret):
        codec = codec_from_refs(t.format, new_ref, old_ref, mode, also_old=also_old,
                                check_new=writing)
        yield t, ctx.target(t.name, t.key_column), codec
