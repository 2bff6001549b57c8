"""Calendar and timeframe scenarios: which bars exist."""

from __future__ import annotations

import time
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from ktrdr.data.calendar import (
    DEFAULT_UNIVERSE,
    NEW_YORK,
    expected_bar_starts,
    lookup,
    normalize_symbol,
    nyse_holidays,
    trading_sessions,
)
from ktrdr.data.timeframes import TIMEFRAMES, ib_duration_str, parse_timeframe
from ktrdr.errors import ValidationError

AAPL = DEFAULT_UNIVERSE["AAPL"]
EURUSD = DEFAULT_UNIVERSE["EURUSD"]


def test_aapl_daily_bars_over_a_year_skip_weekends_and_holidays() -> None:
    bars = expected_bar_starts(AAPL, "1d", "2024-01-01", "2025-01-01")
    assert len(bars) == 252  # NYSE trading days in 2024
    assert not (bars.day_of_week >= 5).any()
    days = set(bars.date)
    for holiday in nyse_holidays(2024):
        assert holiday not in days
    assert date(2024, 3, 29) not in days  # Good Friday
    assert date(2024, 7, 4) not in days


def test_aapl_intraday_bars_never_fall_on_weekend_or_holiday() -> None:
    bars = expected_bar_starts(AAPL, "5m", "2024-11-25", "2024-12-03").tz_convert(NEW_YORK)
    assert not (bars.day_of_week >= 5).any()
    assert date(2024, 11, 28) not in set(bars.date)  # Thanksgiving
    assert bars.min().time().strftime("%H:%M") == "09:30"
    assert bars.max().time().strftime("%H:%M") == "15:55"


def test_hourly_stock_bars_start_0930_new_york_across_dst() -> None:
    bars = expected_bar_starts(AAPL, "1h", "2024-03-08", "2024-03-12")  # DST starts 2024-03-10
    local = bars.tz_convert(NEW_YORK)
    per_day = local.to_series().groupby(local.date).apply(lambda s: [t.strftime("%H:%M") for t in s])
    for times in per_day:
        assert times == ["09:30", "10:30", "11:30", "12:30", "13:30", "14:30", "15:30"]
    assert bars[0].hour == 14 and bars[-1].hour == 19  # UTC offset moved by an hour


def test_forex_has_sunday_evening_bars_and_no_saturday_bars() -> None:
    bars = expected_bar_starts(EURUSD, "1h", "2024-06-07", "2024-06-11")
    local = bars.tz_convert(NEW_YORK)
    sunday = local[local.day_of_week == 6]
    assert len(sunday) == 7 and sunday[0].hour == 17  # opens 17:00 New York
    assert not (local.day_of_week == 5).any()
    friday = local[local.day_of_week == 4]
    assert friday[-1].hour == 16  # last bar before the 17:00 close


def test_weekly_bars_are_mondays() -> None:
    bars = expected_bar_starts(AAPL, "1w", "2024-01-01", "2024-03-01")
    assert (bars.day_of_week == 0).all() and len(bars) == 9


def test_two_years_of_minute_bars_compute_fast() -> None:
    t0 = time.perf_counter()
    bars = expected_bar_starts(EURUSD, "1m", "2023-01-01", "2025-01-01")
    assert time.perf_counter() - t0 < 1.0
    assert bars.is_monotonic_increasing and bars.is_unique and len(bars) > 700_000


def test_sessions_are_utc_open_close_pairs() -> None:
    sessions = trading_sessions(AAPL, "2024-07-01", "2024-07-06")
    assert len(sessions) == 4  # July 4th closed
    o, c = sessions[0]
    assert o == pd.Timestamp("2024-07-01 13:30", tz="UTC") and c == pd.Timestamp("2024-07-01 20:00", tz="UTC")


def test_holiday_rules_observe_weekends() -> None:
    assert date(2021, 12, 24) in nyse_holidays(2021)  # Christmas on Saturday -> Friday
    assert date(2022, 1, 1) not in nyse_holidays(2022)  # New Year on Saturday: not observed
    assert date(2023, 1, 2) in nyse_holidays(2023)  # New Year on Sunday -> Monday
    assert date(2022, 6, 20) in nyse_holidays(2022)  # Juneteenth on Sunday -> Monday
    assert not any(d.month == 6 and d.day == 19 for d in nyse_holidays(2021))


@pytest.mark.parametrize("raw", ["eur.usd", "EUR.USD", "EURUSD", " eur/usd "])
def test_forex_spellings_normalise_to_one_symbol(raw: str) -> None:
    assert normalize_symbol(raw) == "EURUSD"
    assert lookup(raw) is EURUSD


@pytest.mark.parametrize("raw", ["", "  ", "AA;PL", "AAPL$"])
def test_garbage_symbol_is_rejected(raw: str) -> None:
    with pytest.raises(ValidationError):
        normalize_symbol(raw)


def test_unknown_timeframe_error_names_valid_ones() -> None:
    assert parse_timeframe("1H") is TIMEFRAMES["1h"]
    with pytest.raises(ValidationError) as e:
        parse_timeframe("7m")
    assert "1m" in str(e.value) and "1w" in str(e.value)


def test_ib_duration_rounds_up_to_cover_the_span() -> None:
    assert ib_duration_str(timedelta(hours=1)) == "3600 S"
    assert ib_duration_str(timedelta(days=1)) == "86400 S"
    assert ib_duration_str(timedelta(days=6, hours=1)) == "7 D"
    assert ib_duration_str(timedelta(days=730)) == "2 Y"


@pytest.mark.parametrize("symbol", ["AAPL", "EURUSD"])
@pytest.mark.parametrize("tf", list(TIMEFRAMES))
def test_any_subrange_yields_exactly_the_bars_of_the_whole_range_inside_it(symbol: str, tf: str) -> None:
    inst = DEFAULT_UNIVERSE[symbol]
    whole = expected_bar_starts(inst, tf, "2022-01-01", "2024-01-01")
    rng = np.random.default_rng(7)  # seeded: reproducible, still covers DST changes and odd start times
    for _ in range(15):
        s = pd.Timestamp("2022-02-01", tz="UTC") + pd.Timedelta(minutes=int(rng.integers(0, 60 * 24 * 600)))
        e = s + pd.Timedelta(minutes=int(rng.integers(1, 60 * 24 * 40)))
        assert expected_bar_starts(inst, tf, s, e).equals(whole[(whole >= s) & (whole < e)])
