"""Instruments and trading calendars: which bars exist.

`expected_bar_starts` is THE definition of the bars an instrument has at a timeframe in a range. The
simulated IB gateway generates exactly these bars and gap analysis compares stored bars against
exactly these, so weekends, closed hours, holidays and unscheduled closures are never reported as gaps
(a closure reported as a gap would be asked of IB again on every load, for bars that never exist).

Conventions (all timestamps are UTC, the bar's START):
- Stocks trade the NYSE sessions of the exchange-calendars library's XNYS calendar (regular hours,
  as IB's useRTH bars): 09:30-16:00 America/New_York, except its holidays, its unscheduled closures and
  its early closes (half days end at 13:00). Intraday bars start at session open + k*timeframe while
  before the close (1h: 09:30, 10:30 ... 15:30 New York time, whatever the DST offset; 12:30 is the
  last one on a half day).
- Forex (IDEALPRO) trades 24x5: Sunday 17:00 New York to Friday 17:00 New York; holidays are not
  modelled. That week is built here from the rule: exchange-calendars' "24/5" calendar has sessions of
  UTC days (Monday 00:00 to Friday 24:00 UTC), not the New York 17:00 roll, and pandas-market-calendars'
  FX calendar has a Saturday 17:00 to Sunday 17:00 session. Intraday bars are aligned to UTC multiples
  of the timeframe; a bar exists when its interval overlaps the open hours.
- 1d: one bar per session, timestamped at the session's DATE 00:00 UTC (for forex the trading day
  that opens Sunday 17:00 New York is Monday's bar, so Monday-Friday dates).
- 1w: one bar per week that has at least one session, timestamped at that week's Monday 00:00 UTC.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from functools import lru_cache
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from ktrdr.data.symbols import normalize_symbol
from ktrdr.data.timeframes import Timeframe, parse_timeframe
from ktrdr.errors import ValidationError

if TYPE_CHECKING:
    from exchange_calendars import ExchangeCalendar

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

def lookup(symbol: str, universe: dict[str, Instrument] | None = None) -> Instrument | None:
    """The instrument for `symbol` (any spelling normalize_symbol accepts), or None if unknown."""
    return (DEFAULT_UNIVERSE if universe is None else universe).get(normalize_symbol(symbol))


# --- NYSE sessions (exchange-calendars) ---------------------------------------------------------------
# The library's XNYS calendar is the source of truth for stock sessions: rule-based holidays, the
# exchange's unscheduled closures (2001-09-11..14, 2012-10-29/30, 2018-12-05, 2025-01-09 ...) that no
# rule can know, and early closes (13:00 New York half days; 14:00 before 1993). Building it takes a
# few hundred milliseconds and importing the package ~0.7 s, so it is imported lazily here (the CLI's
# fast paths never pay for it) and built once per process, over one fixed span, into plain arrays.
CALENDAR_START = pd.Timestamp("1970-01-01", tz="UTC")
CALENDAR_END = pd.Timestamp("2100-01-01", tz="UTC")  # exclusive
_NYSE_LOCK = threading.Lock()
_nyse: tuple[ExchangeCalendar, _Sessions] | None = None


@dataclass(frozen=True)
class _Sessions:
    dates: np.ndarray  # datetime64[D], the session's New York date, sorted
    opens: np.ndarray  # int64 ns UTC
    closes: np.ndarray  # int64 ns UTC


def _load_nyse() -> tuple[ExchangeCalendar, _Sessions]:
    global _nyse
    if _nyse is None:
        with _NYSE_LOCK:  # several loads in one process (threads) must not each build it
            if _nyse is None:
                from exchange_calendars.exchange_calendar_xnys import XNYSExchangeCalendar

                # exchange-calendars reads Series.values, which pandas 3 deprecates: not ours to fix.
                category = getattr(pd.errors, "Pandas4Warning", FutureWarning)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", category)
                    last_day = (CALENDAR_END - pd.Timedelta(days=1)).tz_localize(None)
                    cal = XNYSExchangeCalendar(start=CALENDAR_START.tz_localize(None), end=last_day)
                    arrays = (
                        cal.sessions.to_numpy().astype("datetime64[D]"),
                        cal.opens.dt.tz_convert(None).to_numpy().astype("datetime64[ns]").astype(np.int64),
                        cal.closes.dt.tz_convert(None).to_numpy().astype("datetime64[ns]").astype(np.int64),
                    )
                for a in arrays:
                    a.setflags(write=False)  # shared by every caller in the process: slices are views
                _nyse = (cal, _Sessions(*arrays))
    return _nyse


def nyse_calendar() -> ExchangeCalendar:
    """The process-wide exchange_calendars XNYS calendar (1970 to 2099), built on first use."""
    return _load_nyse()[0]


def _nyse_sessions(start: pd.Timestamp, end: pd.Timestamp) -> tuple[np.ndarray, ...]:
    """(dates, opens, closes) of the NYSE sessions whose New York date is within a day of [start, end)."""
    if start < CALENDAR_START or end > CALENDAR_END:
        raise ValidationError(
            f"{start.date()}..{end.date()} is outside the NYSE calendar",
            hint=f"stock sessions are known from {CALENDAR_START.date()} to {CALENDAR_END.date()}",
        )
    s = _load_nyse()[1]
    days = _local_days(start, end, NEW_YORK)
    first, last = days[[0, -1]].values.astype("datetime64[D]")
    lo, hi = int(np.searchsorted(s.dates, first, "left")), int(np.searchsorted(s.dates, last, "right"))
    return s.dates[lo:hi], s.opens[lo:hi], s.closes[lo:hi]


@lru_cache(maxsize=256)
def nyse_holidays(year: int) -> frozenset[date]:
    """NYSE full-day closures on weekdays of `year`: holidays and unscheduled closures alike."""
    dates = _load_nyse()[1].dates
    weekdays = pd.bdate_range(date(year, 1, 1), date(year, 12, 31)).values.astype("datetime64[D]")
    return frozenset(pd.DatetimeIndex(np.setdiff1d(weekdays, dates)).date)


@lru_cache(maxsize=256)
def nyse_early_closes(year: int) -> Mapping[date, time]:
    """NYSE sessions of `year` that close before 16:00 New York: {date: local close time} (read-only:
    the mapping is cached)."""
    s = _load_nyse()[1]
    sel = (s.dates >= np.datetime64(f"{year}-01-01", "D")) & (s.dates < np.datetime64(f"{year + 1}-01-01", "D"))
    closes = pd.to_datetime(s.closes[sel], unit="ns", utc=True).tz_convert(NEW_YORK)
    days = pd.DatetimeIndex(s.dates[sel]).date
    return MappingProxyType({d: c.time() for d, c in zip(days, closes, strict=True) if c.time() < time(16)})


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
    if inst.kind == "stock":
        return _nyse_sessions(start, end)
    # One continuous session per week: Sunday 17:00 to Friday 17:00 New York.
    days = _local_days(start, end, inst.tz)
    first = days[0] - pd.Timedelta(days=7)
    sundays = pd.date_range(first, days[-1] + pd.Timedelta(days=7), freq="W-SUN")
    opens = (sundays + pd.Timedelta(hours=17)).tz_localize(inst.tz).tz_convert("UTC")
    closes = (sundays + pd.Timedelta(days=5, hours=17)).tz_localize(inst.tz).tz_convert("UTC")
    # pandas 3 may pick second resolution; everything here computes in nanoseconds.
    return sundays.values.astype("datetime64[D]"), opens.as_unit("ns").asi8, closes.as_unit("ns").asi8


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
        dates = _daily_dates(inst, s - week, e + week) if tf == Timeframe.W1 else _daily_dates(inst, s, e)
        if tf == Timeframe.W1:
            # Monday of each week with a session (datetime64 day 0 is a Thursday, hence the +3).
            dates = np.unique(dates - ((dates.astype(np.int64) + 3) % 7).astype("timedelta64[D]"))
        values = dates.astype("datetime64[ns]").astype(np.int64)
    values = values[(values >= s.value) & (values < e.value)]
    values.sort()
    return pd.DatetimeIndex(pd.to_datetime(values, unit="ns", utc=True), name="timestamp")
