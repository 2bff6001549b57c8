"""Indicators, fuzzy memberships, labels, splits and the feature matrix — above all, no look-ahead."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ktrdr.training.features import align_to_base, build_symbol_dataset, check_bars, symbol_features
from ktrdr.training.fuzzy import fuzzify, gaussian, trapezoidal, triangular
from ktrdr.training.indicators import REGISTRY, compute_indicator, rsi, sma
from ktrdr.training.labels import BUY, HOLD, NO_LABEL, SELL, split_chronological, zigzag_labels
from ktrdr.training.strategy import MembershipConfig, Strategy, parse_strategy
from tests.training.conftest import SMALL_STRATEGY, make_bars, resample_bars

MULTI_TF = SMALL_STRATEGY.replace(
    "timeframes: {mode: single_timeframe, list: [1h], base_timeframe: 1h}",
    "timeframes: {mode: multi_timeframe, list: [1h, 4h], base_timeframe: 1h}",
)


def test_rsi_stays_in_bounds_and_is_100_on_rising_prices() -> None:
    bars = make_bars(500, seed=3)
    values = rsi(bars["close"], 14).dropna()
    assert ((values >= 0) & (values <= 100)).all()
    rising = pd.Series(np.arange(1.0, 60.0))
    assert rsi(rising, 14).dropna().eq(100.0).all()
    assert rsi(pd.Series(np.full(40, 5.0)), 14).dropna().eq(50.0).all()


def test_sma_matches_hand_computed_mean() -> None:
    s = pd.Series([1.0, 2.0, 3.0, 4.0, 5.0])
    assert sma(s, 3).tolist()[2:] == [2.0, 3.0, 4.0]
    assert sma(s, 3).isna().sum() == 2


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_indicator_is_causal(name: str) -> None:
    bars = make_bars(400, seed=4)
    changed = bars.copy()
    changed.iloc[300:] *= 1.7  # rewrite the future
    a = compute_indicator(bars, name, name, {}).iloc[:300]
    b = compute_indicator(changed, name, name, {}).iloc[:300]
    pd.testing.assert_frame_equal(a, b)
    assert a.notna().any().all()


def test_indicator_parameter_validation_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="period"):
        REGISTRY["rsi"].validate({"period": 0})
    with pytest.raises(ValueError, match="fast_period"):
        REGISTRY["macd"].validate({"fast_period": 30, "slow_period": 26})
    assert REGISTRY["bbands"].validate({"std_dev": 2.5})["multiplier"] == 2.5


def test_membership_functions_have_expected_shape() -> None:
    x = np.array([0.0, 10.0, 20.0, 27.5, 35.0, 50.0, np.nan])
    tri = triangular(x, 0, 20, 35)
    assert tri[:6].tolist() == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0, 0.0])
    assert np.isnan(tri[6])
    trap = trapezoidal(np.array([-1.0, 0.5, 2.0, 3.5, 5.0]), 0, 1, 3, 4)
    assert trap.tolist() == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])
    g = gaussian(np.array([0.0, 1.0]), 0.0, 1.0)
    assert g.tolist() == pytest.approx([1.0, np.exp(-0.5)])
    shoulder = triangular(np.array([-5.0, 0.0, 5.0]), 0, 0, 10)
    assert shoulder.tolist() == pytest.approx([0.0, 1.0, 0.5])


def test_fuzzify_names_columns_indicator_set() -> None:
    df = pd.DataFrame({"rsi": [10.0, 50.0, 90.0]})
    sets = {
        "rsi": {
            "low": MembershipConfig("triangular", [0, 10, 40]),
            "high": MembershipConfig("gaussian", [90, 5]),
        }
    }
    out = fuzzify(df, sets)
    assert list(out.columns) == ["rsi_low", "rsi_high"]
    assert out.to_numpy().min() >= 0 and out.to_numpy().max() <= 1


def test_zigzag_labels_encode_first_threshold_crossing() -> None:
    close = np.array([100.0, 100.5, 103.0, 99.0, 96.0, 96.5, 96.0, 96.2])
    labels = zigzag_labels(close, threshold=0.02, lookahead=2)
    # t0: +3% at t2 -> BUY; t1: +2.5% -> BUY; t2: -3.9% -> SELL; t3: -3% -> SELL; t4/t5: flat -> HOLD
    assert labels.tolist() == [BUY, BUY, SELL, SELL, HOLD, HOLD, NO_LABEL, NO_LABEL]


def test_split_chronological_keeps_order_and_purges_gap() -> None:
    tr, va, te = split_chronological(100, (0.7, 0.15, 0.15))
    assert (tr, va, te) == (slice(0, 70), slice(70, 85), slice(85, 100))
    tr, va, te = split_chronological(100, (0.7, 0.15, 0.15), gap=5)
    assert (tr, va, te) == (slice(0, 65), slice(70, 80), slice(85, 100))
    with pytest.raises(ValueError):
        split_chronological(10, (0.5, 0.5, 0.5))


def test_higher_timeframe_bar_visible_only_after_it_closes() -> None:
    base_index = pd.date_range("2024-01-02 09:30", periods=10, freq="1h", tz="UTC")
    htf = pd.DataFrame(
        {"x": [1.0, 2.0]}, index=pd.DatetimeIndex(["2024-01-02 09:30", "2024-01-02 13:30"], tz="UTC")
    )
    aligned = align_to_base(base_index, htf, "4h")
    by_time = dict(zip(base_index.strftime("%H:%M"), aligned["x"], strict=True))
    assert np.isnan(by_time["09:30"]) and np.isnan(by_time["12:30"])  # the 09:30 bar is still open
    assert by_time["13:30"] == 1.0 and by_time["16:30"] == 1.0
    assert by_time["17:30"] == 2.0


def _features_and_labels(strategy: Strategy, base: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    bars = {"1h": check_bars(base, "AAPL", "1h"), "4h": check_bars(resample_bars(base, "4h"), "AAPL", "4h")}
    ds = build_symbol_dataset("AAPL", bars, strategy)
    return symbol_features(bars, strategy), pd.Series(ds.labels, index=ds.features.index)


@pytest.mark.parametrize("text", [SMALL_STRATEGY, MULTI_TF], ids=["single_tf", "multi_tf"])
def test_changing_bars_after_t_changes_no_earlier_feature_or_label(text: str) -> None:
    strategy = parse_strategy(text)
    bars = make_bars(800, seed=5)
    cut = bars.index[600]
    changed = bars.copy()
    rng = np.random.default_rng(9)
    changed.loc[changed.index >= cut, ["open", "high", "low", "close"]] *= rng.uniform(0.8, 1.2, (200, 1))
    changed.loc[changed.index >= cut, "volume"] *= 3

    feats_a, labels_a = _features_and_labels(strategy, bars)
    feats_b, labels_b = _features_and_labels(strategy, changed)
    before = feats_a.index < cut
    pd.testing.assert_frame_equal(feats_a.loc[before], feats_b.loc[before])
    if "4h" in text:
        assert any(c.startswith("4h_") for c in feats_a.columns)
        assert feats_a.loc[before, [c for c in feats_a.columns if c.startswith("4h_")]].notna().any().all()
    # Labels look `lookahead` bars ahead by definition, so only those before T - lookahead are fixed.
    lookahead = strategy.training.labels.label_lookahead
    safe = labels_a.index < cut - pd.Timedelta(hours=lookahead)
    common = labels_a.index[safe].intersection(labels_b.index)
    assert len(common) > 400
    pd.testing.assert_series_equal(labels_a.loc[common], labels_b.loc[common])
    # and the changed future really did change later features (the test would catch leakage)
    assert not feats_a.loc[~before].equals(feats_b.loc[~before])


def test_multi_timeframe_columns_prefixed_and_lagged() -> None:
    strategy = parse_strategy(MULTI_TF)
    feats, _ = _features_and_labels(strategy, make_bars(400, seed=6))
    assert "1h_rsi_oversold" in feats.columns and "4h_rsi_oversold_lag2" in feats.columns
    assert all(c.startswith(("1h_", "4h_")) for c in feats.columns)
