"""The incident report a --compromised rotation writes: what, when, row counts,
fingerprints (never values), the D1 restore point and what restoring to it would undo,
as JSON and Markdown, mode 0600."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from keyrotate.config.context import Context
from keyrotate.db.d1 import TIME_TRAVEL_DAYS
from keyrotate.files import atomic_write_secret
from keyrotate.rotation.state import Rotation
from keyrotate.timeutil import now_iso, parse_utc

TIME_TRAVEL = ("D1 Time Travel keeps the database's history for 30 days: rows as they were "
               "before this rotation, under the compromised key, stay restorable (and readable "
               "to whoever holds that key) until then.")


def _objects_note(ctx: Context, rot: Rotation) -> str | None:
    names = [t.name for t in ctx.manifest.objects_of(rot.secret)]
    if not names:
        return None
    return (f"Durable Object targets ({', '.join(names)}) were rewrapped by the Worker: their "
            "data keys did not change, and whoever held the compromised key could unwrap them. "
            "Revoke and re-issue the credentials they hold (OAuth tokens: revoke, then have "
            "users reconnect) to close that.")


def _restore_points(rot: Rotation, written_at: str) -> dict[str, Any] | None:
    """The bookmark taken before the first row write, and until when any restore point
    still holds rows under the compromised key: the ones up to now (verify has just
    passed), each kept for 30 days."""
    tt = rot.detail.get("time_travel")
    if not tt:
        return None
    written = parse_utc(written_at)
    last = (written + timedelta(days=TIME_TRAVEL_DAYS)).isoformat() if written else None
    return {**tt, "compromised_restore_points_until": last,
            "warning": (f"Restoring the database to this bookmark ({tt['bookmark'] or tt['taken_at']}), "
                        "or to any earlier point, brings back rows under the compromised key. "
                        "Every restore point up to this report still holds some; after "
                        f"{last} no such restore point exists.")}


def write_report(ctx: Context, rot: Rotation) -> tuple[Path, Path]:
    folder = ctx.state_dir / "incidents"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    written_at = now_iso()
    data = {"incident": "secret compromise response", "written_at": written_at, "env": ctx.env.name,
            "secret": rot.secret, "kind": rot.kind, "rotation_id": rot.rotation_id,
            "started_at": rot.started_at, "steps": rot.steps_done,
            "old_fingerprint": rot.old_fp, "new_fingerprint": rot.new_fp,
            "mode": "fresh-dek" if rot.kind == "master-key" else "hard cutover",
            "rows": {k: rot.detail.get(k) for k in ("reencrypt", "catch-up", "verify") if k in rot.detail},
            "workers": [ctx.worker_name(w) for w in ctx.manifest.workers_holding(rot.secret)],
            "time_travel": TIME_TRAVEL,
            "restore_point": _restore_points(rot, written_at),
            "objects": _objects_note(ctx, rot)}
    jpath = folder / f"{rot.rotation_id}.json"
    mpath = folder / f"{rot.rotation_id}.md"
    atomic_write_secret(str(jpath), json.dumps(data, indent=2) + "\n")
    lines = [f"# Incident: {rot.secret} compromised ({ctx.env.name})", "",
             f"- rotation: `{rot.rotation_id}`, started {rot.started_at}, report {data['written_at']}",
             f"- old value fingerprint: `{rot.old_fp}` (retired)",
             f"- new value fingerprint: `{rot.new_fp}`",
             f"- mode: {data['mode']}; Workers: {', '.join(data['workers'])}",
             f"- steps: {', '.join(rot.steps_done)}", "", "## Rows", ""]
    for phase, targets in data["rows"].items():
        for target, counts in (targets or {}).items():
            lines.append(f"- {phase} {target}: " + ", ".join(
                f"{k.replace('_', ' ')} {v}" for k, v in counts.items()
                if isinstance(v, int) and not isinstance(v, bool) and v))
    point = data["restore_point"]
    if point:
        lines += ["", "## Database restore point (D1 Time Travel)", "",
                  f"- bookmark: `{point['bookmark']}`, taken {point['taken_at']} before the first "
                  f"row write, restorable until {point['expires_at']}",
                  f"- restore: `{point['restore_command']}`",
                  f"- **{point['warning']}**"]
    lines += ["", "## Still to do", "", f"- {TIME_TRAVEL}",
              *([f"- {data['objects']}"] if data["objects"] else []),
              "- Review access logs for use of the old key; rotate anything it could reach."]
    atomic_write_secret(str(mpath), "\n".join(lines) + "\n")
    return jpath, mpath
