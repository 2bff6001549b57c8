"""Timeframes: the bar sizes KTRDR loads, how IB names them, and how much one IB request may cover.

`max_request` is the longest span one historical request may ask for at that bar size (IB's published
limits per bar size); segment planning splits every range by it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from ktrdr.errors import ValidationError


@dataclass(frozen=True)
class Timeframe:
    name: str  # KTRDR's name: "1m", "1h", "1d", ...
    seconds: int  # nominal bar length
    ib_bar_size: str  # IB's barSizeSetting
    max_request: timedelta  # longest span of one IB historical request at this bar size
    pandas_freq: str  # pandas offset alias of the bar length

    @property
    def delta(self) -> timedelta:
        return timedelta(seconds=self.seconds)

    @property
    def is_intraday(self) -> bool:
        return self.seconds < 86400

    def __str__(self) -> str:
        return self.name


_MIN = 60
_HOUR = 3600
_DAY = 86400

TIMEFRAMES: dict[str, Timeframe] = {
    tf.name: tf
    for tf in (
        Timeframe("1m", _MIN, "1 min", timedelta(days=1), "1min"),
        Timeframe("5m", 5 * _MIN, "5 mins", timedelta(days=7), "5min"),
        Timeframe("15m", 15 * _MIN, "15 mins", timedelta(days=14), "15min"),
        Timeframe("30m", 30 * _MIN, "30 mins", timedelta(days=30), "30min"),
        Timeframe("1h", _HOUR, "1 hour", timedelta(days=30), "1h"),
        Timeframe("4h", 4 * _HOUR, "4 hours", timedelta(days=120), "4h"),
        Timeframe("1d", _DAY, "1 day", timedelta(days=365), "1D"),
        Timeframe("1w", 7 * _DAY, "1 week", timedelta(days=730), "7D"),
    )
}

# Spellings people type for the same timeframe; the canonical names are the TIMEFRAMES keys.
_ALIASES = {
    "1min": "1m",
    "5min": "5m",
    "15min": "15m",
    "30min": "30m",
    "60m": "1h",
    "1hour": "1h",
    "4hour": "4h",
    "240m": "4h",
    "d": "1d",
    "1day": "1d",
    "daily": "1d",
    "w": "1w",
    "1week": "1w",
    "weekly": "1w",
}


def parse_timeframe(s: str | Timeframe) -> Timeframe:
    """Return the Timeframe named `s` ("1h", "1H", "1 hour" ...); ValidationError lists the valid ones."""
    if isinstance(s, Timeframe):
        return s
    key = str(s).strip().lower().replace(" ", "")
    if key in TIMEFRAMES:
        return TIMEFRAMES[key]
    if key in _ALIASES:
        return TIMEFRAMES[_ALIASES[key]]
    for tf in TIMEFRAMES.values():  # IB spellings: "1 hour", "5 mins"
        if key == tf.ib_bar_size.replace(" ", "").lower():
            return tf
    raise ValidationError(f"unknown timeframe {s!r}", hint=f"valid timeframes: {', '.join(TIMEFRAMES)}")


def ib_duration_str(td: timedelta) -> str:
    """IB durationStr covering at least `td`: "N S" up to 86400 s, "N D" up to 365 days, else "N Y".

    Rounded UP, so a request always covers the whole span (the caller trims what it did not ask for).
    """
    secs = math.ceil(td.total_seconds())
    if secs <= 0:
        raise ValidationError(f"duration must be positive, got {td}")
    if secs <= _DAY:
        return f"{secs} S"
    days = math.ceil(secs / _DAY)
    if days <= 365:
        return f"{days} D"
    # IB refuses day counts above 365: longer spans are asked for in whole years.
    return f"{math.ceil(days / 365)} Y"
