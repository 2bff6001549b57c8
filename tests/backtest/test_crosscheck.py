"""The engine against backtesting.py (kernc/backtesting.py, a dev dependency) on the same signals and
costs, value by value: equity at every bar, every trade's bars, prices and profit, return, drawdown,
win rate, profit factor and exposure.

Where the two differ by definition, the difference is applied to its figures before comparing:
- Timing of costs: backtesting.py (trade_on_close) fills an order placed at bar t's close during bar
  t+1's processing, so its equity at bar t does not yet show that fill's costs; ours does at bar t. At
  an entry bar ours is its equity times the entry factor, at an exit bar times the exit factor.
- Slippage: its `spread` is charged once, at entry (buy at close * (1 + spread), sell at the close);
  our slippage is charged on both fills. With commission 0 and spread = our slippage, every exit of
  ours is theirs times (1 - slippage), compounded. (With both non-zero its entry costs P (1 + s + f)
  a unit, ours P (1 + s)(1 + f): a difference of s*f of the price, not compared.)
- The last bar: its `finalize_trades` closes an open trade at the previous bar's close; we close at
  the last bar's. The strategy below closes on the last bar itself, and one copy of the last bar is
  appended so that close is filled (at the last close, our convention) and shows in its equity.
- Units: it buys whole units; with a capital of 1e12 the rounding is below 1e-9 of any figure.
- Exposure: it counts a trade's entry bar as exposed (entry bar to exit bar inclusive); we count the
  bars a position is held through (entry bar + 1 to exit bar), so its count is ours plus one per trade.
- Profit factor: it divides the sums of the trades' percentage returns; ours (and the usual
  definition) the sums of their profits in cash. Its PnL column gives ours.
- Sharpe and Sortino: it resamples equity to days and annualises with 252 or 365 days; ours is per
  bar, annualised by bars per year. Not compared here (tests/backtest/test_engine.py checks ours).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from ktrdr.backtest import BacktestJob, TrainedModel, run_backtest
from ktrdr.backtest.engine import BUY, SELL, Costs

backtesting = pytest.importorskip("backtesting")  # pyproject's dev extras

CAPITAL, THEIR_CASH = 100_000.0, 1e12


def _theirs(bars: pd.DataFrame, signals: np.ndarray, commission: float, slippage: float) -> pd.Series:
    n = len(signals)
    df = bars.rename(columns=str.capitalize).loc[:, ["Open", "High", "Low", "Close", "Volume"]].copy()
    df["Sig"] = signals
    extra = df.iloc[[-1]].copy()
    extra.index = extra.index + pd.Timedelta("1h")
    df = pd.concat([df, extra]).tz_localize(None)

    class Signals(backtesting.Strategy):
        def init(self) -> None:
            pass

        def next(self) -> None:
            if len(self.data) >= n:
                if len(self.data) == n and self.position:
                    self.position.close()
                return
            s = self.data.Sig[-1]
            if s == BUY and not self.position:
                self.buy()
            elif s == SELL and self.position:
                self.position.close()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bt = backtesting.Backtest(df, Signals, cash=THEIR_CASH, commission=commission, spread=slippage,
                                  trade_on_close=True, finalize_trades=True)
        return bt.run()


@pytest.mark.parametrize(("commission", "slippage_bps"), [(0.0, 0.0), (0.001, 0.0), (0.0, 5.0)])
def test_equity_trades_and_drawdown_match_backtesting_py_value_by_value(bars, files, commission: float,
                                                                         slippage_bps: float) -> None:
    model = TrainedModel.from_files(files)
    ours = run_backtest(BacktestJob("t/AAPL_1h_v1", ["AAPL"], capital=CAPITAL, commission=commission,
                                    slippage_bps=slippage_bps, chunk_bars=250), model, {"AAPL": {"1h": bars}})
    signals, held = ours.signals["AAPL"], ours.positions["AAPL"]
    s = slippage_bps / 1e4
    stats = _theirs(bars, signals, commission, s)
    trades = stats._trades
    assert len(trades) == ours.result["strategy"]["trades"] > 10

    scale = CAPITAL / THEIR_CASH
    their_eq = stats._equity_curve["Equity"].to_numpy() * scale
    costs = Costs(commission, slippage_bps)
    target = np.concatenate((held[1:], [0.0]))
    entry, leave = target > held, target < held
    expected = their_eq[:-1] * np.where(entry, costs.entry_factor, 1.0)
    expected = expected * np.where(leave, (1 - commission), 1.0)  # its exit commission is in the next bar
    expected[-1] = their_eq[-1]  # the appended bar shows the last close's fill
    expected = expected * (1 - s) ** np.cumsum(leave)  # our exit slippage, compounded
    assert np.allclose(ours.curve["equity"].to_numpy(), expected, rtol=1e-9, atol=0)

    mine = [(t.entry_index, t.exit_index, t.entry_price, t.exit_price, t.pnl) for t in ours.runs["AAPL"].trades]
    assert [m[:2] for m in mine] == list(zip(trades["EntryBar"], trades["ExitBar"], strict=True))
    assert np.allclose([m[2] for m in mine], trades["EntryPrice"], rtol=1e-12)
    assert np.allclose([m[3] for m in mine], trades["ExitPrice"] * (1 - s), rtol=1e-12)
    # Profits: theirs in its cash, scaled; our exit slippage costs units * exit price * s more.
    units = trades["Size"].to_numpy() * scale
    their_pnl = trades["PnL"].to_numpy() * scale
    slip_cost = units * trades["ExitPrice"].to_numpy() * s
    growth = np.concatenate(([1.0], np.cumprod(np.full(len(trades) - 1, 1 - s))))  # earlier exits' slippage
    assert np.allclose([m[4] for m in mine], (their_pnl - slip_cost) * growth, rtol=1e-6, atol=1e-6)

    fig = ours.result["strategy"]
    if s == 0:
        assert fig["total_return"] == pytest.approx(stats["Return [%]"] / 100, rel=1e-9)
        assert fig["max_drawdown"] == pytest.approx(stats["Max. Drawdown [%]"] / 100, rel=1e-6)
        assert fig["win_rate"] == pytest.approx(stats["Win Rate [%]"] / 100)
        pnl = trades["PnL"].to_numpy()
        assert fig["profit_factor"] == pytest.approx(pnl[pnl > 0].sum() / -pnl[pnl < 0].sum(), rel=1e-9)
    exposed = np.zeros(len(signals) + 1, dtype=bool)
    for e, x in zip(trades["EntryBar"], trades["ExitBar"], strict=True):
        exposed[e:x + 1] = True
    assert exposed.mean() == pytest.approx(stats["Exposure Time [%]"] / 100)  # its own count, by its rule
    assert int(exposed.sum()) == round(fig["exposure"] * len(signals)) + len(trades)
