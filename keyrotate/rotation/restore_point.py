"""D1 Time Travel: the database's bookmark, taken before a rotation's first row write and
kept in the rotation's state, the audit trail and the incident report, with the date it
expires and the command that restores to it. Restoring to it (or earlier) brings back
rows under the old key: after a compromise, that is exactly what must not happen."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from keyrotate.config.context import Context
from keyrotate.db.d1 import TIME_TRAVEL_DAYS
from keyrotate.errors import StoreError, StoreUnavailable
from keyrotate.evidence.event import Event
from keyrotate.rotation.state import Recorder, Rotation


def record_restore_point(ctx: Context, recorder: Recorder, rot: Rotation) -> None:
    """Once per rotation, on databases that keep history; saved with its audit event."""
    if "time_travel" in rot.detail:
        return
    try:
        point = ctx.db.restore_point()
    except StoreUnavailable:
        raise
    except StoreError as e:
        # no bookmark: a restore by timestamp reaches the same point (D1 derives one)
        taken = datetime.now(timezone.utc).replace(microsecond=0)
        rot.detail["time_travel"] = {
            "bookmark": None, "taken_at": taken.isoformat(),
            "expires_at": (taken + timedelta(days=TIME_TRAVEL_DAYS)).isoformat(),
            "restore_command": f"wrangler d1 time-travel restore DATABASE --timestamp={taken.isoformat()}",
            "error": str(e)}
    else:
        if point is None:
            return
        rot.detail["time_travel"] = point.as_dict()
    tt = rot.detail["time_travel"]
    recorder.saved(rot, Event(
        "time-travel.bookmark", rot.environment,
        f"restore point before {rot.secret} rotation {rot.rotation_id} wrote any row: "
        f"{tt['bookmark'] or tt['taken_at']}, restorable until {tt['expires_at']}",
        rot.secret, rot.rotation_id, None, rot.old_fp, rot.new_fp, dict(tt)))
