"""Times as Cloudflare and Vault write them (RFC 3339, up to nanoseconds), as aware UTC,
and the time-ordered ids of runs and rotations."""

from __future__ import annotations

from datetime import datetime, timezone


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
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def new_id(prefix: str) -> str:
    """A sortable, unique id: prefix + UTC time to the second + 6 random hex digits."""
    import secrets

    return prefix + datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S") + "-" + secrets.token_hex(3)
