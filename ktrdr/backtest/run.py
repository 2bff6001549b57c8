"""One backtest, synchronous: a trained model and its bars -> the figures, the buy-and-hold figures
and the equity curve, with progress after every chunk of bars and cancellation between chunks.

Per symbol: features on every stored bar up to `end` (the bars before `start` only warm the
indicators up), signals and trading on the base bars in [start, end]. With several symbols the
capital is split equally, one sleeve per symbol run on its own, and the portfolio is the sum of the
sleeves on the union of their bars (a sleeve's equity carried forward where it has no bar). Buy-and-
hold is the same sleeves bought at their first bar's close and sold at their last, with the same costs.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from events.messages import BacktestContext, ProgressState
from ktrdr import tracing
from ktrdr.backtest.engine import Backtest, Costs, buy_and_hold, figures
from ktrdr.backtest.model import TrainedModel
from ktrdr.errors import DataError, OperationCancelledError, ValidationError
from ktrdr.training.job import CancelFlag

# Bars per chunk: progress after each, the cancel read before it and inside it (DECIDE_ROWS). A
# fixed count, not a time, so a run's floats never depend on the host's speed (each chunk restarts
# its cumulative product; a redelivered backtest must give the same figures): ~20-25 ms of work on
# this 2-core host when quiet (bench/research.py), ~30-60 ms under load.
DEFAULT_CHUNK_BARS = 32_768
# The forward pass goes in batches of this many rows, the cancel read between them and before the
# chunk's trading: a cancel waits for ~a third of a chunk's work, not all of it. Fixed, as the chunk.
DECIDE_ROWS = 8_192
Emit = Callable[[ProgressState], None]


@dataclass(frozen=True)
class BacktestJob:
    model_ref: str
    symbols: list[str]
    start: datetime | None = None
    end: datetime | None = None
    capital: float = 100_000.0
    commission: float = 0.001
    slippage_bps: float = 1.0
    chunk_bars: int = DEFAULT_CHUNK_BARS


@dataclass
class BacktestOutcome:
    result: dict[str, Any]
    curve: pd.DataFrame  # ts, equity, buy_hold, position (the portfolio's; its share long)
    signals: dict[str, np.ndarray] = field(default_factory=dict)  # per symbol, on its traded bars
    positions: dict[str, np.ndarray] = field(default_factory=dict)  # held per bar, per symbol
    runs: dict[str, Backtest] = field(default_factory=dict)  # per symbol: its trades, curve, positions


def backtest_symbols(model_ref: str, asked: Sequence[str], model_symbols: Sequence[str]) -> list[str]:
    """The asked symbols (normalised), else the model's; every one must be one the model was trained on."""
    from ktrdr.commands import check_symbol

    wanted = list(dict.fromkeys(check_symbol(s, f"symbols[{i}]") for i, s in enumerate(asked)))
    foreign = [s for s in wanted if s not in model_symbols]
    if foreign:
        raise ValidationError(f"{model_ref}: not trained on {', '.join(foreign)} "
                              f"(it was on {', '.join(model_symbols)})",
                              hint="backtest it on its own symbols, or train a model on these")
    return wanted or list(model_symbols)


def _utc(ts: datetime | None) -> pd.Timestamp | None:
    if ts is None:
        return None
    t = pd.Timestamp(ts)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _cut(bars: pd.DataFrame, end: pd.Timestamp | None) -> pd.DataFrame:
    """Bars starting before `end` (a range is [start, end), as BARS reads it)."""
    idx = bars.index if bars.index.tz is not None else bars.index.tz_localize("UTC")
    return bars.loc[idx < end] if end is not None else bars


# The curve's Parquet: floats byte-stream-split and LZ4-compressed, timestamps delta-encoded, no
# dictionaries (a curve's floats hardly repeat: pandas' default dictionary pass was most of its 0.2 s
# for 1,000,000 bars). 1,000,000 bars: ~13 MB in ~75 ms against 20-24 MB in ~0.2 s (bench/research.py).
_CURVE_ENCODING = {"ts": "DELTA_BINARY_PACKED", "equity": "BYTE_STREAM_SPLIT", "buy_hold": "BYTE_STREAM_SPLIT",
                   "position": "BYTE_STREAM_SPLIT"}


