"""Every [[encrypted]] target of a secret, reached the same way whether it holds rows (an
encrypted column, rewritten by keyrotate) or Durable Objects (rewrapped by the Worker):
`rewrap` moves it to the new key, `census` says which key each row or object opens
under, and both answer in one vocabulary (dataplane.outcome.Outcome).

Keys are named by reference: the new key, the old one and any more old keys (a
compromise that took over an open rotation). Objects never see a key: the Worker uses the
ones it holds, and keyrotate trusts only the key ids it computes from its own store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

from keyrotate.config.context import Context
from keyrotate.config.manifest import ColumnTarget, ObjectTarget
from keyrotate.crypto.codecs import Codec
from keyrotate.crypto.keys import MasterKey
from keyrotate.dataplane.codec_refs import codec_from_refs
from keyrotate.dataplane.objects.driver import ObjectsOptions
from keyrotate.dataplane.outcome import Outcome
from keyrotate.dataplane.reencrypt import ReencryptOptions, reencrypt
from keyrotate.dataplane.proof import PassProof, recheck
from keyrotate.dataplane.verify import verify
from keyrotate.db.base import Target
from keyrotate.rotation.objects import objects_census, objects_rewrap
from keyrotate.secrets.refs import resolve


@dataclass(frozen=True)
class KeyRefs:
    """The keys of one rotation, as references into the store (never values)."""

    new: str
    old: str | None
    also_old: tuple[str, ...] = ()


class RotationTarget(Protocol):
    name: str

    def rewrap(self, mode: str, only: Sequence[str] | None = None) -> Outcome:
        """Move everything to the new key; `only`: a sweep of these object ids."""
        ...

    def census(self) -> Outcome: ...

    def key_ids(self) -> list[str]:
        """The kids of the new key, the old key and any more old keys, in that order."""
        ...


@dataclass
class RowsTarget:
    """An encrypted column: keyrotate reads, rewrites and proves every row itself."""

    ctx: Context
    spec: ColumnTarget
    keys: KeyRefs

    @property
    def name(self) -> str:
        return self.spec.name

    def codec(self, mode: str = "rewrap", writing: bool = False) -> Codec:
        """`writing`: rows will be written under the new key, which must be fit for it."""
        return codec_from_refs(self.spec.format, self.keys.new, self.keys.old, mode,
                               also_old=self.keys.also_old, check_new=writing)

    def resolved(self) -> Target:
        return self.ctx.target(self.spec.name, self.spec.key_column)

    def rewrap(self, mode: str, only: Sequence[str] | None = None) -> Outcome:
        """No census here: the census a rotation's verify step takes next is the proof.
        What the pass proves is kept for it, so that census reads the pages back and
        opens only what changed since (dataplane.proof)."""
        result = reencrypt(self.ctx.db, self.resolved(), self.codec(mode, writing=True),
                           ReencryptOptions(fmt=self.spec.format, mode=mode, census=False))
        if result.proof is not None:
            _passes(self.ctx)[self.name] = result.proof
        return result.outcome()

    def census(self) -> Outcome:
        """A census now; after this command's rewrap, with what that pass proves."""
        proof = _passes(self.ctx).get(self.name)
        if proof is not None:
            return recheck(self.ctx.db, self.resolved(), self.codec(), proof).outcome()
        return verify(self.ctx.db, self.resolved(), self.codec()).outcome()

    def key_ids(self) -> list[str]:
        codec = self.codec()
        return [codec.new_kid, *codec.old_kids]


def _passes(ctx: Context) -> dict[str, PassProof]:
    """Per column, what its last rewrap in this command proves."""
    return ctx.shared("row-passes", dict)


@dataclass
class ObjectsTarget:
    """Envelopes inside Durable Objects: the Worker rewraps them with the keys it holds."""

    ctx: Context
    spec: ObjectTarget
    keys: KeyRefs
    options: ObjectsOptions = ObjectsOptions()
    rotation_id: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def rewrap(self, mode: str, only: Sequence[str] | None = None) -> Outcome:
        return objects_rewrap(self.ctx, self.spec, self.options, rotation_id=self.rotation_id,
                              only=only).outcome()

    def census(self) -> Outcome:
        return objects_census(self.ctx, self.spec, self.options).outcome()

    def key_ids(self) -> list[str]:
        refs = [self.keys.new, *([self.keys.old] if self.keys.old else []), *self.keys.also_old]
        return [MasterKey.from_secret(resolve(ref)).kid for ref in refs]


@dataclass
class SecretTargets:
    """The targets of one secret in one environment, columns first (their order in the
    manifest), then objects."""

    ctx: Context
    secret: str
    keys: KeyRefs
    objects: ObjectsOptions = field(default_factory=ObjectsOptions)
    rotation_id: str | None = None

    def columns(self) -> list[RowsTarget]:
        return [RowsTarget(self.ctx, t, self.keys) for t in self.ctx.manifest.columns_of(self.secret)]

    def object_targets(self) -> list[ObjectsTarget]:
        return [ObjectsTarget(self.ctx, t, self.keys, self.objects, self.rotation_id)
                for t in self.ctx.manifest.objects_of(self.secret)]

    def __iter__(self) -> Iterator[RotationTarget]:
        yield from self.columns()
        yield from self.object_targets()
