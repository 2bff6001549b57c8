"""Every indicator in ktrdr.training.indicators against TA-Lib, value by value, on the simulated
gateway's seeded bars (AAPL and EURUSD 1h, four years: 7,000 bars with real gaps, DST and volume).

Identical definitions agree to 1e-9 relative from their first value on. Where KTRDR differs on purpose
(documented at the definition), the test asserts the documented relationship: the recursive averages
(EMA, RSI, ATR, MACD) converge to 1e-9 within 30 periods, OBV is TA-Lib's minus the first volume, a
window without money flow or movement is 50 here and 0 there. "Relative" near zero (MACD, ROC, MFI
touch 0) is taken against the series' median magnitude.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from ktrdr.data.calendar import lookup
from ktrdr.ib.sim import generate_bars
from ktrdr.training import indicators as ind

talib = pytest.importorskip("talib")

RTOL = 1e-9
SETTLED = 30  # periods after which a differently seeded recursive average agrees to RTOL


def _bars(symbol: str) -> pd.DataFrame:
    inst = lookup(symbol)
    assert inst is not None
    return generate_bars(inst, "1h", datetime(2020, 1, 1, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC), seed=0)


@pytest.fixture(scope="module")
def aapl() -> pd.DataFrame:
    return _bars("AAPL")


@pytest.fixture(scope="module")
def eurusd() -> pd.DataFrame:
    return _bars("EURUSD")


def _np(df: pd.DataFrame) -> tuple[np.ndarray, ...]:
    return tuple(df[c].to_numpy() for c in ("high", "low", "close", "volume"))


def first_valid(x: pd.Series | np.ndarray) -> int:
    return int(np.argmax(~np.isnan(np.asarray(x, dtype=float))))


def assert_agree(ours: pd.Series | np.ndarray, theirs: np.ndarray, start: int) -> None:
    """Value by value from bar `start`: |ours - theirs| <= RTOL * max(|theirs|, median |theirs|)."""
    a, b = np.asarray(ours, dtype=float)[start:], np.asarray(theirs, dtype=float)[start:]
    assert len(a) > 1000 and not np.isnan(a).any() and not np.isnan(b).any()
    scale = np.maximum(np.abs(b), np.median(np.abs(b)))
    worst = int(np.argmax(np.abs(a - b) / scale))
    assert abs(a[worst] - b[worst]) <= RTOL * scale[worst], f"bar {start + worst}: {a[worst]!r} vs {b[worst]!r}"


# --- identical definitions ----------------------------------------------------------------------------
@pytest.mark.parametrize("period", [5, 20, 50])
def test_sma_is_talib_sma(aapl: pd.DataFrame, period: int) -> None:
    theirs = talib.SMA(aapl["close"].to_numpy(), period)
    ours = ind.sma(aapl["close"], period)
    assert first_valid(ours) == first_valid(theirs) == period - 1
    assert_agree(ours, theirs, period - 1)


@pytest.mark.parametrize("period", [1, 10])
def test_roc_is_talib_roc(aapl: pd.DataFrame, period: int) -> None:
    theirs = talib.ROC(aapl["close"].to_numpy(), period)
    ours = ind.roc(aapl["close"], period)
    assert first_valid(ours) == first_valid(theirs) == period
    assert_agree(ours, theirs, period)


@pytest.mark.parametrize(("period", "k"), [(20, 2.0), (10, 1.5)])
def test_bollinger_bands_are_talib_bbands_with_population_std(aapl: pd.DataFrame, period: int, k: float) -> None:
    close = aapl["close"].to_numpy()
    upper, middle, lower = talib.BBANDS(close, period, k, k, 0)
    ours = ind.bollinger(aapl["close"], period, k)
    for name, theirs in (("upper", upper), ("middle", middle), ("lower", lower)):
        assert first_valid(ours[name]) == first_valid(theirs) == period - 1, name
        assert_agree(ours[name], theirs, period - 1)
    # The band width itself (2k std), not only the bands, whose level hides small std errors.
    assert_agree(ours["upper"] - ours["middle"], upper - middle, period - 1)
    # %b and width are KTRDR's own outputs, derived from the bands.
    assert_agree(ours["pctb"], (close - lower) / (upper - lower), period - 1)
    assert_agree(ours["width"], (upper - lower) / middle, period - 1)


def test_rolling_std_stays_exact_over_a_million_bars() -> None:
    # pandas' running variance drifted to 3.8e-6 relative over 1M 1m bars; TA-Lib and ours do not.
    rng = np.random.default_rng(11)
    close = pd.Series(200.0 * np.exp(np.cumsum(rng.normal(0.0, 2e-4, 1_000_000))))
    theirs = talib.STDDEV(close.to_numpy(), 20, 1.0)
    assert_agree(ind.rolling_std(close, 20), theirs, 19)


def test_mfi_is_talib_mfi_from_bar_period(aapl: pd.DataFrame) -> None:
    h, low, c, v = _np(aapl)
    theirs = talib.MFI(h, low, c, v, 14)
    ours = ind.mfi(aapl, 14)
    assert first_valid(theirs) == 14 and first_valid(ours) == 13  # ours one bar earlier (see mfi)
    assert_agree(ours, theirs, 14)


# --- KTRDR's own definitions: the documented relationship ------------------------------------------------
@pytest.mark.parametrize("period", [9, 20, 50])
def test_ema_converges_to_talib_ema_within_30_periods(aapl: pd.DataFrame, period: int) -> None:
    theirs = talib.EMA(aapl["close"].to_numpy(), period)
    ours = ind.ema(aapl["close"], period)
    assert first_valid(ours) == first_valid(theirs) == period - 1
    assert ours.iloc[period - 1] != pytest.approx(theirs[period - 1], rel=RTOL)  # seeded differently
    assert_agree(ours, theirs, SETTLED * period)


@pytest.mark.parametrize("period", [7, 14])
def test_rsi_converges_to_talib_rsi_within_30_periods(aapl: pd.DataFrame, period: int) -> None:
    theirs = talib.RSI(aapl["close"].to_numpy(), period)
    ours = ind.rsi(aapl["close"], period)
    assert first_valid(ours) == first_valid(theirs) == period
    assert_agree(ours, theirs, SETTLED * period)


def test_atr_converges_to_talib_atr_within_30_periods(aapl: pd.DataFrame) -> None:
    h, low, c, _ = _np(aapl)
    theirs = talib.ATR(h, low, c, 14)
    ours = ind.atr(aapl, 14)
    assert first_valid(theirs) == 14 and first_valid(ours) == 13  # ours counts the first bar's range
    assert_agree(ours, theirs, SETTLED * 14)


def test_macd_converges_to_talib_macd_within_30_slow_periods(aapl: pd.DataFrame) -> None:
    theirs = talib.MACD(aapl["close"].to_numpy(), 12, 26, 9)
    ours = ind.macd(aapl["close"], 12, 26, 9)
    assert [first_valid(s) for s in ours] == [25, 33, 33] and [first_valid(s) for s in theirs] == [33, 33, 33]
    for mine, ref in zip(ours, theirs, strict=True):
        assert_agree(mine, ref, SETTLED * 26)


def test_obv_is_talib_obv_minus_the_first_volume(aapl: pd.DataFrame) -> None:
    _, _, c, v = _np(aapl)
    assert_agree(ind.obv(aapl), talib.OBV(c, v) - v[0], 0)


def test_no_volume_mfi_is_neutral_50_where_talib_says_0(eurusd: pd.DataFrame) -> None:
    h, low, c, v = _np(eurusd)
    assert (v == 0).all()  # IB's MIDPOINT bars carry no volume
    assert (talib.MFI(h, low, c, v, 14)[14:] == 0.0).all()
    assert (ind.mfi(eurusd, 14).iloc[13:] == 50.0).all()
    assert (ind.obv(eurusd) == 0.0).all() and (talib.OBV(c, v) == 0.0).all()


def test_flat_rsi_is_neutral_50_where_talib_says_0() -> None:
    flat = np.full(60, 5.0)
    assert (talib.RSI(flat, 14)[14:] == 0.0).all()
    assert (ind.rsi(pd.Series(flat), 14).iloc[14:] == 50.0).all()


def test_forex_bars_agree_too(eurusd: pd.DataFrame) -> None:
    # Prices near 1 with five decimals: the same definitions hold at another scale.
    h, low, c, _ = _np(eurusd)
    assert_agree(ind.sma(eurusd["close"], 20), talib.SMA(c, 20), 19)
    assert_agree(ind.rsi(eurusd["close"], 14), talib.RSI(c, 14), SETTLED * 14)
    assert_agree(ind.atr(eurusd, 14), talib.ATR(h, low, c, 14), SETTLED * 14)
    assert_agree(ind.bollinger(eurusd["close"])["lower"], talib.BBANDS(c, 20, 2.0, 2.0, 0)[2], 19)


def test_every_registered_indicator_is_compared_here() -> None:
    # A new indicator must come with its TA-Lib comparison (or its documented difference) above.
    compared = {"rsi", "sma", "ema", "macd", "bbands", "bollinger_bands", "atr", "roc", "obv", "mfi"}
    assert set(ind.REGISTRY) == compared
