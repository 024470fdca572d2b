"""`migrations list|apply`: the application's forward-only D1 migrations, recorded in
d1_migrations exactly as wrangler records them. Outside staging, a migration staging has
not applied is refused unless forced (the runbook: staging before production)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keyrotate.config.context import Context
from keyrotate.db.migration_ledger import (
    Migration,
    applied,
    discover,
    migration_statements,
    pending,
)
from keyrotate.errors import ConfigError
from keyrotate.evidence.event import Event
from keyrotate.evidence.record import audit_trail
from keyrotate.progress import Say

STAGING = "staging"


def migrations_folder(ctx: Context) -> Path:
    return ctx.manifest.root / ctx.manifest.migrations_dir


@dataclass(frozen=True)
class MigrationsListResult:
    env: str
    files: list[str]
    applied: list[str]
    exit_code: int = 0

    def as_dict(self) -> dict[str, Any]:
        done = set(self.applied)
        return {"env": self.env,
                "migrations": [{"name": n, "applied": n in done} for n in self.files],
                "pending": [n for n in self.files if n not in done],
                "unknown_applied": [n for n in self.applied if n not in set(self.files)]}

    def text(self) -> str:
        d = self.as_dict()
        body = "\n".join(f"  {'applied' if m['applied'] else 'PENDING':<8} {m['name']}"
                         for m in d["migrations"]) or "  no migrations"
        return f"migrations on {self.env}:\n{body}"


def migrations_list(ctx: Context) -> MigrationsListResult:
    files = discover(migrations_folder(ctx))
    return MigrationsListResult(ctx.env.name, [m.name for m in files], applied(ctx.db))


@dataclass(frozen=True)
class MigrationsApplyResult:
    env: str
    dry_run: bool
    names: list[str] = field(default_factory=list)   # applied, or would be (dry run)
    exit_code: int = 0

    def as_dict(self) -> dict[str, Any]:
        key = "would_apply" if self.dry_run else "applied"
        return {"env": self.env, "dry_run": self.dry_run, key: self.names}

    def text(self) -> str:
        verb = "would apply" if self.dry_run else "applied"
        return f"{verb}: {', '.join(self.names) if self.names else 'nothing'}"


def migrations_apply(ctx: Context, dry_run: bool, force: bool, say: Say) -> MigrationsApplyResult:
    """Apply pending migrations in order, each with its d1_migrations row in one batch."""
    todo = pending(ctx.db, discover(migrations_folder(ctx)))
    if ctx.env.name != STAGING and STAGING in ctx.manifest.environments and todo:
        staging = ctx.for_env(STAGING)
        try:
            on_staging = set(applied(staging.db))
        finally:
            staging.close()
        untested = [m.name for m in todo if m.name not in on_staging]
        if untested and not force:
            raise ConfigError(f"{', '.join(untested)} not applied to staging yet: apply and "
                              f"check it there first (or --force)")
    if not dry_run:
        for m in todo:
            say(f"applying {m.name} to {ctx.env.name}")
            apply_recorded(ctx, m)
    return MigrationsApplyResult(ctx.env.name, dry_run, [m.name for m in todo])


def apply_recorded(ctx: Context, m: Migration) -> None:
    """The migration, its d1_migrations row and its audit event, in one transaction: the
    schema never changes without the trail saying so (and which file, by its SHA-256)."""
    audit_trail(ctx).append(Event(
        "schema.migration", ctx.env.name, f"applied migration {m.name} to {ctx.env.name}",
        detail={"migration": m.name, "sha256": hashlib.sha256(m.path.read_bytes()).hexdigest()}),
        migration_statements(m))
