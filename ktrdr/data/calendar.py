"""Instruments and trading calendars: which bars exist.

`expected_bar_starts` is THE definition of the bars an instrument has at a timeframe in a range. The
simulated IB gateway generates exactly these bars and gap analysis compares stored bars against
exactly these, so weekends, closed hours and exchange holidays are never reported as gaps.

Conventions (all timestamps are UTC, the bar's START):
- Stocks trade 09:30-16:00 America/New_York Mon-Fri except NYSE holidays (no early closes modelled).
  Intraday bars start at session open + k*timeframe while before the close (1h: 09:30, 10:30 ... 15:30
  New York time, whatever the DST offset).
- Forex (IDEALPRO) trades 24x5: Sunday 17:00 New York to Friday 17:00 New York; holidays are not
  modelled. Intraday bars are aligned to UTC multiples of the timeframe; a bar exists when its
  interval overlaps the open hours.
- 1d: one bar per session, timestamped at the session's DATE 00:00 UTC (for forex the trading day
  that opens Sunday 17:00 New York is Monday's bar, so Monday-Friday dates).
- 1w: one bar per week that has at least one session, timestamped at that week's Monday 00:00 UTC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Literal

import numpy as np
import pandas as pd

from ktrdr.data.timeframes import Timeframe, parse_timeframe
from ktrdr.errors import ValidationError

NEW_YORK = "America/New_York"


@dataclass(frozen=True)
class Instrument:
    symbol: str  # KTRDR's normalised symbol: "AAPL", "EURUSD"
    kind: Literal["stock", "forex"]
    exchange: str  # "SMART" for stocks, "IDEALPRO" for forex
    currency: str  # quote currency
    con_id: int  # IB contract id
    tz: str  # the time zone the sessions are defined in
    what_to_show: str  # TRADES for stocks, MIDPOINT for forex
    local_symbol: str = ""  # IB localSymbol: "AAPL", "EUR.USD"
    pair: str = ""  # "EUR.USD" for forex, "" for stocks

    @property
    def ib_symbol(self) -> str:
        """IB's contract `symbol`: the ticker for stocks, the base currency for forex ("EUR")."""
        return self.symbol[:3] if self.kind == "forex" else self.symbol

    @property
    def sec_type(self) -> str:
        return "CASH" if self.kind == "forex" else "STK"


def _stock(symbol: str, con_id: int) -> Instrument:
    return Instrument(symbol, "stock", "SMART", "USD", con_id, NEW_YORK, "TRADES", symbol, "")


def _fx(symbol: str, con_id: int) -> Instrument:
    pair = f"{symbol[:3]}.{symbol[3:]}"
    return Instrument(symbol, "forex", "IDEALPRO", symbol[3:], con_id, NEW_YORK, "MIDPOINT", pair, pair)


DEFAULT_UNIVERSE: dict[str, Instrument] = {
    i.symbol: i
    for i in (
        _stock("AAPL", 265598),
        _stock("MSFT", 272093),
        _stock("GOOGL", 208813719),
        _stock("AMZN", 3691937),
        _stock("TSLA", 76792991),
        _stock("NVDA", 4815747),
        _stock("SPY", 756733),
        _fx("EURUSD", 12087792),
        _fx("GBPUSD", 12087797),
        _fx("USDJPY", 15016059),
        _fx("AUDUSD", 14433401),
    )
}

_SYMBOL_RE = re.compile(r"^[A-Z0-9]+$")


def normalize_symbol(s: str) -> str:
    """ "eur.usd", "EUR.USD", "EUR/USD", "EURUSD" -> "EURUSD"; " aapl " -> "AAPL".

    Separators (. / - _ space) are dropped; anything else that is not a letter or digit is rejected.
    """
    if not isinstance(s, str):
        raise ValidationError(f"symbol must be a string, got {type(s).__name__}")
    cleaned = re.sub(r"[./\-_\s]", "", s).upper()
    if not cleaned:
        raise ValidationError("symbol is empty", hint="e.g. AAPL or EURUSD")
    if not _SYMBOL_RE.match(cleaned) or len(cleaned) > 20:
        raise ValidationError(f"invalid symbol {s!r}", hint="letters and digits only, e.g. AAPL or EUR.USD")
    return cleaned


