"""Signals -> positions -> equity, and the figures of a backtest: pure numpy, no model and no NATS.

Conventions (the cross-check in tests/backtest/test_crosscheck.py holds them against backtesting.py):
- Signals are 0 BUY, 1 HOLD, 2 SELL (the classifier's order, ktrdr.training.labels). A signal is
  decided on bar t's CLOSE, from bars up to t only, and is filled at that same close: the position it
  sets is held from bar t+1 on, so bar t+1's return (close[t] -> close[t+1]) is the first it earns.
- Long only, all in: BUY goes long with the whole equity (or stays long), SELL goes flat (or stays
  flat), HOLD keeps the position. A position still open after the last bar is closed at its close
  (costs charged), so the final equity is cash.
- Costs: a buy fills at close * (1 + slippage), a sell at close * (1 - slippage) (slippage =
  slippage_bps / 10,000), and commission is `commission` times the traded notional at the fill price.
  With all the equity traded, entering multiplies equity by 1 / ((1 + slippage) * (1 + commission))
  and leaving by (1 - slippage) * (1 - commission).
- Equity is marked at every bar's close. Bar returns are equity[t] / equity[t-1] - 1, the first bar's
  against the starting capital.

The work goes in chunks of bars (`Backtest.feed`): each chunk is vectorised, and what a chunk needs of
the previous ones (the position, the equity, the peak, the open trade) is carried in the Backtest, so
progress and cancellation can happen between chunks and a run in chunks equals a run in one piece.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

BUY, HOLD, SELL = 0, 1, 2
SECONDS_PER_YEAR = 365.25 * 86400.0


@dataclass(frozen=True)
class Costs:
    commission: float = 0.001  # fraction of traded notional
    slippage_bps: float = 1.0  # basis points of the fill price, against the trader

    @property
    def entry_factor(self) -> float:
        return 1.0 / ((1.0 + self.slippage_bps / 1e4) * (1.0 + self.commission))

    @property
    def exit_factor(self) -> float:
        return (1.0 - self.slippage_bps / 1e4) * (1.0 - self.commission)


def target_positions(signals: np.ndarray, carry: float) -> np.ndarray:
    """Position decided at each bar's close (1 long, 0 flat): BUY -> 1, SELL -> 0, HOLD -> the one
    before (`carry` before the first). Vectorised forward fill."""
    s = np.asarray(signals)
    decided = (s == BUY) | (s == SELL)
    # For each bar the latest decided bar up to it (-1: none yet), by a running maximum of positions.
    last = np.where(decided, np.arange(len(s)), -1)
    np.maximum.accumulate(last, out=last)
    return np.where(last >= 0, (s[last] == BUY).astype("float64"), float(carry))


@dataclass
class Trade:
    entry_index: int  # the bar at whose close it was entered
    exit_index: int  # the bar at whose close it was left
    entry_price: float  # fill prices, slippage included
    exit_price: float
    pnl: float  # cash gained, both commissions charged
    ret: float  # pnl / the cash the entry took


@dataclass
class Backtest:
    """One series' run, fed chunk by chunk; `finish` closes an open position and computes the figures."""

    capital: float
    costs: Costs
    position: float = 0.0  # the target decided at the last bar fed (held from the next bar)
    equity: float = field(init=False)
    peak: float = field(init=False)
    max_dd: float = 0.0
    last_close: float = math.nan
    bars: int = 0
    open_entry: tuple[int, float, float] | None = None  # (bar, fill price, cash it took)
    trade_count: int = 0
    # Closed trades as columns, a block per chunk: entry bar, exit bar, entry price, exit price, pnl, cash.
    _trade_blocks: list[np.ndarray] = field(default_factory=list)
    _equity: list[np.ndarray] = field(default_factory=list)
    _held: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.equity = self.peak = float(self.capital)

    def feed(self, close: np.ndarray, signals: np.ndarray, *, last: bool = False) -> None:
        """Bars [bars, bars + len(close)) with their signals; `last` closes the position at the end."""
        close = np.asarray(close, dtype="float64")
        n = len(close)
        if n == 0:
            return
        target = target_positions(signals, self.position)
        if last:
            target[-1] = 0.0
        held = np.concatenate(([self.position], target[:-1]))
        prev_close = np.concatenate(([self.last_close], close[:-1]))
        ret = np.where(np.isnan(prev_close), 0.0, close / prev_close - 1.0)
        change = target - held
        entry, leave = change > 0, change < 0
        factor = (1.0 + held * ret) * np.where(entry, self.costs.entry_factor, 1.0) \
            * np.where(leave, self.costs.exit_factor, 1.0)
        equity = self.equity * np.cumprod(factor)
        self._trades(close, equity, entry, leave)
        peak = np.maximum.accumulate(np.concatenate(([self.peak], equity)))[1:]
        self.max_dd = min(self.max_dd, float((equity / peak - 1.0).min()))
        self.peak, self.equity = float(peak[-1]), float(equity[-1])
        self.position, self.last_close = float(target[-1]), float(close[-1])
        self._equity.append(equity)
        self._held.append(held)
        self.bars += n

    def _trades(self, close: np.ndarray, equity: np.ndarray, entry: np.ndarray, leave: np.ndarray) -> None:
        """Pair this chunk's entries and exits (long only: they alternate) into closed trades, vectorised;
        an exit before any entry closes the trade carried from an earlier chunk."""
        slip = self.costs.slippage_bps / 1e4
        ins, outs = np.flatnonzero(entry), np.flatnonzero(leave)
        # Cash before an entry at bar i is the equity after bar i's (flat) return, before its costs.
        at = (ins + self.bars).astype("float64")
        price, cash = close[ins] * (1 + slip), equity[ins] / self.costs.entry_factor
        if self.open_entry is not None:  # its exit is this chunk's first (a carried trade is closed first)
            at, price, cash = (np.r_[self.open_entry[0], at], np.r_[self.open_entry[1], price],
                               np.r_[self.open_entry[2], cash])
        k = len(outs)
        pnl = equity[outs] - cash[:k]
        block = np.stack([at[:k], (outs + self.bars).astype("float64"), price[:k], close[outs] * (1 - slip), pnl,
                          cash[:k]])
        if k:
            self._trade_blocks.append(block)
            self.trade_count += k
        self.open_entry = (int(at[k]), float(price[k]), float(cash[k])) if len(at) > k else None

    def trade_columns(self) -> np.ndarray:
        """Closed trades as rows of (entry bar, exit bar, entry price, exit price, pnl, cash)."""
        return np.concatenate(self._trade_blocks, axis=1).T if self._trade_blocks else np.zeros((0, 6))

    @property
    def pnl(self) -> np.ndarray:
        return self.trade_columns()[:, 4]

    @property
    def trades(self) -> list[Trade]:
        return [Trade(int(a), int(b), float(p), float(q), float(g), float(g / c))
                for a, b, p, q, g, c in self.trade_columns()]

    @property
    def drawdown(self) -> float:
        return self.equity / self.peak - 1.0

    def equity_curve(self) -> np.ndarray:
        return np.concatenate(self._equity) if self._equity else np.zeros(0)

    def held(self) -> np.ndarray:
        return np.concatenate(self._held) if self._held else np.zeros(0)


