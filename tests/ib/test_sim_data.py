"""generate_bars without a server: valid OHLCV, exactly the calendar's bars, stable across ranges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd

from ktrdr.data.calendar import DEFAULT_UNIVERSE, NEW_YORK, expected_bar_starts, nyse_calendar
from ktrdr.ib.sim import generate_bars
from ktrdr.ib.sim.data import trading_hours


def test_bars_are_exactly_expected_starts_and_valid() -> None:
    inst = DEFAULT_UNIVERSE["AAPL"]
    start, end = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC)
    df = generate_bars(inst, "1h", start, end, seed=0)
    assert df.index.equals(expected_bar_starts(inst, "1h", start, end))
    assert (df["high"] >= df[["open", "close"]].max(axis=1)).all()
    assert (df["low"] <= df[["open", "close"]].min(axis=1)).all()
    assert (df["volume"] >= 0).all()
    assert (df.index.day_of_week < 5).all()


def test_same_bar_identical_whatever_the_range() -> None:
    inst = DEFAULT_UNIVERSE["EURUSD"]
    a = generate_bars(inst, "15m", datetime(2024, 3, 4, tzinfo=UTC), datetime(2024, 3, 8, tzinfo=UTC))
    b = generate_bars(inst, "15m", datetime(2024, 3, 6, tzinfo=UTC), datetime(2024, 3, 12, tzinfo=UTC))
    shared = a.index.intersection(b.index)
    assert len(shared) > 100
    pd.testing.assert_frame_equal(a.loc[shared], b.loc[shared])


def test_seed_changes_prices() -> None:
    inst = DEFAULT_UNIVERSE["MSFT"]
    start, end = datetime(2024, 1, 2, tzinfo=UTC), datetime(2024, 1, 5, tzinfo=UTC)
    assert not generate_bars(inst, "1h", start, end, seed=0).equals(generate_bars(inst, "1h", start, end, seed=1))


def test_sim_has_no_bars_on_an_unscheduled_closure_and_says_closed() -> None:
    # 2018-12-05 (a national day of mourning): the library's calendar, so the sim agrees with gap analysis.
    inst = DEFAULT_UNIVERSE["AAPL"]
    closure = next(t.date() for t in nyse_calendar().adhoc_holidays if t.year == 2018)
    start = datetime(closure.year, closure.month, closure.day, tzinfo=UTC) - timedelta(days=2)
    df = generate_bars(inst, "1h", start, start + timedelta(days=5))
    assert closure not in set(df.index.tz_convert(NEW_YORK).date) and len(df) > 0
    hours = trading_hours(inst, start, days=5)
    assert f"{closure:%Y%m%d}:CLOSED" in hours.split(";")


def test_sim_half_day_ends_at_1300_new_york() -> None:
    inst = DEFAULT_UNIVERSE["AAPL"]
    day = datetime(2024, 11, 29, tzinfo=UTC)  # the day after Thanksgiving
    df = generate_bars(inst, "30m", day, day + timedelta(days=1))
    assert df.index[-1].tz_convert(NEW_YORK).strftime("%H:%M") == "12:30"
    noon = day + timedelta(hours=12)  # trading_hours starts at the New York date of `now`
    assert trading_hours(inst, noon, days=1) == "20241129:0930-20241129:1300"
