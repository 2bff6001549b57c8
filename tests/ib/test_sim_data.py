"""generate_bars without a server: valid OHLCV, exactly the calendar's bars, stable across ranges."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd

from ktrdr.data.calendar import DEFAULT_UNIVERSE, expected_bar_starts
from ktrdr.ib.sim import generate_bars


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
