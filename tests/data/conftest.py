"""Shared helpers for the data-domain tests: synthetic bars on the real trading calendar."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ktrdr.data.calendar import DEFAULT_UNIVERSE, expected_bar_starts


def make_bars(index: pd.DatetimeIndex, base: float = 100.0) -> pd.DataFrame:
    """Consistent OHLCV bars (high >= max(open, close), low <= min) on `index`."""
    n = len(index)
    close = base + np.arange(n, dtype="float64") * 0.01
    return pd.DataFrame(
        {"open": close, "high": close + 1, "low": close - 1, "close": close, "volume": np.full(n, 10.0)},
        index=pd.DatetimeIndex(index, name="timestamp"),
    )


def calendar_bars(symbol: str, tf: str, start: str, end: str) -> pd.DataFrame:
    return make_bars(expected_bar_starts(DEFAULT_UNIVERSE[symbol], tf, start, end))
