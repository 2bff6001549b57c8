"""Zigzag BUY / HOLD / SELL labels and chronological splits.

Encoding (KTRDR's classifier order): 0 = BUY, 1 = HOLD, 2 = SELL.

The label at bar t looks at closes t+1 .. t+lookahead only: BUY if the price first moves up by at
least `threshold` (relative to close[t]), SELL if it first moves down by that much, HOLD if neither
happens within the window. Rows whose window runs past the end of the data get no label (-1) and are
dropped, so every label is computed on a full window. Labels use the future by definition; the
features never do, and `split_chronological` can leave a `gap` of `lookahead` rows between splits so
that the last training labels do not peek into the validation period.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

BUY, HOLD, SELL = 0, 1, 2
NO_LABEL = -1
CLASS_NAMES: tuple[str, ...] = ("BUY", "HOLD", "SELL")


def zigzag_labels(close: pd.Series | np.ndarray, threshold: float, lookahead: int) -> np.ndarray:
    """int64 labels per bar (0 BUY, 1 HOLD, 2 SELL, -1 where the window is incomplete)."""
    c = np.asarray(close, dtype="float64")
    n = len(c)
    labels = np.full(n, NO_LABEL, dtype=np.int64)
    if n == 0 or lookahead < 1:
        return labels
    decided = np.zeros(n, dtype=bool)
    out = np.full(n, HOLD, dtype=np.int64)
    # One vectorised pass per step of the window: O(n * lookahead), no Python loop over bars.
    for k in range(1, lookahead + 1):
        ret = np.full(n, np.nan)
        ret[: n - k] = c[k:] / c[: n - k] - 1.0
        up = (ret >= threshold) & ~decided
        down = (ret <= -threshold) & ~decided
        out[up] = BUY
        out[down] = SELL
        decided |= up | down
    complete = np.arange(n) < n - lookahead
    labels[complete] = out[complete]
    return labels


def split_chronological(n: int, ratios: Sequence[float], gap: int = 0) -> tuple[slice, slice, slice]:
    """Train / validation / test slices over n time-ordered rows, never shuffled.

    `gap` rows are dropped at the end of the train and validation parts (purging: a label there
    would otherwise be computed from prices inside the next split).
    """
    if len(ratios) != 3:
        raise ValueError(f"expected three ratios (train, validation, test), got {len(ratios)}")
    if any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(f"ratios must be >= 0 and sum to 1, got {list(ratios)}")
    n_train = round(n * ratios[0])
    n_val = round(n * ratios[1])
    n_train = min(n_train, n)
    n_val = min(n_val, n - n_train)
    train = slice(0, max(0, n_train - gap))
    val = slice(n_train, max(n_train, n_train + n_val - gap))
    test = slice(n_train + n_val, n)
    return train, val, test


def class_counts(labels: np.ndarray) -> dict[str, int]:
    return {name: int((labels == i).sum()) for i, name in enumerate(CLASS_NAMES)}
