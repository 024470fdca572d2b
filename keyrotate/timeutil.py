"""Times as Cloudflare and Vault write them (RFC 3339, up to nanoseconds), as aware UTC,
the time-ordered ids of runs and rotations, and the one clock keyrotate's own records and
policies read (`now()`): tests replace it (`use_clock`) to move a rotation schedule through
months without sleeping. Leases keep to the real clock: they judge live processes."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable

Clock = Callable[[], datetime]


def _system_clock() -> datetime:
    return datetime.now(timezone.utc)


_clock: Clock = _system_clock


def now() -> datetime:
    """The current time, aware UTC, from the clock in use (the system's, unless replaced)."""
    return _clock()


def use_clock(clock: Clock | None) -> None:
    """Read time from `clock` (returning aware datetimes) from now on; None restores the
    system clock."""
    global _clock
    _clock = clock or _system_clock


def parse_utc(stamp: str | None) -> datetime | None:
    """'2026-11-28T10:00:00.123456789Z' or '+00:00' forms -> aware datetime (None if unreadable)."""
    if not stamp:
        return None
    text = stamp.strip().replace("Z", "+00:00")
    main, plus, zone = text.partition("+")
    head, _, frac = main.partition(".")
    try:
        parsed = datetime.fromisoformat(head + ("." + frac[:6] if frac else "") + plus + zone)
    except ValueError:
        return None
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)


def now_iso() -> str:
    return now().astimezone(timezone.utc).isoformat(timespec="microseconds")


def new_id(prefix: str) -> str:
    """A sortable, unique id: prefix + UTC time to the second + 6 random hex digits."""
    import secrets

    return prefix + datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S") + "-" + secrets.token_hex(3)
