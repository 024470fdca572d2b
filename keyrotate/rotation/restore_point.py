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


def record_before_row_writes(ctx: Context, recorder: Recorder, rot: Rotation, forward: bool) -> None:
    """Before a rotation's first row write, one record, committed first (write-ahead):
    `forward`, that rows may from now on be sealed under the new value (an abort or a
    compromise takeover must then keep it, whatever steps were recorded: a step's record
    can be lost in a kill); and, on databases that keep history, the restore point."""
    marked = forward and not rot.detail.get("rows_written")
    if marked:
        rot.detail["rows_written"] = True
    pointed = "time_travel" not in rot.detail and _take_restore_point(ctx, rot)
    if pointed:
        tt = rot.detail["time_travel"]
        recorder.saved(rot, Event(
            "time-travel.bookmark", rot.environment,
            f"restore point before {rot.secret} rotation {rot.rotation_id} wrote any row: "
            f"{tt['bookmark'] or tt['taken_at']}, restorable until {tt['expires_at']}",
            rot.secret, rot.rotation_id, None, rot.old_fp, rot.new_fp, dict(tt)))
    elif marked:
        recorder.saved(rot, Event(
            "rotation.rows", rot.environment, f"{rot.secret} rotation {rot.rotation_id}: rows "
            "may be written under the new value from now on", rot.secret, rot.rotation_id,
            None, rot.old_fp, rot.new_fp))


def _take_restore_point(ctx: Context, rot: Rotation) -> bool:
    """The database's restore point into rot.detail (False: it keeps no history)."""
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
        return True
    if point is None:
        return False
    rot.detail["time_travel"] = point.as_dict()
    return True
