"""A secret's rollover `window`: its small syntax, and when a step may start."""

from __future__ import annotations

import pytest

from keyrotate.config.window import Window
from keyrotate.errors import ConfigError
from tests.support.clock import utc

WEEKDAYS = Window.parse("Mon-Fri 09:00-16:00 UTC", "w")


@pytest.mark.parametrize("at,inside,opens", [
    ("2027-04-03 03:00", False, "2027-04-05 09:00"),   # Saturday 3 a.m.: Monday morning
    ("2027-04-05 08:59", False, "2027-04-05 09:00"),
    ("2027-04-05 09:00", True, "2027-04-05 09:00"),    # the start is inside
    ("2027-04-09 15:59", True, "2027-04-09 15:59"),
    ("2027-04-09 16:00", False, "2027-04-12 09:00"),   # the end is not: Friday 16:00 -> Monday
])
def test_weekdays_in_utc(at, inside, opens):
    assert WEEKDAYS.contains(utc(at)) is inside
    assert WEEKDAYS.next_open(utc(at)) == utc(opens)


def test_ranges_wrap_lists_join_and_24_00_ends_the_day():
    weekend = Window.parse("Sat-Sun 00:00-24:00 UTC", "w")
    assert weekend.contains(utc("2027-04-04 23:59")) and not weekend.contains(utc("2027-04-05 00:00"))
    wrap = Window.parse("Fri-Mon 10:00-11:00 UTC", "w")
    assert wrap.next_open(utc("2027-04-06 12:00")) == utc("2027-04-09 10:00")   # Tue -> Fri
    assert wrap.contains(utc("2027-04-12 10:30"))                              # Monday
    union = Window.parse(["Mon,Wed 09:00-10:00 UTC", "daily 22:00-23:00 UTC"], "w")
    assert union.next_open(utc("2027-04-06 09:30")) == utc("2027-04-06 22:00")  # Tuesday
    assert union.next_open(utc("2027-04-06 23:30")) == utc("2027-04-07 09:00")
    assert str(union) == "Mon,Wed 09:00-10:00 UTC; daily 22:00-23:00 UTC"


def test_a_zone_keeps_wall_clock_times_across_daylight_saving():
    berlin = Window.parse("Mon-Fri 09:00-16:00 Europe/Berlin", "w")
    assert berlin.next_open(utc("2027-03-26 16:00")) == utc("2027-03-29 07:00")  # CEST: UTC+2
    assert berlin.next_open(utc("2027-03-25 16:00")) == utc("2027-03-26 08:00")  # CET: UTC+1
    assert not berlin.contains(utc("2027-03-29 06:59")) and berlin.contains(utc("2027-03-29 07:00"))


@pytest.mark.parametrize("value,message", [
    ("Mon-Fri 09:00-16:00", "names no time zone"),
    ("weekdays 09:00-16:00 UTC", "'weekdays' is not a day"),
    ("Mon-Fri 9:00-16:00 UTC", "is not a window"),
    ("Mon 10:00-09:00 UTC", "must end after it starts"),
    ("Mon 09:00-24:30 UTC", "from 00:00 to 24:00"),
    ("Mon 09:60-10:00 UTC", "from 00:00 to 24:00"),
    ("Mon 09:00-10:00 Nowhere/Town", "unknown time zone 'Nowhere/Town'"),
    ([], "a string or a list of strings"),
    (9, "a string or a list of strings"),
])
def test_what_is_not_a_window_says_why(value, message):
    with pytest.raises(ConfigError, match=message):
        Window.parse(value, "keyrotate.toml: [secrets.X] window")
