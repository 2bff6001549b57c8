"""No look-ahead: what happens after bar t never changes the signals, positions or equity up to t."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ktrdr.backtest import BacktestJob, TrainedModel, run_backtest
from tests.backtest.conftest import MULTI_TF_STRATEGY, four_hour, model_files

T = 800  # the bar after which the future is rewritten


def _run(model: TrainedModel, one_hour: pd.DataFrame, end: pd.Timestamp | None = None):
    bars = {"1h": one_hour, "4h": four_hour(one_hour)} if "4h" in model.timeframes else {"1h": one_hour}
    job = BacktestJob("t/AAPL_1h_v1", ["AAPL"], end=end.to_pydatetime() if end is not None else None, chunk_bars=97)
    return run_backtest(job, model, {"AAPL": bars})


def _rewritten_future(bars: pd.DataFrame) -> pd.DataFrame:
    """Bars after T scaled by a random walk: a different future from bar T+1 on."""
    out = bars.copy()
    rng = np.random.default_rng(11)
    walk = np.exp(np.cumsum(rng.normal(0, 0.03, len(out) - T - 1)))
    for col in ("open", "high", "low", "close"):
        out.iloc[T + 1:, out.columns.get_loc(col)] *= walk
    return out


@pytest.mark.parametrize("multi_tf", [False, True], ids=["1h", "1h+4h"])
def test_rewriting_or_cutting_bars_after_t_leaves_signals_and_positions_up_to_t_unchanged(bars, files,
                                                                                           multi_tf: bool) -> None:
    model = TrainedModel.from_files(model_files(MULTI_TF_STRATEGY, {"1h": bars, "4h": four_hour(bars)}, seed=1)
                                    if multi_tf else files)
    full = _run(model, bars)
    other = _run(model, _rewritten_future(bars))
    cut = _run(model, bars, end=bars.index[T + 1])  # [start, end): bars up to T
    sig, pos = full.signals["AAPL"], full.positions["AAPL"]
    assert len(set(sig[:T + 1].tolist())) == 3 and int(np.abs(np.diff(pos)).sum()) > 10  # a model that trades
    for run in (other, cut):
        assert np.array_equal(run.signals["AAPL"][:T + 1], sig[:T + 1])
        assert np.array_equal(run.positions["AAPL"][:T + 1], pos[:T + 1])
        # Equity up to the bar before T (bar T of the cut run closes its position: its own costs).
        assert np.array_equal(run.curve["equity"].to_numpy()[:T], full.curve["equity"].to_numpy()[:T])
    # The rewritten future did change what came after T (the test can see a difference).
    assert not np.array_equal(other.signals["AAPL"][T + 1:], sig[T + 1:])
