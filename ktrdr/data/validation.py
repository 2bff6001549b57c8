"""Bar validation and repair: what is wrong with a frame of bars, and a stated fix for each problem.

Repair methods (applied in this order, each counted in RepairReport.counts):
- missing_price: a row with a missing open/high/low/close is dropped;
- missing_volume: a missing volume is set to 0;
- non_positive_price: a row with a price <= 0 is dropped;
- duplicate: rows sharing a timestamp keep the LAST one (the newest fetch);
- unsorted: rows are sorted by timestamp;
- high_low_inconsistent: high = max(o, h, l, c), low = min(o, h, l, c);
- negative_volume: set to 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ktrdr.data.store import normalize_frame

PRICES = ("open", "high", "low", "close")

REPAIR_METHODS: dict[str, str] = {
    "missing_price": "dropped the row",
    "missing_volume": "set volume to 0",
    "non_positive_price": "dropped the row",
    "duplicate": "kept the last row per timestamp",
    "unsorted": "sorted by timestamp",
    "high_low_inconsistent": "widened high to max(o,h,l,c) and low to min(o,h,l,c)",
    "negative_volume": "set volume to 0",
}


@dataclass(frozen=True)
class Issue:
    kind: str  # one of REPAIR_METHODS' keys
    row: int  # 0-based position in the frame as given
    timestamp: pd.Timestamp | None
    message: str


@dataclass
class RepairReport:
    counts: dict[str, int] = field(default_factory=dict)  # method -> rows affected

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, other: RepairReport) -> None:
        for k, v in other.counts.items():
            self.counts[k] = self.counts.get(k, 0) + v

    def to_dict(self) -> dict[str, object]:
        return {
            "total": self.total,
            "counts": dict(self.counts),
            "methods": {k: REPAIR_METHODS[k] for k in self.counts},
        }


def _issues(df: pd.DataFrame, mask: np.ndarray, kind: str, what: str) -> list[Issue]:
    return [Issue(kind, int(i), df.index[i], f"row {int(i)} ({df.index[i]}): {what}") for i in np.flatnonzero(mask)]


def validate_bars(df: pd.DataFrame) -> list[Issue]:
    """Every problem in `df`, each naming its row position and timestamp. Empty list: clean."""
    df = normalize_frame(df)
    out: list[Issue] = []
    p = df[list(PRICES)]
    out += _issues(df, p.isna().any(axis=1).to_numpy(), "missing_price", "missing price")
    out += _issues(df, df["volume"].isna().to_numpy(), "missing_volume", "missing volume")
    out += _issues(df, (p <= 0).any(axis=1).to_numpy(), "non_positive_price", "price <= 0")
    out += _issues(df, df.index.duplicated(keep="last"), "duplicate", "duplicate timestamp")
    ts = df.index.asi8
    unsorted = np.zeros(len(df), dtype=bool)
    if len(ts) > 1:
        unsorted[1:] = ts[1:] < ts[:-1]
    out += _issues(df, unsorted, "unsorted", "timestamp earlier than the previous row")
    h, lo, o, c = (df[k].to_numpy() for k in ("high", "low", "open", "close"))
    with np.errstate(invalid="ignore"):
        out += _issues(df, h < lo, "high_low_inconsistent", "high < low")
        out += _issues(df, h < np.maximum(o, c), "high_low_inconsistent", "high < max(open, close)")
        out += _issues(df, lo > np.minimum(o, c), "high_low_inconsistent", "low > min(open, close)")
        out += _issues(df, df["volume"].to_numpy() < 0, "negative_volume", "negative volume")
    return out


def repair_bars(df: pd.DataFrame) -> tuple[pd.DataFrame, RepairReport]:
    """A repaired copy of `df` and how many rows each stated method touched (module docstring)."""
    df = normalize_frame(df).copy()
    report = RepairReport()

    def count(kind: str, n: int) -> None:
        if n:
            report.counts[kind] = report.counts.get(kind, 0) + int(n)

    bad = df[list(PRICES)].isna().any(axis=1)
    count("missing_price", bad.sum())
    df = df[~bad]
    nav = df["volume"].isna()
    count("missing_volume", nav.sum())
    df.loc[nav, "volume"] = 0.0
    bad = (df[list(PRICES)] <= 0).any(axis=1)
    count("non_positive_price", bad.sum())
    df = df[~bad]
    dup = df.index.duplicated(keep="last")
    count("duplicate", dup.sum())
    df = df[~dup]
    if not df.index.is_monotonic_increasing:
        ts = df.index.asi8
        count("unsorted", int((ts[1:] < ts[:-1]).sum()))
        df = df.sort_index()
    p = df[list(PRICES)].to_numpy()
    hi, lo = p.max(axis=1), p.min(axis=1)
    fix = (df["high"].to_numpy() != hi) | (df["low"].to_numpy() != lo)
    count("high_low_inconsistent", fix.sum())
    df = df.assign(high=hi, low=lo)
    neg = df["volume"] < 0
    count("negative_volume", neg.sum())
    df.loc[neg, "volume"] = 0.0
    return df, report
