"""What every command returns: a typed result that knows its exit code.

The library builds results; the CLI only renders them (text, or one JSON object as the
last line of stdout). Exit codes: 0 success, 1 finished with failures, 2 usage or
configuration error, 3 interrupted or incomplete (run the same command again).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Result(Protocol):
    @property
    def exit_code(self) -> int: ...

    def as_dict(self) -> dict[str, Any]: ...