def lookup(symbol: str, universe: dict[str, Instrument] | None = None) -> Instrument | None:
    """The instrument for `symbol` (any spelling normalize_symbol accepts), or None if unknown."""
    return (DEFAULT_UNIVERSE if universe is None else universe).get(normalize_symbol(symbol))


# --- NYSE holidays ----------------------------------------------------------------------------------
def _nth_weekday(year: int, month: int, weekday: int, n: int) -> date:
    """The n-th (1-based) `weekday` (Mon=0) of the month; n=-1 is the last one."""
    if n > 0:
        first = date(year, month, 1)
        return first + timedelta(days=(weekday - first.weekday()) % 7 + 7 * (n - 1))
    nxt = date(year + (month == 12), month % 12 + 1, 1)
    last = nxt - timedelta(days=1)
    return last - timedelta(days=(last.weekday() - weekday) % 7)


def _easter(year: int) -> date:
    """Gregorian Easter Sunday (anonymous Gregorian algorithm)."""
    a = year % 19
    b, c = divmod(year, 100)
    d, e = divmod(b, 4)
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    ell = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * ell) // 451
    month, day = divmod(h + ell - 7 * m + 114, 31)
    return date(year, month, day + 1)


def _observed(d: date) -> date:
    """Saturday holidays are observed on Friday, Sunday holidays on Monday."""
    if d.weekday() == 5:
        return d - timedelta(days=1)
    if d.weekday() == 6:
        return d + timedelta(days=1)
    return d


@lru_cache(maxsize=256)
def nyse_holidays(year: int) -> frozenset[date]:
    """NYSE full-day closures in `year` (rules, not a table; early closes are not modelled)."""
    days: set[date] = set()
    ny = date(year, 1, 1)
    # NYSE does not close on Friday Dec 31 when Jan 1 is a Saturday; a Sunday Jan 1 moves to Monday.
    if ny.weekday() != 5:
        days.add(_observed(ny))
    days.add(_nth_weekday(year, 1, 0, 3))  # Martin Luther King Jr. Day
    days.add(_nth_weekday(year, 2, 0, 3))  # Presidents' Day
    days.add(_easter(year) - timedelta(days=2))  # Good Friday
    days.add(_nth_weekday(year, 5, 0, -1))  # Memorial Day
    if year >= 2022:
        days.add(_observed(date(year, 6, 19)))  # Juneteenth
    days.add(_observed(date(year, 7, 4)))  # Independence Day
    days.add(_nth_weekday(year, 9, 0, 1))  # Labor Day
    days.add(_nth_weekday(year, 11, 3, 4))  # Thanksgiving
    days.add(_observed(date(year, 12, 25)))  # Christmas
    return frozenset(days)


# --- time helpers -----------------------------------------------------------------------------------
def to_utc(t: datetime | pd.Timestamp | str | date, what: str = "time") -> pd.Timestamp:
    """A UTC Timestamp from a datetime, date or ISO string; naive input is taken as UTC."""
    try:
        ts = pd.Timestamp(t)
    except (ValueError, TypeError) as e:
        raise ValidationError(f"invalid {what} {t!r}: {e}") from None
    if ts is pd.NaT:
        raise ValidationError(f"invalid {what} {t!r}")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _local_days(start: pd.Timestamp, end: pd.Timestamp, tz: str) -> pd.DatetimeIndex:
    """Naive local calendar days from a day before start to a day after end (sessions may straddle)."""
    # Naive first, then whole days: tz-aware arithmetic across a DST change would shift the hour.
    first = start.tz_convert(tz).tz_localize(None).normalize() - pd.Timedelta(days=1)
    last = end.tz_convert(tz).tz_localize(None).normalize() + pd.Timedelta(days=1)
    return pd.date_range(first, last, freq="D")


