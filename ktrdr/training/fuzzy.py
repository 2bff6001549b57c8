"""Fuzzy membership functions: indicator values -> degrees of membership in [0, 1].

The model sees memberships rather than raw indicator values (KTRDR's "neuro-fuzzy" design): they
are bounded, comparable across symbols, and carry the strategy author's notion of "oversold".
A NaN input (indicator warm-up) stays NaN so the warm-up rows can be dropped downstream.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ktrdr.training.strategy import MembershipConfig


def triangular(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """Peak 1 at b, 0 at and beyond a and c; a == b or b == c gives a shoulder (1 at the edge)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        left = np.where(b > a, (x - a) / (b - a if b > a else 1.0), np.where(x >= b, 1.0, 0.0))
        right = np.where(c > b, (c - x) / (c - b if c > b else 1.0), np.where(x <= b, 1.0, 0.0))
    return _finish(x, np.minimum(left, right))


def trapezoidal(x: np.ndarray, a: float, b: float, c: float, d: float) -> np.ndarray:
    """1 on [b, c], linear ramps on [a, b] and [c, d], 0 outside [a, d]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        left = np.where(b > a, (x - a) / (b - a if b > a else 1.0), np.where(x >= b, 1.0, 0.0))
        right = np.where(d > c, (d - x) / (d - c if d > c else 1.0), np.where(x <= c, 1.0, 0.0))
    return _finish(x, np.minimum(np.minimum(left, right), 1.0))


def gaussian(x: np.ndarray, mean: float, sigma: float) -> np.ndarray:
    return _finish(x, np.exp(-0.5 * ((x - mean) / sigma) ** 2))


def _finish(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(x), np.nan, np.clip(y, 0.0, 1.0))


def membership(x: np.ndarray, mtype: str, parameters: Sequence[float]) -> np.ndarray:
    values = np.asarray(x, dtype="float64")
    if mtype == "triangular":
        return triangular(values, *parameters)
    if mtype == "trapezoidal":
        return trapezoidal(values, *parameters)
    if mtype == "gaussian":
        return gaussian(values, *parameters)
    raise ValueError(f"unknown membership type {mtype!r}")


def fuzzify(
    indicators: pd.DataFrame, fuzzy_sets: Mapping[str, Mapping[str, MembershipConfig]]
) -> pd.DataFrame:
    """Columns `{indicator}_{set}` in [0, 1] (NaN where the indicator is still warming up)."""
    cols: dict[str, np.ndarray] = {}
    for column, sets in fuzzy_sets.items():
        if column not in indicators.columns:
            raise KeyError(f"fuzzy sets refer to {column!r}, which was not computed")
        x = indicators[column].to_numpy(dtype="float64")
        for set_name, cfg in sets.items():
            cols[f"{column}_{set_name}"] = membership(x, cfg.type, cfg.parameters)
    return pd.DataFrame(cols, index=indicators.index)
