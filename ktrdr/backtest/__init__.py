"""The backtest domain: a trained model run over stored bars, bar by bar, with costs (no NATS here).

`engine` turns signals into positions, equity and figures; `model` recomputes a model's features and
signals as training did; `run` puts them together chunk by chunk with progress and cancellation.
"""

from ktrdr.backtest.engine import BUY, HOLD, SELL, Backtest, Costs, figures, run_series, target_positions
from ktrdr.backtest.model import TrainedModel
from ktrdr.backtest.run import (
    BacktestJob,
    BacktestOutcome,
    backtest_symbols,
    curve_bytes,
    drawdown,
    read_curve,
    run_backtest,
)

__all__ = ["BUY", "HOLD", "SELL", "Backtest", "BacktestJob", "BacktestOutcome", "Costs", "TrainedModel",
           "backtest_symbols", "curve_bytes", "drawdown", "figures", "read_curve", "run_backtest",
           "run_series", "target_positions"]
