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
from keyrotate.dataplane.objects.driver import Keys, ObjectsOptions
from keyrotate.dataplane.outcome import ROWS, Outcome
from keyrotate.dataplane.reencrypt import ReencryptOptions, probe, reencrypt
from keyrotate.dataplane.verify import verify
from keyrotate.db.base import Target
from keyrotate.errors import ConfigError, KeyrotateError
from keyrotate.secrets.base import same_value
from keyrotate.secrets.refs import resolve
from keyrotate.targets.objects import objects_census, objects_rewrap


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
        # no census here: the census a rotation's verify step takes next is the proof
        result = reencrypt(self.ctx.db, self.resolved(), self.codec(mode, writing=True),
                           ReencryptOptions(fmt=self.spec.format, mode=mode, census=False))
        outcome = result.outcome()
        self._rows_seen()[self.spec.name] = outcome.scanned
        return outcome

    def census(self) -> Outcome:
        """A census told how many rows this command's pass just saw needs not count them
        first (a hint for its progress and workers: the witness or the counts prove)."""
        return verify(self.ctx.db, self.resolved(), self.codec(),
                      rows_hint=self._rows_seen().get(self.spec.name)).outcome()

    def _rows_seen(self) -> dict[str, int]:
        return self.ctx.shared("rows-seen", dict)

    def key_ids(self) -> list[str]:
        codec = self.codec()
        return [codec.new_kid, *codec.old_kids]


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
        kids = self.key_ids()
        trusted = Keys(kids[0], kids[1] if self.keys.old else None)
        return objects_rewrap(self.ctx, self.spec, self.options, rotation_id=self.rotation_id,
                              only=only, keys=trusted).outcome()

    def census(self) -> Outcome:
        return objects_census(self.ctx, self.spec, self.options,
                              new_kid=self.key_ids()[0]).outcome()

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


def _store_keys(ctx: Context, secret: str) -> tuple[list[str], KeyRefs]:
    """The store's values of `secret` (current, then pending and previous where set), as
    slots and as keys to open rows with."""
    store = ctx.secrets
    slots, seen = ["current"], [store.read(secret)]
    for slot in ("pending", "previous"):
        value = store.read(secret, slot)
        # a slot holding a value an earlier one holds (a keyring promote stopped midway
        # copies it before it removes it) adds no key
        if value is not None and not any(v is not None and same_value(v, value) for v in seen):
            slots.append(slot)
            seen.append(value)
    refs = [store.ref(secret, s) for s in slots]
    return slots, KeyRefs(refs[0], refs[1] if len(refs) > 1 else None, tuple(refs[2:]))


def store_probe_problems(ctx: Context, secret: str) -> list[str]:
    """Before a rotation pushes anything: in each column target, the first non-NULL rows
    must include one that opens under a value the store holds. Otherwise the Workers may
    hold a key the store lost (a store edited by hand, a wrong copy), and the rotation
    would push keys that open none of the rows, then stop at its reencrypt probe."""
    if ctx.secrets.read(secret) is None:
        return []   # nothing to open rows with: staging the rotation says so
    _, keys = _store_keys(ctx, secret)
    out = []
    for target in SecretTargets(ctx, secret, keys).columns():
        try:
            resolved = target.resolved()
        except KeyrotateError:
            continue   # named by the preflight's own check of the target
        try:
            probe(ctx.db, resolved, target.codec())
        except ConfigError:
            out.append(f"{target.name}: none of its first non-NULL rows opens under a value of "
                       f"{secret} in {ctx.secrets.base}. The Workers may hold a key the store "
                       "lost: put it back in the store before rotating (pushing now would leave "
                       "every row unreadable)")
    return out


def _census_by_slot(ctx: Context, secret: str,
                    errors: list[str] | None = None) -> list[tuple[Outcome, dict[str, str]]]:
    """A census of every target with the store's keys (current, pending, previous): each
    outcome with the slot each kid belongs to. `errors`: a target that cannot be counted
    is named there and left out (else the error stops the caller)."""
    slots, keys = _store_keys(ctx, secret)
    out = []
    for target in SecretTargets(ctx, secret, keys):
        try:
            out.append((target.census(), dict(zip(target.key_ids(), slots))))
        except KeyrotateError as e:
            if errors is None:
                raise
            errors.append(f"{target.name} not counted: {e}")
    return out


def rows_per_slot(ctx: Context, secret: str, errors: list[str]) -> dict[str, dict[str, int]]:
    """Rows (and objects) of every target by the store slot whose key opens them: current,
    pending (a rotation in progress) and previous; 'other' opens under none of them. A
    target that cannot be counted, or whose rows paging did not all reach (objects that
    did not answer), is left out of the counts and named in `errors`, once."""
    rows: dict[str, dict[str, int]] = {}
    for c, slot_of in _census_by_slot(ctx, secret, errors):
        if c.unreached:
            errors.append(f"{c.target}: {c.unreached} {c.unit} could not be counted "
                          f"({'paging did not reach them' if c.unit == ROWS else 'no answer'})")
            continue
        counts = {"current": 0, "pending": 0, "previous": 0}
        other = c.failed
        for kid, n in c.by_kid.items():
            if kid in slot_of:
                counts[slot_of[kid]] += n
            else:
                other += n
        empty = {"null": c.null} if c.unit == ROWS else {"missing": c.missing}
        rows[c.target] = {**counts, **empty, "other": other}
    return rows


def slots_in_use(ctx: Context, secret: str) -> set[str]:
    """The store slots (current, pending, previous) whose key some row or object of
    `secret` opens under now, by a census: the values every serving version must read.
    Rows that open under no key the store holds cannot be read by anyone; they are the
    census's failures, not a key in use."""
    return {slot_of[kid] for c, slot_of in _census_by_slot(ctx, secret)
            for kid, n in c.by_kid.items() if n and kid in slot_of}
