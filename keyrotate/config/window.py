"""When an unattended step may start: a secret's `window` in keyrotate.toml, so that
nothing starts at 3 a.m. on a Saturday. The syntax is small on purpose:

    window = "DAYS HH:MM-HH:MM ZONE"             e.g. "Mon-Fri 09:00-16:00 UTC"
    window = ["Mon-Thu 09:00-17:00 Europe/Berlin", "Fri 09:00-12:00 Europe/Berlin"]

- DAYS: Mon Tue Wed Thu Fri Sat Sun (any case); a range `Mon-Fri` (it may wrap: `Fri-Mon`);
  several joined by commas, `Mon-Wed,Fri`; or `daily`.
- HH:MM-HH:MM: 24-hour wall-clock times, the start before the end, the end at most 24:00.
  A window never crosses midnight: write two (`Fri 22:00-24:00 ...`, `Sat 00:00-02:00 ...`).
- ZONE: `UTC` or an IANA zone name (`Europe/Berlin`), daylight saving included. It is
  required: the zone of whatever machine runs the schedule is no policy.
- A list is the union of its windows.

A window bounds when a step may *start*; a step that started inside it runs to its end.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from keyrotate.errors import ConfigError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
SYNTAX = ('"DAYS HH:MM-HH:MM ZONE", for example "Mon-Fri 09:00-16:00 UTC" (DAYS: Mon..Sun, '
          'ranges like Mon-Fri, lists like Mon,Wed,Fri, or daily; ZONE: UTC or an IANA name '
          'like Europe/Berlin)')
_SPAN = re.compile(r"^(\S+)\s+(\d{2}):(\d{2})-(\d{2}):(\d{2})\s+(\S+)$")


def _days(text: str, where: str) -> frozenset[int]:
    if text.lower() == "daily":
        return frozenset(range(7))
    out: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.lower().partition("-")
        if first not in DAYS or (dash and last not in DAYS):
            raise ConfigError(f"{where}: {part!r} is not a day or a range of days (Mon..Sun, "
                              f"Mon-Fri); a window is {SYNTAX}")
        a, b = DAYS.index(first), DAYS.index(last) if dash else DAYS.index(first)
        out.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(out)


def _zone(name: str, where: str) -> tzinfo:
    if name.upper() == "UTC":
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{where}: unknown time zone {name!r}: use UTC or an IANA name like "
                          "Europe/Berlin (the system's tz database, or the tzdata package)") from None


@dataclass(frozen=True)
class Span:
    """One line of a window: these days, from `start` to `end` minutes after midnight."""

    days: frozenset[int]
    start: int
    end: int
    zone: tzinfo
    text: str

    @classmethod
    def parse(cls, text: str, where: str) -> "Span":
        m = _SPAN.match(text.strip())
        if not m and _SPAN.match(text.strip() + " UTC"):
            raise ConfigError(f"{where}: {text!r} names no time zone: add UTC or an IANA name "
                              "(Europe/Berlin); the zone of the machine that runs the schedule is "
                              "no policy")
        if not m:
            raise ConfigError(f"{where}: {text!r} is not a window: write {SYNTAX}")
        h1, m1, h2, m2 = (int(g) for g in m.group(2, 3, 4, 5))
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if m1 > 59 or m2 > 59 or h1 > 23 or end > 24 * 60:
            raise ConfigError(f"{where}: {text!r}: times are HH:MM from 00:00 to 24:00")
        if start >= end:
            raise ConfigError(f"{where}: {text!r}: the window must end after it starts, the same "
                              "day (to cross midnight, write two windows)")
        return cls(_days(m.group(1), where), start, end, _zone(m.group(6), where), text.strip())

    def _bounds(self, day: date) -> tuple[datetime, datetime]:
        """This span on one local day, as aware UTC times."""
        opens = datetime.combine(day, time(self.start // 60, self.start % 60), tzinfo=self.zone)
        closes = (datetime.combine(day + timedelta(days=1), time(0), tzinfo=self.zone)
                  if self.end == 24 * 60 else
                  datetime.combine(day, time(self.end // 60, self.end % 60), tzinfo=self.zone))
        return opens.astimezone(timezone.utc), closes.astimezone(timezone.utc)

    def next_open(self, t: datetime) -> datetime:
        """The first moment at or after `t` inside this span."""
        local = t.astimezone(self.zone).date()
        for d in range(-1, 9):
            day = local + timedelta(days=d)
            if day.weekday() not in self.days:
                continue
            opens, closes = self._bounds(day)
            if closes > t:
                return max(opens, t)
        raise AssertionError("a span opens at least once a week")  # pragma: no cover


@dataclass(frozen=True)
class Window:
    spans: tuple[Span, ...]

    @classmethod
    def parse(cls, value: Any, where: str) -> "Window":
        texts = value if isinstance(value, list) else [value]
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ConfigError(f"{where}: window must be a string or a list of strings: {SYNTAX}")
        return cls(tuple(Span.parse(t, where) for t in texts))

    def contains(self, t: datetime) -> bool:
        return self.next_open(t) == t

    def next_open(self, t: datetime) -> datetime:
        """The first moment at or after `t` when a step may start."""
        return min(span.next_open(t) for span in self.spans)

    def __str__(self) -> str:
        return "; ".join(span.text for span in self.spans)
