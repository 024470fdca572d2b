"""`keyrotate runs`: the reencrypt runs in a database's journal, or one run with its
failed rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keyrotate.dataplane.journal import list_runs, run_failures
from keyrotate.db.base import RowStore
from keyrotate.errors import ConfigError
from keyrotate.results import failure_lines


def _runs_lines(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return "no runs recorded"
    return "\n".join(
        f"{r['run_id']}  {r['status']:<24} {r['target']:<32} {r['mode']:<9} "
        f"scanned {r['rows_scanned']:,} rewritten {r['rows_rewritten']:,} "
        f"failed {r['rows_failed']:,}  started {r['started_at']}" for r in runs)


@dataclass(frozen=True)
class RunsResult:
    runs: list[dict[str, Any]]
    failures: list[dict[str, str]] | None = None   # when one run was asked for
    exit_code: int = 0

    def as_dict(self) -> dict[str, Any]:
        if self.failures is None:
            return {"runs": self.runs}
        return dict(self.runs[0], failures=self.failures)

    def text(self) -> str:
        if self.failures is None:
            return _runs_lines(self.runs)
        return "\n".join([_runs_lines(self.runs),
                          *failure_lines(self.failures, int(self.runs[0]["rows_failed"]))]).rstrip()


def runs(db: RowStore, run_id: str | None = None) -> RunsResult:
    found = list_runs(db, run_id)
    if run_id is None:
        return RunsResult(found)
    if not found:
        raise ConfigError(f"no run {run_id!r} in {db.display_url}")
    return RunsResult(found, run_failures(db, run_id))
