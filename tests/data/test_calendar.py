"""Calendar and timeframe scenarios: which bars exist."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import date, time, timedelta

import numpy as np
import pandas as pd
import pytest

from ktrdr.data.calendar import (
    DEFAULT_UNIVERSE,
    NEW_YORK,
    expected_bar_starts,
    lookup,
    normalize_symbol,
    nyse_calendar,
    nyse_early_closes,
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


def test_two_years_of_forex_minute_bars_are_whole_weeks() -> None:
    # Deterministic stand-in for the old wall-clock check (speed is measured in bench/calendar.py).
    bars = expected_bar_starts(EURUSD, "1m", "2023-01-01", "2025-01-01")
    assert bars.is_monotonic_increasing and bars.is_unique and len(bars) > 700_000
    steps = np.diff(bars.asi8) // 1_000_000_000
    weekend = steps != 60
    # Friday 17:00 to Sunday 17:00 New York: 48 h, or 47/49 h when a DST change falls inside it.
    assert set(steps[weekend] - 60) <= {47 * 3600, 48 * 3600, 49 * 3600}
    # Every whole week between the first and the last weekend is Sunday 17:00 .. Friday 17:00: 7200 bars.
    week_lengths = np.diff(np.flatnonzero(weekend))
    assert (week_lengths == 7200).all() and len(week_lengths) == 103


def test_forex_week_opens_sunday_17_new_york_on_both_sides_of_dst() -> None:
    winter = expected_bar_starts(EURUSD, "1h", "2024-03-02", "2024-03-05")  # before the 2024-03-10 change
    summer = expected_bar_starts(EURUSD, "1h", "2024-03-09", "2024-03-12")
    assert winter[0] == pd.Timestamp("2024-03-03 22:00", tz="UTC")
    assert summer[0] == pd.Timestamp("2024-03-10 21:00", tz="UTC")
    fri = expected_bar_starts(EURUSD, "1m", "2024-03-08", "2024-03-09")
    assert fri[-1] == pd.Timestamp("2024-03-08 21:59", tz="UTC")  # 16:59 EST: the 17:00 close


@pytest.mark.parametrize("symbol", ["AAPL", "EURUSD"])
@pytest.mark.parametrize("tf", ["1m", "1h", "1d"])
def test_no_bar_starts_on_a_weekend(symbol: str, tf: str) -> None:
    bars = expected_bar_starts(DEFAULT_UNIVERSE[symbol], tf, "2024-01-01", "2024-04-01")
    local = bars if tf == "1d" else bars.tz_convert(NEW_YORK)  # daily bars are stamped at their date
    weekend = local[local.day_of_week >= 5]
    if symbol == "EURUSD" and tf != "1d":  # only the week's opening hours, Sunday from 17:00
        assert len(weekend) > 0 and all(t.day_of_week == 6 and t.hour >= 17 for t in weekend)
    else:
        assert len(weekend) == 0


# Closures no holiday rule can know; exchange-calendars keeps them as its adhoc holidays.
KNOWN_CLOSURES = [date(2001, 9, 11), date(2001, 9, 14), date(2004, 6, 11), date(2007, 1, 2),
                  date(2012, 10, 29), date(2012, 10, 30), date(2018, 12, 5), date(2025, 1, 9)]


def _library_closures(since: int = 1990) -> list[date]:
    """The library's own unscheduled weekday closures from `since` on (not a list of ours)."""
    return sorted({t.date() for t in nyse_calendar().adhoc_holidays if t.year >= since and t.weekday() < 5})


def test_library_knows_the_unscheduled_closures() -> None:
    assert set(KNOWN_CLOSURES) <= set(_library_closures())


@pytest.mark.parametrize("day", _library_closures())
def test_no_bar_is_expected_on_an_unscheduled_closure(day: date) -> None:
    assert day in nyse_holidays(day.year)
    for tf in ("1m", "1h", "1d"):
        bars = expected_bar_starts(AAPL, tf, day - timedelta(days=6), day + timedelta(days=6))
        dates = set(bars.tz_convert(NEW_YORK).date) if tf != "1d" else set(bars.date)
        assert day not in dates and dates, tf  # closed that day, open on others around it
    assert not any(o.tz_convert(NEW_YORK).date() == day for o, _ in trading_sessions(AAPL, day, day + timedelta(1)))


@pytest.mark.parametrize("day", [date(2024, 7, 3), date(2024, 11, 29), date(2024, 12, 24)])
def test_half_days_end_at_1300_new_york(day: date) -> None:
    assert nyse_early_closes(day.year)[day] == time(13, 0)
    local = expected_bar_starts(AAPL, "1h", day, day + timedelta(days=1)).tz_convert(NEW_YORK)
    assert [t.strftime("%H:%M") for t in local] == ["09:30", "10:30", "11:30", "12:30"]
    last_5m = expected_bar_starts(AAPL, "5m", day, day + timedelta(days=1))[-1]
    assert last_5m.tz_convert(NEW_YORK).strftime("%H:%M") == "12:55"
    assert pd.Timestamp(day, tz="UTC") in expected_bar_starts(AAPL, "1d", day, day + timedelta(days=1))
    (_, close), = trading_sessions(AAPL, day, day + timedelta(days=1))
    assert close.tz_convert(NEW_YORK).strftime("%H:%M") == "13:00"


def test_the_library_calendar_is_built_once_per_process() -> None:
    seen: list[object] = []
    threads = [threading.Thread(target=lambda: seen.append(nyse_calendar())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 8 and all(c is seen[0] for c in seen)


def test_fast_paths_do_not_import_the_calendar_library() -> None:
    # exchange-calendars costs ~0.7 s to import: the CLI and symbol handling must not pay for it.
    code = (
        "import sys, ktrdr.cli, ktrdr.data.calendar as c\n"
        "c.normalize_symbol('eur.usd'); c.lookup('AAPL'); c.to_utc('2024-01-01')\n"
        "assert 'exchange_calendars' not in sys.modules, 'imported eagerly'\n"
        "c.expected_bar_starts(c.lookup('AAPL'), '1d', '2024-01-01', '2024-02-01')\n"
        "assert 'exchange_calendars' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_ranges_outside_the_calendar_are_rejected() -> None:
    with pytest.raises(ValidationError, match="outside the NYSE calendar"):
        expected_bar_starts(AAPL, "1d", "1960-01-01", "1961-01-01")


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