def _iso(ts: pd.Timestamp | None) -> str | None:
    return None if ts is None else pd.Timestamp(ts).isoformat()


def figures(index: pd.DatetimeIndex, equity: np.ndarray, held: np.ndarray, pnl: np.ndarray,
            capital: float) -> dict[str, Any]:
    """Total return, CAGR, Sharpe and Sortino (annualised), max drawdown and its dates, trades, win
    rate, profit factor, exposure. Annualising uses the bars per year observed in these bars (bars /
    years spanned): a timeframe's calendar count (8,766 1h bars a year round the clock) overstates it
    for exchange hours (about 1,764 regular-hours 1h bars of a US stock)."""
    n = len(equity)
    out: dict[str, Any] = {"bars": n, "start": _iso(index[0]) if n else None, "end": _iso(index[-1]) if n else None}
    if n == 0:
        return out | {"total_return": 0.0, "cagr": 0.0, "sharpe": 0.0, "sortino": 0.0, "max_drawdown": 0.0,
                      "max_drawdown_peak": None, "max_drawdown_trough": None, "max_drawdown_recovered": None,
                      "trades": 0, "win_rate": None, "profit_factor": None, "exposure": 0.0,
                      "final_equity": capital}
    rets = np.diff(np.concatenate(([capital], equity))) / np.concatenate(([capital], equity[:-1]))
    years = (index[-1] - index[0]).total_seconds() / SECONDS_PER_YEAR
    per_year = (n - 1) / years if years > 0 else 0.0
    total = float(equity[-1] / capital - 1.0)
    cagr = float((equity[-1] / capital) ** (1.0 / years) - 1.0) if years > 0 and equity[-1] > 0 else 0.0
    sd = float(rets.std(ddof=1)) if n > 1 else 0.0
    downside = float(np.sqrt(np.mean(np.minimum(rets, 0.0) ** 2)))
    mean = float(rets.mean())
    sharpe = mean / sd * math.sqrt(per_year) if sd > 0 else 0.0
    sortino = mean / downside * math.sqrt(per_year) if downside > 0 else 0.0
    peak = np.maximum.accumulate(np.concatenate(([capital], equity)))[1:]
    dd = equity / peak - 1.0
    trough = int(dd.argmin())
    max_dd = float(dd[trough])
    peak_at: int | None = None
    recovered: int | None = None
    if max_dd < 0:
        before = np.concatenate(([capital], equity[: trough + 1]))
        peak_at = max(int(before.argmax()) - 1, 0)  # -1: position 0 is the starting capital
        after = np.flatnonzero(equity[trough:] >= peak[trough])
        recovered = trough + int(after[0]) if len(after) else None
    pnl = np.asarray(pnl, dtype="float64")
    gains, losses = float(pnl[pnl > 0].sum()), float(-pnl[pnl < 0].sum())
    return out | {
        "total_return": total, "cagr": cagr, "sharpe": float(sharpe), "sortino": float(sortino),
        "max_drawdown": max_dd,
        "max_drawdown_peak": _iso(index[peak_at]) if peak_at is not None else None,
        "max_drawdown_trough": _iso(index[trough]) if max_dd < 0 else None,
        "max_drawdown_recovered": _iso(index[recovered]) if recovered is not None else None,
        "trades": len(pnl),
        "win_rate": float((pnl > 0).mean()) if len(pnl) else None,
        "profit_factor": (gains / losses if losses > 0 else None),
        "exposure": float((held != 0).mean()),
        "final_equity": float(equity[-1]),
        "bars_per_year": per_year,
    }


