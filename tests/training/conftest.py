"""Shared fixtures for the training domain: synthetic bars with a learnable cycle, small strategies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from ktrdr.training.strategy import Strategy, parse_strategy

# Two cores in CI: more threads than cores only adds contention for these tiny models.
torch.set_num_threads(2)

SMALL_STRATEGY = """
name: test_small
description: tiny strategy for tests
version: "1.0"
training_data:
  symbols: {mode: single_symbol, list: [AAPL]}
  timeframes: {mode: single_timeframe, list: [1h], base_timeframe: 1h}
  history_required: 50
indicators:
  - {name: rsi, period: 14}
  - {name: macd, fast_period: 12, slow_period: 26, signal_period: 9}
fuzzy_sets:
  rsi:
    oversold: {type: triangular, parameters: [0, 25, 45]}
    neutral: {type: triangular, parameters: [30, 50, 70]}
    overbought: {type: triangular, parameters: [55, 75, 100]}
  macd_hist:
    negative: {type: trapezoidal, parameters: [-100, -50, -0.2, 0]}
    positive: {type: trapezoidal, parameters: [0, 0.2, 50, 100]}
model:
  type: mlp
  architecture: {hidden_layers: [24, 12], activation: relu, dropout: 0.1}
  features: {lookback_periods: 2, scale_features: true}
  training:
    learning_rate: 0.005
    batch_size: 64
    epochs: 6
    optimizer: adam
    early_stopping: {patience: 50, monitor: val_loss}
decisions: {output_format: classification, confidence_threshold: 0.6}
training:
  method: supervised
  labels: {source: zigzag, zigzag_threshold: 0.015, label_lookahead: 12}
  data_split: {train: 0.7, validation: 0.15, test: 0.15}
"""


def make_bars(
    n: int = 2000,
    *,
    seed: int = 0,
    start: str = "2024-01-01 00:30",
    freq: str = "1h",
    period: float = 48.0,
    amplitude: float = 0.04,
    noise: float = 0.002,
) -> pd.DataFrame:
    """1h bars whose log price follows a noisy cycle: the cycle's phase (visible in RSI / MACD) predicts
    the next moves, so a model has something real to learn."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    phase = rng.uniform(0, 2 * np.pi)
    log_close = np.log(100.0) + amplitude * np.sin(2 * np.pi * t / period + phase)
    log_close += np.cumsum(rng.normal(0.0, noise, n))
    close = np.exp(log_close)
    open_ = np.r_[close[0], close[:-1]]
    spread = np.abs(rng.normal(0.0, noise, n)) * close
    high = np.maximum(open_, close) + spread
    low = np.minimum(open_, close) - spread
    volume = rng.integers(1_000, 10_000, n).astype("float64")
    index = pd.date_range(start, periods=n, freq=freq, tz="UTC", name="timestamp")
    return pd.DataFrame(
        {"open": open_, "high": high, "low": low, "close": close, "volume": volume}, index=index
    )


def resample_bars(bars: pd.DataFrame, tf: str) -> pd.DataFrame:
    """Higher-timeframe bars built from base bars, labelled by their START (as IB and the store do)."""
    rule = {"4h": "4h", "1d": "1D"}[tf]
    agg = bars.resample(rule, label="left", closed="left", origin="start").agg(
        {"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"}
    )
    return agg.dropna()


def bar_set(bars_by_symbol: dict[str, pd.DataFrame], timeframes: tuple[str, ...] = ("1h", "4h")
            ) -> dict[str, dict[str, pd.DataFrame]]:
    """`bars` as run_training takes them: symbol -> timeframe -> frame (higher timeframes resampled)."""
    return {sym: {tf: base.copy() if tf == "1h" else resample_bars(base, tf) for tf in timeframes}
            for sym, base in bars_by_symbol.items()}


@pytest.fixture
def small_strategy() -> Strategy:
    return parse_strategy(SMALL_STRATEGY, file="small.yaml")


@pytest.fixture(scope="session")
def two_symbols() -> dict[str, dict[str, pd.DataFrame]]:
    return bar_set({"AAPL": make_bars(2000, seed=1), "MSFT": make_bars(2000, seed=2)})


class Recorder:
    """A progress sink that keeps every state (and can run a hook on each)."""

    def __init__(self, hook: Callable[[Any], None] | None = None) -> None:
        self.updates: list[Any] = []
        self.hook = hook

    def __call__(self, update: Any) -> None:
        self.updates.append(update)
        if self.hook is not None:
            self.hook(update)


class Checkpoints:
    """An on_checkpoint sink: every (epoch, bytes) delivered, in order."""

    def __init__(self) -> None:
        self.items: list[tuple[int, bytes]] = []

    def __call__(self, epoch: int, data: bytes) -> None:
        self.items.append((epoch, data))

    @property
    def epochs(self) -> list[int]:
        return [e for e, _ in self.items]

    @property
    def latest(self) -> bytes | None:
        return self.items[-1][1] if self.items else None
