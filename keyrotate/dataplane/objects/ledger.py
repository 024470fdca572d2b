"""The application's own per-account rotation ledger in D1 (tminus's key_rotation_log):

    key_rotation_log(rotation_id, account_id, status started|completed|failed,
                     error_message, started_at, completed_at, PRIMARY KEY (rotation_id, account_id))

`started` before an id is sent, `completed` on a confirmed result, `failed` with its
reason. A re-run of the same rotation skips completed ids, so a run killed at any moment
finishes the job with each id completed exactly once. The ledger is a shortcut, not the
proof: the census is.
"""

from __future__ import annotations

from typing import Sequence

from keyrotate.db.base import MAX_BOUND_PARAMS, RowStore, Statement, quote_ident

ROWS_PER_INSERT = MAX_BOUND_PARAMS // 2   # (rotation_id, account_id) per row
IDS_PER_IN = MAX_BOUND_PARAMS - 1         # rotation_id + the ids


def _chunks(ids: Sequence[str], n: int) -> list[Sequence[str]]:
    return [ids[i:i + n] for i in range(0, len(ids), n)]


class Ledger:
    def __init__(self, db: RowStore, table: str, rotation_id: str):
        self.db, self.table, self.rotation_id = db, quote_ident(table), rotation_id

    def completed(self, ids: Sequence[str]) -> set[str]:
        done: set[str] = set()
        for chunk in _chunks(ids, IDS_PER_IN):
            done |= {str(r[0]) for r in self.db.query(
                f"SELECT account_id FROM {self.table} WHERE rotation_id = ? AND status = "
                f"'completed' AND account_id IN ({','.join('?' * len(chunk))})",
                (self.rotation_id, *chunk))}
        return done

    def started(self, ids: Sequence[str], again: bool = False) -> list[Statement]:
        """Rows marked started before the ids go out; `again` re-opens completed ones (a
        sweep after a census found them under the old key)."""
        keep = "" if again else " WHERE status != 'completed'"
        return [Statement(
            f"INSERT INTO {self.table} (rotation_id, account_id, status, started_at) VALUES "
            + ", ".join("(?, ?, 'started', datetime('now'))" for _ in chunk)
            + " ON CONFLICT (rotation_id, account_id) DO UPDATE SET status = 'started', "
            f"error_message = NULL, completed_at = NULL{keep}",
            tuple(v for i in chunk for v in (self.rotation_id, i)))
            for chunk in _chunks(ids, ROWS_PER_INSERT)]

    def outcome(self, completed: Sequence[str], failed: dict[str, str]) -> list[Statement]:
        stmts = [Statement(
            f"UPDATE {self.table} SET status = 'completed', completed_at = datetime('now'), "
            f"error_message = NULL WHERE rotation_id = ? AND account_id IN "
            f"({','.join('?' * len(chunk))})", (self.rotation_id, *chunk))
            for chunk in _chunks(completed, IDS_PER_IN)]
        stmts += [Statement(
            f"UPDATE {self.table} SET status = 'failed', error_message = ? WHERE rotation_id = ? "
            "AND account_id = ?", (reason, self.rotation_id, i)) for i, reason in failed.items()]
        return stmts
