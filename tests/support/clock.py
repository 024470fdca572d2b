"""Moving keyrotate's clock (keyrotate.timeutil) through months without sleeping, and
setting when the store says each secret was set (its age), to match."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

from keyrotate import timeutil


class TestClock:
    """A clock that stands still until the test moves it."""

    __test__ = False   # not a test class, for pytest

    def __init__(self, start: datetime):
        self.t = start

    def __call__(self) -> datetime:
        return self.t

    def at(self, t: datetime) -> datetime:
        assert t >= self.t, "time only moves forward in these tests"
        self.t = t
        return t

    def advance(self, **delta: float) -> datetime:
        return self.at(self.t + timedelta(**delta))

    def install(self) -> None:
        timeutil.use_clock(self)

    @staticmethod
    def uninstall() -> None:
        timeutil.use_clock(None)


def utc(text: str) -> datetime:
    """'2027-01-04 10:00' -> aware UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def set_ages(dotenv: Path, when: datetime) -> None:
    """Every `# keyrotate: NAME set <time>` stamp of a .env store says `when`."""
    text = dotenv.read_text()
    text, n = re.subn(r"^(# keyrotate: \w+ set ).*$", lambda m: m.group(1) + when.isoformat(),
                      text, flags=re.M)
    assert n, "no age stamps in the store"
    dotenv.write_text(text)
