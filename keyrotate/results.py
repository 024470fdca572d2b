"""What every command returns: a typed result that knows its exit code and renders itself
(short text for people, or a dict the CLI prints as one JSON object, the last line of
stdout). Exit codes: 0 success, 1 finished with failures, 2 usage or
configuration error, 3 interrupted or incomplete (run the same command again).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

LISTED_LINES = 20


@runtime_checkable
class Result(Protocol):
    @property
    def exit_code(self) -> int: ...

    def as_dict(self) -> dict[str, Any]: ...

    def text(self) -> str: ...


def failure_lines(failures: Sequence[dict[str, str]], total: int,
                  more: str = "see `keyrotate runs RUN_ID --json`") -> list[str]:
    """Failed rows as lines, the first few of `total`, and where to find the rest."""
    out = [f"  row {f['id']}: {f['reason']}" for f in failures[:LISTED_LINES]]
    if total > len(out):
        out.append(f"  ... {total - len(out)} more ({more})")
    return out
