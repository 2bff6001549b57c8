"""The feature matrix: bars -> indicators -> fuzzy memberships -> lagged copies -> one row per base bar.

Per timeframe, memberships are computed on that timeframe's own bars and lagged by whole bars of
that timeframe (`{col}_lag1` is the previous bar's value). Higher timeframes are then aligned onto
the base timeframe so that a higher-timeframe bar is visible only once it has CLOSED: its timestamp
(the bar's start) is shifted by the bar's duration before an as-of merge, so a 4h bar starting 09:30
is first seen by the base bar starting at 13:30. With several timeframes columns are prefixed by the
timeframe (`4h_rsi_oversold`). Warm-up rows (any NaN) are dropped. Scaling is a z-score fitted on the
training split only and stored with the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ktrdr.data.timeframes import TIMEFRAMES
from ktrdr.errors import DataError
from ktrdr.training.fuzzy import fuzzify
from ktrdr.training.indicators import compute_indicators
from ktrdr.training.labels import NO_LABEL, zigzag_labels
from ktrdr.training.strategy import Strategy

REQUIRED_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume")


def timeframe_features(bars: pd.DataFrame, strategy: Strategy) -> pd.DataFrame:
    """Memberships and their lags for one timeframe's bars (index = bar start, NaN during warm-up)."""
    indicators = compute_indicators(bars, strategy.indicators)
    fuzzy = fuzzify(indicators, strategy.fuzzy_sets)
    lookback = strategy.model.features.lookback_periods
    if lookback <= 0:
        return fuzzy
    # shift(k) with k > 0 only reaches into the past.
    lagged = [fuzzy.shift(k).add_suffix(f"_lag{k}") for k in range(1, lookback + 1)]
    return pd.concat([fuzzy, *lagged], axis=1)


def align_to_base(base_index: pd.DatetimeIndex, features: pd.DataFrame, timeframe: str) -> pd.DataFrame:
    """Higher-timeframe rows onto base bars, each visible only from its bar's close on."""
    duration = pd.Timedelta(TIMEFRAMES[timeframe].delta)
    right = features.copy()
    right.index = (right.index + duration).as_unit("ns")
    right.index.name = "_visible_from"
    right = right.reset_index()
    left = pd.DataFrame({"_ts": base_index.as_unit("ns")})
    merged = pd.merge_asof(left, right, left_on="_ts", right_on="_visible_from", direction="backward")
    merged.index = base_index
    return merged.drop(columns=["_ts", "_visible_from"])


def symbol_features(bars_by_tf: Mapping[str, pd.DataFrame], strategy: Strategy) -> pd.DataFrame:
    """All timeframes' features on the base timeframe's index (warm-up rows still present, as NaN)."""
    td = strategy.training_data
    base = td.base_timeframe
    base_bars = bars_by_tf[base]
    multi = len(td.timeframes) > 1
    parts: list[pd.DataFrame] = []
    for tf in td.timeframes:
        feats = timeframe_features(bars_by_tf[tf], strategy)
        if tf != base:
            feats = align_to_base(base_bars.index, feats, tf)
        parts.append(feats.add_prefix(f"{tf}_") if multi else feats)
    return pd.concat(parts, axis=1)


def check_bars(bars: pd.DataFrame, symbol: str, timeframe: str) -> pd.DataFrame:
    """Sorted, de-duplicated float OHLCV on a UTC DatetimeIndex, or a DataError saying what is wrong."""
    if not isinstance(bars.index, pd.DatetimeIndex):
        raise DataError(
            f"{symbol} {timeframe}: bars must have a DatetimeIndex, got {type(bars.index).__name__}"
        )
    missing = [c for c in REQUIRED_COLUMNS if c not in bars.columns]
    if missing:
        raise DataError(f"{symbol} {timeframe}: bars lack columns {missing}")
    out = bars.loc[:, list(REQUIRED_COLUMNS)].astype("float64")
    if out.index.tz is None:
        out.index = out.index.tz_localize("UTC")
    out = out[~out.index.duplicated(keep="last")].sort_index()
    return out


@dataclass
class SymbolDataset:
    """One symbol's usable rows: features and labels on the same (base-timeframe) index."""

    symbol: str
    features: pd.DataFrame
    labels: np.ndarray


def build_symbol_dataset(
    symbol: str, bars_by_tf: Mapping[str, pd.DataFrame], strategy: Strategy
) -> SymbolDataset:
    feats = symbol_features(bars_by_tf, strategy)
    lab_cfg = strategy.training.labels
    close = bars_by_tf[strategy.training_data.base_timeframe]["close"]
    labels = zigzag_labels(close, lab_cfg.zigzag_threshold, lab_cfg.label_lookahead)
    keep = feats.notna().all(axis=1).to_numpy() & (labels != NO_LABEL)
    return SymbolDataset(symbol, feats.loc[keep], labels[keep])


@dataclass
class Scaler:
    """z-score per column; fitted on training rows only so validation/test statistics never leak."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Scaler:
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)  # constant columns stay constant instead of dividing by 0
        return cls(mean.astype("float64"), std.astype("float64"))

    @classmethod
    def identity(cls, n: int) -> Scaler:
        return cls(np.zeros(n), np.ones(n))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype("float32")

    def to_dict(self) -> dict[str, Any]:
        return {"type": "standard", "mean": self.mean.tolist(), "std": self.std.tolist()}
