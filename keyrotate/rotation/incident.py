"""The incident report a --compromised rotation writes: what, when, row counts,
fingerprints (never values), as JSON and Markdown, mode 0600."""

from __future__ import annotations

import json
from pathlib import Path

from keyrotate.controlplane.context import Context
from keyrotate.rotation.state import Rotation
from keyrotate.secrets.files import atomic_write_secret
from keyrotate.timeutil import now_iso

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


def write_report(ctx: Context, rot: Rotation) -> tuple[Path, Path]:
    folder = ctx.state_dir / "incidents"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = {"incident": "secret compromise response", "written_at": now_iso(), "env": ctx.env.name,
            "secret": rot.secret, "kind": rot.kind, "rotation_id": rot.rotation_id,
            "started_at": rot.started_at, "steps": rot.steps_done,
            "old_fingerprint": rot.old_fp, "new_fingerprint": rot.new_fp,
            "mode": "fresh-dek" if rot.kind == "master-key" else "hard cutover",
            "rows": {k: rot.detail.get(k) for k in ("reencrypt", "catch-up", "verify") if k in rot.detail},
            "workers": [ctx.worker_name(w) for w in ctx.manifest.workers_holding(rot.secret)],
            "time_travel": TIME_TRAVEL,
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
            lines.append(f"- {phase} {target}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    lines += ["", "## Still to do", "", f"- {TIME_TRAVEL}",
              *([f"- {data['objects']}"] if data["objects"] else []),
              "- Review access logs for use of the old key; rotate anything it could reach."]
    atomic_write_secret(str(mpath), "\n".join(lines) + "\n")
    return jpath, mpath