def curve_bytes(curve: pd.DataFrame) -> bytes:
    """The curve as Parquet (read back by `read_curve`, or any Parquet reader)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(curve, preserve_index=False)
    encoding = {k: v for k, v in _CURVE_ENCODING.items() if k in curve.columns}
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, compression="lz4", use_dictionary=False, column_encoding=encoding,
                   write_statistics=False)
    return buf.getvalue().to_pybytes()


def read_curve(data: bytes) -> pd.DataFrame:
    """An equity curve as `curve_bytes` stored it (ts, equity, buy_hold, position)."""
    try:
        curve = pd.read_parquet(io.BytesIO(data))
    except Exception as exc:  # pyarrow's errors for bytes that are not Parquet
        raise DataError(f"the equity curve is not readable Parquet: {type(exc).__name__}") from None
    missing = [c for c in ("ts", "equity", "buy_hold") if c not in curve.columns]
    if missing:
        raise DataError(f"the equity curve lacks its {', '.join(missing)} column(s)")
    return curve


def drawdown(equity: np.ndarray, capital: float) -> np.ndarray:
    """The fall from the running peak at each bar (0 at a new high, -0.25 at 25% below it), the
    starting capital the first peak, as `engine.figures` defines max drawdown (its minimum)."""
    eq = np.asarray(equity, dtype="float64")
    peak = np.maximum.accumulate(np.concatenate(([float(capital)], eq)))[1:]
    return eq / peak - 1.0


def run_backtest(job: BacktestJob, model: TrainedModel, bars: Mapping[str, Mapping[str, pd.DataFrame]], *,
                 emit: Emit | None = None, cancel: CancelFlag | None = None) -> BacktestOutcome:
    """The backtest of bars starting in [start, end). Raises DataError (no bars in the range, ...) or
    OperationCancelledError(where: the date reached)."""
    t0 = time.monotonic()
    start, end = _utc(job.start), _utc(job.end)
    costs = Costs(job.commission, job.slippage_bps)
    sleeve = job.capital / len(job.symbols)
    prepared: list[tuple[str, pd.DatetimeIndex, np.ndarray, np.ndarray]] = []
    for sym in job.symbols:
        by_tf = {tf: _cut(df, end) for tf, df in bars.get(sym, {}).items()}
        feats = model.features(by_tf, sym)
        base = feats.index
        # The base index is sorted, so the bars from `start` on are a suffix: sliced, not copied.
        first = int(base.searchsorted(start)) if start is not None else 0
        if first >= len(base):
            raise DataError(f"no {model.base_timeframe} bars for {sym} in the requested range",
                            hint="pick a range the stored bars cover (ktrdr data show) or load it first")
        close = by_tf[model.base_timeframe]["close"].astype("float64")
        if close.index.tz is None:
            close.index = close.index.tz_localize("UTC")
        if close.index.equals(base):  # the usual case: the features are on the stored bars as they are
            closes = close.to_numpy()[first:]
        else:
            close = close[~close.index.duplicated(keep="last")].sort_index()
            closes = close.reindex(base[first:]).to_numpy()
        prepared.append((sym, base[first:], closes, feats.to_numpy(dtype="float64")[first:]))
    total = sum(len(p[1]) for p in prepared)
    done, trades = 0, 0
    runs: dict[str, Backtest] = {}
    out = BacktestOutcome(result={}, curve=pd.DataFrame())
    step = max(1, job.chunk_bars)

    def check(sym: str, index: pd.DatetimeIndex, a: int) -> None:
        if cancel is not None and cancel.is_cancelled:
            where = f"{sym} {index[a - 1].isoformat()}" if a else f"{sym} before its first bar"
            raise OperationCancelledError(where, cancel.reason, getattr(cancel, "reason_code", "user"))

    for sym, index, close, x in prepared:
        bt = Backtest(sleeve, costs)
        signals = np.empty(len(index), dtype=np.int64)
        for a in range(0, len(index), step):
            check(sym, index, a)
            b = min(a + step, len(index))
            with tracing.span("backtest chunk", attrs={"ktrdr.symbol": sym, "ktrdr.bars": b - a}):
                for c in range(a, b, DECIDE_ROWS):  # inside the chunk too: a cancel waits for a part of it
                    if c > a:
                        check(sym, index, a)
                    signals[c:min(c + DECIDE_ROWS, b)] = model.decide(x[c:min(c + DECIDE_ROWS, b)])
                check(sym, index, a)
                bt.feed(close[a:b], signals[a:b], last=b == len(index))
            done += b - a
            if emit is not None:
                emit(_progress(job, model, sym, done, total, index[b - 1], bt, trades + bt.trade_count))
        trades += bt.trade_count
        runs[sym] = bt
        out.signals[sym], out.positions[sym], out.runs[sym] = signals, bt.held(), bt
    out.result, out.curve = _result(job, model, prepared, runs, costs, sleeve, time.monotonic() - t0)
    return out


def _progress(job: BacktestJob, model: TrainedModel, sym: str, done: int, total: int, at: pd.Timestamp,
              bt: Backtest, trades: int) -> ProgressState:
    ctx = BacktestContext(model=job.model_ref, symbol=sym, bars_done=done, bars_total=total,
                          date=at.to_pydatetime(), equity=bt.equity, drawdown=bt.drawdown,
                          max_drawdown=bt.max_dd, trades=trades)
    return ProgressState(percentage=100.0 * done / max(total, 1), phase="backtesting",
                         message=f"Backtesting {sym}: {at:%Y-%m-%d %H:%M} ({done:,}/{total:,} bars)",
                         current_step=done, total_steps=total, items_processed=done, items_total=total, context=ctx)


def _portfolio(index_by_sym: dict[str, pd.DatetimeIndex], curves: dict[str, np.ndarray], sleeve: float
               ) -> pd.Series:
    union = index_by_sym[next(iter(index_by_sym))]
    for idx in index_by_sym.values():
        union = union.union(idx)
    total = pd.Series(0.0, index=union)
    for sym, eq in curves.items():
        total += pd.Series(eq, index=index_by_sym[sym]).reindex(union).ffill().fillna(sleeve)
    return total


def _result(job: BacktestJob, model: TrainedModel, prepared: list[tuple[str, pd.DatetimeIndex, np.ndarray, Any]],
            runs: dict[str, Backtest], costs: Costs, sleeve: float, elapsed: float
            ) -> tuple[dict[str, Any], pd.DataFrame]:
    idx = {sym: index for sym, index, _, _ in prepared}
    per_symbol: dict[str, Any] = {}
    bh_curves: dict[str, np.ndarray] = {}
    held: dict[str, np.ndarray] = {}
    pnl = []
    curves: dict[str, np.ndarray] = {}
    for sym, index, close, _ in prepared:
        bt = runs[sym]
        bh_curves[sym], bh_fig = buy_and_hold(index, close, sleeve, costs)
        held[sym], curves[sym] = bt.held(), bt.equity_curve()  # each a concatenation: made once
        pnl.append(bt.pnl)
        per_symbol[sym] = {"strategy": figures(index, curves[sym], held[sym], bt.pnl, sleeve),
                           "buy_and_hold": bh_fig}
    if len(prepared) == 1:  # one sleeve: the portfolio is it
        (sym, union, _, _), = prepared
        equity, bh_equity, exposure = curves[sym], bh_curves[sym], held[sym]
        strat, bh = per_symbol[sym]["strategy"], per_symbol[sym]["buy_and_hold"]
    else:
        eq = _portfolio(idx, curves, sleeve)
        union, equity = eq.index, eq.to_numpy()
        bh_equity = _portfolio(idx, bh_curves, sleeve).to_numpy()
        exposure = _portfolio(idx, held, 0.0).to_numpy()  # sleeves long at each bar (>0: some exposure)
        strat = figures(union, equity, exposure, np.concatenate(pnl), job.capital)
        bh = figures(union, bh_equity, np.ones(len(union)), np.zeros(0), job.capital)
    bh = bh | {"trades": len(prepared)}
    # copy=False: the columns are this function's own fresh arrays, and pandas 3 would otherwise copy
    # each (~30-180 ms at 1,000,000 bars against ~1 ms; bench/research.py pieces)
    curve = pd.DataFrame({"ts": union, "equity": equity, "buy_hold": bh_equity,
                          "position": (exposure / len(prepared)).astype("float32")}, copy=False)
    result = {
        "model": job.model_ref, "symbols": list(job.symbols), "timeframe": model.base_timeframe,
        "capital": job.capital, "commission": costs.commission, "slippage_bps": costs.slippage_bps,
        "strategy": strat, "buy_and_hold": bh, "per_symbol": per_symbol if len(prepared) > 1 else {},
        "bars": int(sum(len(i) for i in idx.values())), "elapsed_s": round(elapsed, 3),
        "conventions": "signal at bar t's close fills at that close and is held from bar t+1; long only; "
                       "an open position is closed at the last bar's close",
    }
    return result, curve
