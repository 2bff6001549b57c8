"""Timeframes: how IB names them and how much one IB request may cover.

`Timeframe` itself (a StrEnum: "1h" on the wire, equal to "1h", with its nominal `seconds`, made from
any spelling people type) is declared in events/bounds.py, so a message, the CLI, planning and the IB
client all hold the same type; this module is its domain table. `max_request` is the longest span one
historical request may ask for at that bar size (IB's published limits per bar size); segment planning
splits every range by it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from types import MappingProxyType

from events.bounds import Timeframe
from ktrdr.errors import ValidationError

__all__ = ["TIMEFRAMES", "Timeframe", "TimeframeSpec", "ib_bar_size", "ib_duration_str", "max_request",
           "pandas_freq", "parse_timeframe"]


@dataclass(frozen=True)
class TimeframeSpec:
    ib_bar_size: str  # IB's barSizeSetting
    max_request: timedelta  # longest span of one IB historical request at this bar size
    pandas_freq: str  # pandas offset alias of the bar length


_SPECS: dict[Timeframe, TimeframeSpec] = {
    Timeframe.M1: TimeframeSpec("1 min", timedelta(days=1), "1min"),
    Timeframe.M5: TimeframeSpec("5 mins", timedelta(days=7), "5min"),
    Timeframe.M15: TimeframeSpec("15 mins", timedelta(days=14), "15min"),
    Timeframe.M30: TimeframeSpec("30 mins", timedelta(days=30), "30min"),
    Timeframe.H1: TimeframeSpec("1 hour", timedelta(days=30), "1h"),
    Timeframe.H4: TimeframeSpec("4 hours", timedelta(days=120), "4h"),
    Timeframe.D1: TimeframeSpec("1 day", timedelta(days=365), "1D"),
    Timeframe.W1: TimeframeSpec("1 week", timedelta(days=730), "7D"),
}
# Keyed by the enum, which hashes and compares as its name: TIMEFRAMES["1h"] is TIMEFRAMES[Timeframe.H1].
TIMEFRAMES: MappingProxyType[str, Timeframe] = MappingProxyType({tf.value: tf for tf in Timeframe})


def ib_bar_size(tf: Timeframe) -> str:
    return _SPECS[tf].ib_bar_size


def max_request(tf: Timeframe) -> timedelta:
    return _SPECS[tf].max_request


def pandas_freq(tf: Timeframe) -> str:
    return _SPECS[tf].pandas_freq


def parse_timeframe(s: object) -> Timeframe:
    """The Timeframe named `s` ("1h", "1H", "1 hour", a Timeframe ...), or ValidationError listing the
    valid ones: Timeframe(s) with the error a user reads (the CLI, a strategy file)."""
    if isinstance(s, str):
        try:
            return Timeframe(s)
        except ValueError:
            pass
    quoted = (repr(s) if len(s) <= 20 else f"{s[:20]!r}...") if isinstance(s, str) else type(s).__name__
    raise ValidationError(f"unknown timeframe {quoted}", hint=f"valid timeframes: {', '.join(Timeframe)}")


def ib_duration_str(td: timedelta) -> str:
    """IB durationStr covering at least `td`: "N S" up to 86400 s, "N D" up to 365 days, else "N Y".

    Rounded UP, so a request always covers the whole span (the caller trims what it did not ask for).
    """
    secs = math.ceil(td.total_seconds())
    day = Timeframe.D1.seconds
    if secs <= 0:
        raise ValidationError(f"duration must be positive, got {td}")
    if secs <= day:
        return f"{secs} S"
    days = math.ceil(secs / day)
    if days <= 365:
        return f"{days} D"
    # IB refuses day counts above 365: longer spans are asked for in whole years.
    return f"{math.ceil(days / 365)} Y"