def buy_and_hold_signals(n: int) -> np.ndarray:
    """BUY on the first bar, HOLD after: in at the first close, out at the last (same costs)."""
    s = np.full(n, HOLD, dtype=np.int64)
    if n:
        s[0] = BUY
    return s


def buy_and_hold(index: pd.DatetimeIndex, close: np.ndarray, capital: float, costs: Costs
                 ) -> tuple[np.ndarray, dict[str, Any]]:
    """(equity curve, figures) of `buy_and_hold_signals` run by `run_series` in one piece, the same
    floats (the same factors multiplied in the same order) without its general machinery: in at bar
    0's close (bar 0's factor the entry's), bar t's factor 1 + its return, out at the last close."""
    close = np.asarray(close, dtype="float64")
    n = len(close)
    if n < 2 or np.isnan(close).any():  # nothing to hold, or gaps: the general path's rules
        bt, fig = run_series(index, close, buy_and_hold_signals(n), capital, costs)
        return bt.equity_curve(), fig
    factor = np.empty(n)
    factor[0] = costs.entry_factor
    np.divide(close[1:], close[:-1], out=factor[1:])
    factor[1:] -= 1.0
    factor[1:] += 1.0  # 1 + (close[t] / close[t-1] - 1): as run_series rounds it
    factor[-1] *= costs.exit_factor
    equity = float(capital) * np.cumprod(factor)
    held = np.ones(n)
    held[0] = 0.0
    pnl = np.array([equity[-1] - equity[0] / costs.entry_factor])
    return equity, figures(index, equity, held, pnl, capital)


def run_series(index: pd.DatetimeIndex, close: np.ndarray, signals: np.ndarray, capital: float, costs: Costs,
               chunk: int = 0) -> tuple[Backtest, dict[str, Any]]:
    """A whole series at once (or in chunks of `chunk` bars): the Backtest and its figures."""
    bt = Backtest(capital, costs)
    n = len(close)
    step = chunk if chunk > 0 else max(n, 1)
    for a in range(0, n, step):
        b = min(a + step, n)
        bt.feed(close[a:b], signals[a:b], last=b == n)
    return bt, figures(index, bt.equity_curve(), bt.held(), bt.pnl, capital)
