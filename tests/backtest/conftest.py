"""Shared fixtures for the backtest domain: a small strategy, synthetic bars and a model's files made
the way the trainer makes them (seeded weights instead of a training run, so the fixture is instant)."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import torch

from ktrdr.training.features import Scaler, symbol_features
from ktrdr.training.model import build_mlp
from ktrdr.training.strategy import parse_strategy
from tests.training.conftest import SMALL_STRATEGY, make_bars

torch.set_num_threads(2)

# The training fixtures' strategy with a threshold every prediction reaches, so signals change often.
STRATEGY = SMALL_STRATEGY.replace("confidence_threshold: 0.6", "confidence_threshold: 0.34")


def model_files(strategy_text: str, bars: pd.DataFrame | dict[str, pd.DataFrame], seed: int = 7) -> dict[str, bytes]:
    """config.json, features.json, metadata.json and model.pt as ktrdr.training.trainer.report writes them."""
    s = parse_strategy(strategy_text)
    feats = symbol_features(bars if isinstance(bars, dict) else {"1h": bars}, s).dropna()
    scaler = Scaler.fit(feats.to_numpy())
    torch.manual_seed(seed)
    net = build_mlp(feats.shape[1], s.model.architecture)
    with torch.no_grad():  # larger output weights: the seeded net's classes change with its inputs
        net[-1].weight.mul_(8.0)
        net[-1].bias.zero_()
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    arch = {"type": "mlp", "input_size": feats.shape[1], "hidden_layers": list(s.model.architecture.hidden_layers)}
    return {
        "model.pt": buf.getvalue(),
        "config.json": json.dumps({"strategy": s.to_dict(), "architecture": arch, "seed": seed}).encode(),
        "features.json": json.dumps({"names": list(feats.columns), "scaler": scaler.to_dict()}).encode(),
        "metadata.json": json.dumps({"symbols": ["AAPL"], "timeframes": ["1h"], "simulated": True}).encode(),
        "metrics.json": b"{}",
    }


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    return make_bars(1200, seed=3)


@pytest.fixture(scope="module")
def files(bars: pd.DataFrame) -> dict[str, bytes]:
    return model_files(STRATEGY, bars)


# The same with a 4h context aligned onto the 1h bars (visible once each 4h bar has closed).
MULTI_TF_STRATEGY = STRATEGY.replace("timeframes: {mode: single_timeframe, list: [1h], base_timeframe: 1h}",
                                     "timeframes: {mode: multi_timeframe, list: [1h, 4h], base_timeframe: 1h}")


def four_hour(bars: pd.DataFrame) -> pd.DataFrame:
    """4h bars from 1h bars (a 4h bar starts at 00:00, 04:00, ...; its close is its last hour's)."""
    agg = {"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"}
    return bars.resample("4h", origin="start_day").agg(agg).dropna()


def frame(close: list[float], start: str = "2024-01-01") -> pd.DataFrame:
    c = np.asarray(close, dtype="float64")
    idx = pd.date_range(start, periods=len(c), freq="1D", tz="UTC")
    return pd.DataFrame({"open": c, "high": c, "low": c, "close": c, "volume": 1.0}, index=idx)
