"""Before a rotation changes anything (and in --dry-run): does everything it will touch
exist and answer? Every problem is reported at once, and nothing is changed (exit 2):

- every encrypted column of the secret exists in the environment's database;
- every object target's ids column and ledger table exist, and its endpoint answers ping
  with the token from the store;
- a pending value already in the store fits the secret's `format`.
"""

from __future__ import annotations

from keyrotate.config.context import Context
from keyrotate.config.manifest import ObjectTarget, SecretSpec
from keyrotate.db.table_shape import resolve_id_column, table_shape
from keyrotate.errors import ConfigError, KeyrotateError
from keyrotate.targets.objects import endpoint_for
from keyrotate.targets.secret_targets import store_probe_problems

LEDGER_COLUMNS = ("rotation_id", "account_id", "status", "error_message", "started_at",
                  "completed_at")


def preflight(ctx: Context, spec: SecretSpec) -> None:
    problems = []
    for t in ctx.manifest.columns_of(spec.name):
        try:
            ctx.target(t.name, t.key_column)
        except KeyrotateError as e:
            problems.append(f"{t.name}: {e}")
    for obj in ctx.manifest.objects_of(spec.name):
        problems += _object_problems(ctx, obj)
    if spec.kind == "master-key":
        problems += store_probe_problems(ctx, spec.name)
    pending = ctx.secrets.read(spec.name, "pending")
    problem = spec.format.problem(pending) if spec.format and pending is not None else None
    if problem:
        problems.append(f"the pending value at {ctx.secrets.ref(spec.name, 'pending')} {problem} "
                        f"(format = {str(spec.format)!r})")
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) before rotating {spec.name} on "
                          f"{ctx.env.name}; nothing was changed:\n  - " + "\n  - ".join(problems))


def _object_problems(ctx: Context, obj: ObjectTarget) -> list[str]:
    problems = []
    try:
        resolve_id_column(ctx.db, obj.ids_table, obj.ids_column)
    except ConfigError as e:
        problems.append(f"{obj.name}: {e}")
    ledger = table_shape(ctx.db, obj.ledger)
    if ledger is None:
        problems.append(f"{obj.name}: the ledger table {obj.ledger} does not exist in "
                        f"{ctx.db.display_url} (apply the migration in "
                        "examples/durable-objects/migrations/)")
    elif missing := [c for c in LEDGER_COLUMNS if ledger.column(c) is None]:
        problems.append(f"{obj.name}: the ledger table {obj.ledger} lacks {', '.join(missing)}")
    try:
        endpoint = endpoint_for(ctx, obj)
        try:
            endpoint.ping()
        finally:
            endpoint.close()
    except KeyrotateError as e:
        problems.append(f"{obj.name}: {e}")
    return problems
