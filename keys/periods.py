"""Durations (``30s``, ``15m``, ``12h``, ``7d``, ``2w``, ``1mo``) and budget periods.

A budget with a ``budget_duration`` resets when ``budget_reset_at`` passes. The database
row is rolled over lazily (by the usage writer, the management API and the admin), so
everything that reads a spend asks ``current_period`` / ``live_spend`` instead of
trusting the stored ``budget_reset_at``.
"""

from __future__ import annotations

import calendar
import re
from datetime import datetime, timedelta
from decimal import Decimal

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w|mo)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class DurationError(ValueError):
    pass


def parse_duration(text: str) -> tuple[int, str]:
    """``"30d"`` -> ``(30, "d")``; a ValueError that says what is accepted otherwise."""
    match = _DURATION.match(str(text or ""))
    if not match or int(match.group(1)) <= 0:
        raise DurationError(f"{text!r} is not a duration: use a positive number followed by s, m, h, d, w or mo "
                            "(e.g. 30s, 15m, 12h, 7d, 30d, 1mo).")
    return int(match.group(1)), match.group(2)


def add_duration(start: datetime, text: str) -> datetime:
    count, unit = parse_duration(text)
    if unit != "mo":
        return start + timedelta(seconds=count * _UNITS[unit])
    month = start.month - 1 + count
    year, month = start.year + month // 12, month % 12 + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    return start.replace(year=year, month=month, day=day)


def current_period(reset_at: datetime | None, duration: str, now: datetime) -> tuple[datetime | None, bool]:
    """(the reset time of the period ``now`` is in, whether that is a later period than ``reset_at``'s)."""
    if reset_at is None or not duration:
        return reset_at, False
    if now < reset_at:
        return reset_at, False
    nxt = reset_at
    for _ in range(100_000):
        nxt = add_duration(nxt, duration)
        if nxt > now:
            break
    return nxt, True


def live_spend(spend: Decimal, reset_at: datetime | None, duration: str, now: datetime) -> Decimal:
    """The spend of the current period: zero once the stored period has ended."""
    return Decimal(0) if current_period(reset_at, duration, now)[1] else spend
