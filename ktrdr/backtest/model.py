"""A trained model as a backtest uses it: its files (config.json, features.json, model.pt) -> features
recomputed exactly as training computed them -> BUY / HOLD / SELL per base bar.

Features come from ktrdr.training.features.symbol_features, the function training used, on the
model's strategy as stored in its config.json, with the scaler stored in its features.json: every
feature at bar t is a function of bars up to t (indicators and fuzzy memberships are causal, lags
only shift into the past, a higher timeframe's bar is visible only once it has closed), so a signal
never sees the future. A row still in its warm-up (a NaN feature) is HOLD. The decision is KTRDR's:
the most probable class when its probability reaches the strategy's `decisions.confidence_threshold`,
HOLD otherwise. Synchronous; torch is imported here only (the actor process imports this module in
its worker thread).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import pandas as pd

from ktrdr.errors import DataError, ValidationError
from ktrdr.training.features import Scaler, check_bars, symbol_features
from ktrdr.training.labels import HOLD
from ktrdr.training.strategy import Strategy

MODEL_FILES: tuple[str, ...] = ("model.pt", "config.json", "features.json", "metadata.json")


def _json(files: Mapping[str, bytes], name: str) -> dict[str, Any]:
    try:
        doc = json.loads(files[name])
    except (KeyError, ValueError) as exc:
        raise DataError(f"the model's {name} is missing or not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise DataError(f"the model's {name} is not a JSON object")
    return doc


@dataclass
class TrainedModel:
    strategy: Strategy
    feature_names: list[str]
    scaler: Scaler
    net: Any  # torch.nn.Module in eval mode
    symbols: list[str]
    timeframes: list[str]  # every timeframe its features read (base first)
    base_timeframe: str

    @classmethod
    def from_files(cls, files: Mapping[str, bytes]) -> TrainedModel:
        """The model from its stored files (their digests are checked by whoever fetched them)."""
        import torch

        from ktrdr.training.model import build_mlp

        config, feats, meta = _json(files, "config.json"), _json(files, "features.json"), _json(files, "metadata.json")
        try:
            strategy = msgspec.convert(config["strategy"], Strategy)
            names = [str(n) for n in feats["names"]]
            sc = feats["scaler"]
            scaler = Scaler(np.asarray(sc["mean"], dtype="float64"), np.asarray(sc["std"], dtype="float64"))
            symbols = [str(s) for s in meta["symbols"]]
            input_size = int(config["architecture"]["input_size"])
        except (KeyError, TypeError, ValueError, msgspec.ValidationError) as exc:
            raise DataError(f"the model's files do not describe a model this version can run ({exc})") from None
        if input_size != len(names) or len(scaler.mean) != len(names):
            raise DataError(f"the model's files disagree: {input_size} inputs, {len(names)} feature names")
        net = build_mlp(input_size, strategy.model.architecture)
        try:
            state = torch.load(io.BytesIO(files["model.pt"]), map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        except Exception as exc:  # torch raises many kinds for a bad file
            raise DataError(f"the model's weights do not load: {str(exc)[:200]}") from None
        net.eval()
        td = strategy.training_data
        return cls(strategy, names, scaler, net, symbols, [str(t) for t in td.timeframes], str(td.base_timeframe))

    @property
    def threshold(self) -> float:
        return float(self.strategy.decisions.confidence_threshold)

    def features(self, bars_by_tf: Mapping[str, pd.DataFrame], symbol: str) -> pd.DataFrame:
        """The feature rows of every base bar (NaN in the warm-up), in the columns the model was trained on."""
        checked = {}
        for tf in self.timeframes:
            if tf not in bars_by_tf:
                raise DataError(f"no {tf} bars for {symbol}", hint="load the data first (ktrdr data load)")
            checked[tf] = check_bars(bars_by_tf[tf], symbol, tf)
        feats = symbol_features(checked, self.strategy)
        missing = [n for n in self.feature_names if n not in feats.columns]
        if missing:
            raise ValidationError(f"the bars do not give the model's features {missing[:5]}")
        return feats.loc[:, self.feature_names]

    def decide(self, x: np.ndarray) -> np.ndarray:
        """Signals (0 BUY, 1 HOLD, 2 SELL) for feature rows; a row with a NaN is HOLD."""
        import torch

        x = np.asarray(x, dtype="float64")
        out = np.full(len(x), HOLD, dtype=np.int64)
        ok = ~np.isnan(x).any(axis=1)
        if not ok.any():
            return out
        with torch.no_grad():
            logits = self.net(torch.from_numpy(self.scaler.transform(x[ok])))
            probs = torch.softmax(logits, dim=1)
            conf, cls = probs.max(dim=1)
        decided = np.where(conf.numpy() >= self.threshold, cls.numpy(), HOLD)
        out[ok] = decided
        return out