def _session_arrays(inst: Instrument, start: pd.Timestamp, end: pd.Timestamp) -> tuple[np.ndarray, ...]:
    """(session dates as datetime64[D], opens ns UTC, closes ns UTC) for sessions near [start, end)."""
    days = _local_days(start, end, inst.tz)
    if inst.kind == "stock":
        holidays: set[date] = set()
        for y in range(days[0].year, days[-1].year + 1):
            holidays |= nyse_holidays(y)
        hol = np.array(sorted(holidays), dtype="datetime64[D]")
        d64 = days.values.astype("datetime64[D]")
        keep = (days.day_of_week < 5) & ~np.isin(d64, hol)
        sdays = days[keep]
        opens = (sdays + pd.Timedelta(hours=9, minutes=30)).tz_localize(inst.tz).tz_convert("UTC")
        closes = (sdays + pd.Timedelta(hours=16)).tz_localize(inst.tz).tz_convert("UTC")
        session_dates = sdays.values.astype("datetime64[D]")
    else:
        # One continuous session per week: Sunday 17:00 to Friday 17:00 New York.
        first = days[0] - pd.Timedelta(days=7)
        sundays = pd.date_range(first, days[-1] + pd.Timedelta(days=7), freq="W-SUN")
        opens = (sundays + pd.Timedelta(hours=17)).tz_localize(inst.tz).tz_convert("UTC")
        closes = (sundays + pd.Timedelta(days=5, hours=17)).tz_localize(inst.tz).tz_convert("UTC")
        session_dates = sundays.values.astype("datetime64[D]")
    # pandas 3 may pick second resolution; everything here computes in nanoseconds.
    return session_dates, opens.as_unit("ns").asi8, closes.as_unit("ns").asi8


def trading_sessions(
    inst: Instrument, start: datetime | pd.Timestamp | str, end: datetime | pd.Timestamp | str
) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """The (open, close) UTC sessions overlapping [start, end), sorted.

    Forex has one session per week (Sunday 17:00 to Friday 17:00 New York)."""
    s, e = to_utc(start, "start"), to_utc(end, "end")
    _, opens, closes = _session_arrays(inst, s, e)
    keep = (closes > s.value) & (opens < e.value)
    return [
        (pd.Timestamp(o, tz="UTC"), pd.Timestamp(c, tz="UTC")) for o, c in zip(opens[keep], closes[keep], strict=True)
    ]


def _daily_dates(inst: Instrument, start: pd.Timestamp, end: pd.Timestamp) -> np.ndarray:
    """datetime64[D] trading dates near [start, end): NYSE days for stocks, Mon-Fri for forex."""
    if inst.kind == "stock":
        dates, _, _ = _session_arrays(inst, start, end)
        return dates
    days = _local_days(start, end, "UTC")
    return days[days.day_of_week < 5].values.astype("datetime64[D]")


def expected_bar_starts(
    inst: Instrument,
    timeframe: Timeframe | str,
    start: datetime | pd.Timestamp | str,
    end: datetime | pd.Timestamp | str,
) -> pd.DatetimeIndex:
    """UTC start times of every bar `inst` has at `timeframe` with start <= t < end, sorted.

    See the module docstring for the conventions (session alignment, daily/weekly timestamps)."""
    tf = parse_timeframe(timeframe)
    s, e = to_utc(start, "start"), to_utc(end, "end")
    if e <= s:
        return pd.DatetimeIndex([], tz="UTC", name="timestamp")
    if tf.is_intraday:
        _, opens, closes = _session_arrays(inst, s, e)
        step = tf.seconds * 1_000_000_000
        if inst.kind == "stock":
            first = opens  # bars start at the session open
        else:
            first = (opens // step) * step  # UTC-aligned; the bar containing the open counts
        n = int(((closes - first + step - 1) // step).max()) if len(first) else 0
        grid = first[:, None] + np.arange(n, dtype=np.int64)[None, :] * step
        ok = grid < closes[:, None]
        values = grid[ok]
    else:
        week = pd.Timedelta(days=7)
        # A week's bar exists if ANY day of that week trades (Monday may be a holiday): look a week wider.
        dates = _daily_dates(inst, s - week, e + week) if tf.name == "1w" else _daily_dates(inst, s, e)
        if tf.name == "1w":
            # Monday of each week with a session (datetime64 day 0 is a Thursday, hence the +3).
            dates = np.unique(dates - ((dates.astype(np.int64) + 3) % 7).astype("timedelta64[D]"))
        values = dates.astype("datetime64[ns]").astype(np.int64)
    values = values[(values >= s.value) & (values < e.value)]
    values.sort()
    return pd.DatetimeIndex(pd.to_datetime(values, unit="ns", utc=True), name="timestamp")
