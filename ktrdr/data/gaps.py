"""Gap analysis: which expected bars are missing from a stored series.

"Expected" is exactly calendar.expected_bar_starts, so weekends, closed hours and holidays are never
gaps. Contiguous missing bars (adjacent in the expected sequence) form one Gap.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from ktrdr.data.calendar import Instrument, expected_bar_starts
from ktrdr.data.timeframes import Timeframe, parse_timeframe


@dataclass(frozen=True)
class Gap:
    start: pd.Timestamp  # first missing bar start (UTC)
    end: pd.Timestamp  # exclusive: last missing bar start + one bar
    missing_bars: int


def find_gaps(
    stored_index: pd.DatetimeIndex,
    inst: Instrument,
    tf: Timeframe | str,
    start: datetime | pd.Timestamp | str,
    end: datetime | pd.Timestamp | str,
    *,
    expected: pd.DatetimeIndex | None = None,
) -> list[Gap]:
    """Runs of expected bars in [start, end) that `stored_index` lacks, in time order.

    `expected` is expected_bar_starts(inst, tf, start, end) when the caller already has it (a load
    also needs it to plan segments): passing it saves computing it twice."""
    tf = parse_timeframe(tf)
    if expected is None:
        expected = expected_bar_starts(inst, tf, start, end)
    if len(expected) == 0:
        return []
    stored = pd.DatetimeIndex(stored_index)
    stored = stored.tz_localize("UTC") if stored.tz is None else stored.tz_convert("UTC")
    have = _contains(stored.as_unit("ns").asi8, expected.asi8)
    pos = np.flatnonzero(~have)
    if len(pos) == 0:
        return []
    breaks = np.flatnonzero(np.diff(pos) != 1)
    firsts = np.concatenate(([pos[0]], pos[breaks + 1]))
    lasts = np.concatenate((pos[breaks], [pos[-1]]))
    step = pd.Timedelta(seconds=tf.seconds)
    return [Gap(expected[f], expected[la] + step, int(la - f + 1)) for f, la in zip(firsts, lasts, strict=True)]


def _contains(stored: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Boolean mask: which of `wanted` are in `stored` (int64 ns).

    Binary search in the sorted stored bars: ~25x faster than np.isin on 1M bars (which sorts both
    arrays together); a store's index is already sorted, so the sort is usually skipped."""
    if len(stored) == 0:
        return np.zeros(len(wanted), dtype=bool)
    if len(stored) > 1 and not (stored[1:] >= stored[:-1]).all():
        stored = np.sort(stored)
    i = np.minimum(np.searchsorted(stored, wanted), len(stored) - 1)
    return stored[i] == wanted
