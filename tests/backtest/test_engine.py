"""Hand-checked tiny backtests: known price paths, one trade, costs, drawdown dates, chunking."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ktrdr.backtest.engine import (
    BUY,
    HOLD,
    SELL,
    Costs,
    buy_and_hold,
    buy_and_hold_signals,
    run_series,
    target_positions,
)
from tests.backtest.conftest import frame

FREE = Costs(commission=0.0, slippage_bps=0.0)


def test_one_winning_trade_without_costs_earns_the_bars_after_its_signal() -> None:
    bars = frame([100, 110, 121, 110])
    bt, fig = run_series(bars.index, bars["close"].to_numpy(), np.array([BUY, HOLD, SELL, HOLD]), 100_000, FREE)
    # BUY at bar 0's close: bar 0 is flat, bars 1 and 2 are held, SELL at bar 2's close, bar 3 flat.
    assert bt.equity_curve() == pytest.approx([100_000, 110_000, 121_000, 121_000])
    assert list(bt.held()) == [0, 1, 1, 0]
    assert fig["total_return"] == pytest.approx(0.21)
    assert fig["trades"] == 1 and fig["win_rate"] == 1.0 and fig["profit_factor"] is None  # no loss
    assert fig["exposure"] == pytest.approx(0.5)
    assert fig["max_drawdown"] == 0.0
    (t,) = bt.trades
    assert (t.entry_index, t.exit_index, t.entry_price, t.exit_price) == (0, 2, 100, 121)
    assert t.pnl == pytest.approx(21_000)


def test_commission_and_slippage_are_charged_on_both_fills() -> None:
    bars = frame([100, 110, 121, 110])
    costs = Costs(commission=0.001, slippage_bps=10)
    bt, fig = run_series(bars.index, bars["close"].to_numpy(), np.array([BUY, HOLD, SELL, HOLD]), 100_000, costs)
    # Unit by unit: buy at 100 * 1.001 plus 0.1% commission, sell at 121 * 0.999 less 0.1%.
    units = 100_000 / (100 * 1.001 * 1.001)
    cash = units * 121 * 0.999 * 0.999
    assert bt.equity_curve()[-1] == pytest.approx(cash, rel=1e-12)
    assert bt.equity_curve()[0] == pytest.approx(units * 100, rel=1e-12)  # marked at the raw close
    (t,) = bt.trades
    assert t.entry_price == pytest.approx(100.1) and t.exit_price == pytest.approx(120.879)
    assert t.pnl == pytest.approx(cash - 100_000, rel=1e-9)
    assert fig["total_return"] == pytest.approx(cash / 100_000 - 1, rel=1e-12)


def test_drawdown_names_its_peak_trough_and_recovery_dates() -> None:
    bars = frame([100, 120, 90, 130])
    bt, fig = run_series(bars.index, bars["close"].to_numpy(), np.array([BUY, HOLD, HOLD, HOLD]), 1_000, FREE)
    assert bt.equity_curve() == pytest.approx([1_000, 1_200, 900, 1_300])
    assert fig["max_drawdown"] == pytest.approx(-0.25)
    assert (fig["max_drawdown_peak"], fig["max_drawdown_trough"], fig["max_drawdown_recovered"]) == (
        bars.index[1].isoformat(), bars.index[2].isoformat(), bars.index[3].isoformat())
    assert fig["trades"] == 1  # closed at the last bar's close


def test_a_losing_and_a_winning_trade_give_win_rate_and_profit_factor() -> None:
    bars = frame([100, 90, 90, 99, 99])
    signals = np.array([BUY, SELL, BUY, SELL, HOLD])
    bt, fig = run_series(bars.index, bars["close"].to_numpy(), signals, 1_000, FREE)
    assert [round(t.pnl, 9) for t in bt.trades] == [-100.0, 90.0]
    assert fig["win_rate"] == 0.5 and fig["profit_factor"] == pytest.approx(0.9)


def test_sell_when_flat_and_buy_when_long_change_nothing() -> None:
    assert list(target_positions(np.array([SELL, BUY, BUY, HOLD, SELL, SELL]), 0.0)) == [0, 1, 1, 1, 0, 0]
    assert list(target_positions(np.array([HOLD, HOLD]), 1.0)) == [1, 1]


@pytest.mark.parametrize("chunk", [1, 7, 100])
def test_a_run_in_chunks_equals_the_run_in_one_piece(chunk: int) -> None:
    rng = np.random.default_rng(5)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 500)))
    bars = frame(list(close))
    signals = rng.integers(0, 3, 500)
    costs = Costs(0.0005, 2)
    whole, f1 = run_series(bars.index, close, signals, 10_000, costs)
    parts, f2 = run_series(bars.index, close, signals, 10_000, costs, chunk=chunk)
    # Equal up to the order of the float products (each chunk restarts its cumulative product).
    assert np.allclose(whole.equity_curve(), parts.equity_curve(), rtol=1e-12, atol=0)
    assert [(t.entry_index, t.exit_index) for t in whole.trades] == [
        (t.entry_index, t.exit_index) for t in parts.trades]
    assert f1.keys() == f2.keys()
    assert all(f1[k] == (f2[k] if isinstance(f2[k], str | None) else pytest.approx(f2[k], rel=1e-9)) for k in f1)


@pytest.mark.parametrize("n", [1, 2, 3, 500])
def test_buy_and_hold_equals_the_general_run_of_its_signals_float_for_float(n: int) -> None:
    rng = np.random.default_rng(n)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    index = pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC")
    costs = Costs(0.001, 3.0)
    general, want = run_series(index, close, buy_and_hold_signals(n), 10_000, costs)
    equity, got = buy_and_hold(index, close, 10_000, costs)
    assert list(equity) == list(general.equity_curve())  # the same floats, not merely close
    assert got == want
