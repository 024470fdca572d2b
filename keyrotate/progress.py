"""How work reports progress: a counter for long work (rows, objects) and `Say` for
human-readable steps. The library calls them; the CLI decides how to show them."""

from __future__ import annotations

from typing import Callable, Protocol

# one line of progress for people (the CLI sends it to stderr)
Say = Callable[[str], None]


class Progress(Protocol):
    def start(self, total: int) -> None: ...

    def advance(self, rows: int) -> None: ...

    def close(self) -> None: ...


class NoProgress:
    def start(self, total: int) -> None:
        pass

    def advance(self, rows: int) -> None:
        pass

    def close(self) -> None:
        pass
