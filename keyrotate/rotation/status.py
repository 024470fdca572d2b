"""`keyrotate status`: per secret, its age from the store, its last rotation, any rotation
in progress, and rows per key (a census of every encrypted column and object target).
For cron and CI schedules: `--notify` sends secret.overdue for each secret past `--due`.

A check status could not make is not a pass: a secret whose value or age the store cannot
give, or whose rows (or objects) cannot be counted, is named in `errors` and makes the
exit code 1, like an overdue secret (not 3: a schedule may read 3 as "paused, the next run
retries", and a missing store never fixes itself). `--notify` sends secret.unchecked for
each such secret."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from keyrotate.config.context import Context
from keyrotate.errors import EXIT_FAILURES, KeyrotateError
from keyrotate.evidence.event import Event
from keyrotate.evidence.record import audit_key, existing_audit_key
from keyrotate.rotation.key_inventory import inventory
from keyrotate.rotation.state import Recorder
from keyrotate.secrets.base import SecretStore, fingerprint
from keyrotate.targets.secret_targets import rows_per_slot
from keyrotate.timeutil import now as clock_now


@dataclass
class SecretStatus:
    secret: str
    kind: str
    set_at: str | None
    age_days: float | None
    due: bool
    rotation: dict[str, Any] | None
    rows: dict[str, dict[str, int]] | None = None
    age_seconds: float | None = None
    last_rotated_at: str | None = None
    pending: bool = False          # a new value waits in the store: rows move to it
    keys: list[dict[str, Any]] = field(default_factory=list)   # each key id and its state
    errors: list[str] = field(default_factory=list)   # checks that could not be made

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        if self.rows is None:
            out.pop("rows")
        return out


@dataclass(frozen=True)
class StatusResult:
    env: str
    secrets: list[SecretStatus] = field(default_factory=list)
    at: str = ""
    due_seconds: int | None = None
    notified: list[dict[str, Any]] = field(default_factory=list)

    @property
    def due(self) -> list[str]:
        return [s.secret for s in self.secrets if s.due]

    @property
    def unchecked(self) -> list[str]:
        """Secrets with a check that could not be made (age, value or rows)."""
        return [s.secret for s in self.secrets if s.errors]

    @property
    def exit_code(self) -> int:
        return EXIT_FAILURES if self.due or self.unchecked else 0

    def as_dict(self) -> dict[str, Any]:
        out = {"env": self.env, "at": self.at, "secrets": [s.as_dict() for s in self.secrets],
               "due": self.due, "unchecked": self.unchecked,
               "errors": [{"secret": s.secret, "message": m} for s in self.secrets for m in s.errors]}
        return {**out, "notified": self.notified} if self.notified else out

    def text(self) -> str:
        lines = [f"secrets on {self.env}:"]
        for s in self.secrets:
            age = f"{s.age_days} days" if s.age_days is not None else "age unknown"
            flag = "  DUE" if s.due else "  NOT CHECKED" if s.errors else ""
            rot = f"  rotation {s.rotation['state']}" if s.rotation else ""
            last = f"  last rotated {s.last_rotated_at}" if s.last_rotated_at else ""
            lines.append(f"  {s.secret:<24} {s.kind:<11} {age}{flag}{rot}{last}")
            if s.keys:
                lines.append("      keys: " + ", ".join(f"{k['key']} {k['state']}" for k in s.keys))
            for target, c in (s.rows or {}).items():
                extra = ", ".join(f"{c[k]} {k}" for k in ("null", "missing") if k in c)
                lines.append(f"      {target}: {c['current']} current, {c['pending']} pending, "
                             f"{c['previous']} previous, {c['other']} other, {extra}")
        if self.unchecked:
            lines.append("could not check (not a pass: exit 1):")
            lines += [f"  {s.secret}: {m}" for s in self.secrets for m in s.errors]
        for n in self.notified:
            lines.append(f"notified {n['sink']} of {n['event']} ({n['secret']}): "
                         + ("delivered" if n["ok"] else f"FAILED: {n['reason']}"))
        return "\n".join(lines)


def _store_is_empty(store: SecretStore) -> bool:
    try:
        return not store.names()
    except KeyrotateError:
        return False   # the read of the value itself said what is wrong


def _check_secret(ctx: Context, entry: SecretStatus, set_at: datetime | None,
                  value: str | None) -> None:
    """What status could not read about one secret, in words that name references only."""
    store, name = ctx.secrets, entry.secret
    if value is None:
        what = "age and rows" if ctx.manifest.targets_of(name) else "age"
        hint = (f" ({store.base} holds no secrets: a missing file, or the wrong store?)"
                if _store_is_empty(store) else "")
        entry.errors.append(f"no value at {store.ref(name)}, so its {what} cannot be checked{hint}")
    elif set_at is None:
        entry.errors.append(f"{store.ref(name)}: the store has no record of when it was set, so "
                            f"its age cannot be checked (a rotation by keyrotate starts its clock)")


def key_states(ctx: Context) -> dict[str, list[dict[str, Any]]]:
    """Per secret, each key id it has and its lifecycle state (keys --env ENV says more).
    Nothing before the environment has an audit key: key ids are keyed by it, and status, a
    check a schedule runs with read-only credentials, never makes one."""
    out: dict[str, list[dict[str, Any]]] = {}
    if existing_audit_key(ctx) is None:
        return out
    for k in inventory(ctx):
        since = k.life.last.at if k.life and k.life.last else None
        out.setdefault(k.key.secret, []).append({"key": k.key.id, "state": k.state, "since": since})
    return out


def status(ctx: Context, due_seconds: int | None, notify: bool = False) -> StatusResult:
    """`due_seconds` (--due) is the cryptoperiod of every secret; without it, each secret's
    own `max_age`."""
    store = ctx.secrets
    recorder = Recorder(ctx)
    states = key_states(ctx)
    in_progress = {r["secret"]: r for r in recorder.open_rotations()}
    last = recorder.last_finished()
    now = clock_now().astimezone(timezone.utc).replace(microsecond=0)
    out = []
    for name, spec in ctx.manifest.secrets.items():
        entry = SecretStatus(name, spec.kind, None, None, False, in_progress.get(name),
                             last_rotated_at=last.get(name), keys=states.get(name, []))
        out.append(entry)
        try:
            value = store.read(name)
            set_at = store.set_at(name)
            entry.pending = store.read(name, "pending") is not None
        except KeyrotateError as e:
            entry.errors.append(f"cannot read {store.ref(name)}: {e}")
            continue
        if entry.pending and name not in in_progress:
            entry.errors.append(f"{store.ref(name, 'pending')} holds a value, but no rotation of "
                                f"{name} is open: the store and the rotations disagree (rows "
                                "may be sealed under that value: keep it)")
        _check_secret(ctx, entry, set_at, value)
        if set_at is not None:
            entry.set_at = set_at.isoformat()
            entry.age_seconds = (now - set_at).total_seconds()
            entry.age_days = round(entry.age_seconds / 86400, 1)
            limit = due_seconds or spec.max_age
            entry.due = bool(limit and entry.age_seconds > limit)
        if ctx.manifest.targets_of(name) and value is not None:
            try:
                entry.rows = rows_per_slot(ctx, name, entry.errors)
            except KeyrotateError as e:
                entry.errors.append(f"rows not counted: {e}")
            for target, counts in (entry.rows or {}).items():
                if counts.get("other"):   # what no key of the store opens: nobody reads it
                    entry.errors.append(f"{counts['other']} rows or objects of {target} open "
                                        f"under no value of {name} in {store.base} (keyrotate "
                                        "verify lists them)")
    notified = _notify(ctx, recorder, out) if notify else []
    return StatusResult(ctx.env.name, out, now.isoformat(), due_seconds, notified)


def _notify(ctx: Context, recorder: Recorder, secrets: list[SecretStatus]) -> list[dict[str, Any]]:
    """secret.overdue for each secret past --due, secret.unchecked for each that could not
    be checked: to the audit trail and the sinks."""
    sent = []
    try:
        for s in secrets:
            for event in _events_for(ctx, s):
                deliveries = recorder.evidence.record(event)
                sent += [{"secret": s.secret, **d.as_dict()} for d in deliveries]
    finally:
        recorder.evidence.close()
    return sent


def _events_for(ctx: Context, s: SecretStatus) -> list[Event]:
    env, out = ctx.env.name, []
    if s.due:
        fp = fingerprint(v, audit_key(ctx)) if (v := ctx.secrets.read(s.secret)) else None
        out.append(Event("secret.overdue", env, f"{s.secret} on {env} is {s.age_days} days old, "
                         f"past the rotation due age; rotate it: keyrotate rotate {s.secret} "
                         f"--env {env}", s.secret, old_fingerprint=fp,
                         detail={"age_days": s.age_days, "set_at": s.set_at}))
    if s.errors:
        out.append(Event("secret.unchecked", env, f"status could not check {s.secret} on {env}, "
                         f"which is not a pass: {'; '.join(s.errors)}", s.secret,
                         detail={"errors": s.errors}))
    return out
