"""Indicator benchmark: KTRDR's indicators (ktrdr.training.indicators) against TA-Lib on ~1M bars.

For each indicator: the median time of ours and of TA-Lib's over a few rounds (alternating, same
run), and the largest relative difference after the warm-up (30 periods, where the seeding of the
recursive ones has decayed below 1e-13; near zero, relative to the series' median magnitude). For
the ones that differ on purpose the figure is taken on the documented relationship (OBV's offset).
It also reports what TA-Lib costs to have: its import time in a fresh process and its installed
size. Bars: the simulated gateway's AAPL 1m bars over ten years (977,640 bars, seeded).
"""

from __future__ import annotations

import importlib.metadata
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from ktrdr.data.calendar import lookup
from ktrdr.ib.sim import generate_bars
from ktrdr.training import indicators as ind

ROUNDS = 5
WARMUP = 30 * 26  # 30 of the longest period used below (MACD's slow EMA)


def _bars() -> pd.DataFrame:
    inst = lookup("AAPL")
    assert inst is not None
    return generate_bars(inst, "1m", datetime(2014, 1, 1, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC))


def _cases(df: pd.DataFrame, talib: Any) -> dict[str, tuple[Callable[[], Any], Callable[[], Any], Any]]:
    """name -> (ours, TA-Lib's, how to compare: a function (ours, theirs) -> (a, b) arrays)."""
    h, low, c, v = (df[k].to_numpy() for k in ("high", "low", "close", "volume"))
    close = df["close"]
    same = lambda a, b: (np.asarray(a, dtype=float), np.asarray(b, dtype=float))  # noqa: E731
    first = lambda a, b: (np.asarray(a[0], dtype=float), np.asarray(b[0], dtype=float))  # noqa: E731
    bb_std = lambda a, b: (np.asarray(a["upper"] - a["middle"]), b[0] - b[1])  # noqa: E731
    obv_offset = lambda a, b: (np.asarray(a, dtype=float), b - v[0])  # noqa: E731
    return {
        "sma(20)": (lambda: ind.sma(close, 20), lambda: talib.SMA(c, 20), same),
        "ema(20)": (lambda: ind.ema(close, 20), lambda: talib.EMA(c, 20), same),
        "rsi(14)": (lambda: ind.rsi(close, 14), lambda: talib.RSI(c, 14), same),
        "macd(12,26,9)": (lambda: ind.macd(close), lambda: talib.MACD(c, 12, 26, 9), first),
        "bbands(20,2) 2*std": (lambda: ind.bollinger(close), lambda: talib.BBANDS(c, 20, 2.0, 2.0, 0), bb_std),
        "atr(14)": (lambda: ind.atr(df, 14), lambda: talib.ATR(h, low, c, 14), same),
        "roc(10)": (lambda: ind.roc(close, 10), lambda: talib.ROC(c, 10), same),
        "obv": (lambda: ind.obv(df), lambda: talib.OBV(c, v), obv_offset),
        "mfi(14)": (lambda: ind.mfi(df, 14), lambda: talib.MFI(h, low, c, v, 14), same),
    }


def _max_rel(a: np.ndarray, b: np.ndarray) -> str:
    """Largest |a - b| relative to |b|, or to the series' median magnitude where b is near zero
    (MACD, MFI and ROC cross or touch 0, where a relative difference means nothing)."""
    a, b = a[WARMUP:], b[WARMUP:]
    ok = ~(np.isnan(a) | np.isnan(b))
    floor = np.median(np.abs(b[ok]))
    return f"{np.max(np.abs(a[ok] - b[ok]) / np.maximum(np.abs(b[ok]), floor)):.1e}"


def _cost() -> dict[str, Any]:
    code = "import time; t=time.perf_counter(); import talib; print(time.perf_counter()-t)"
    imports = [
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
        for _ in range(3)
    ]
    files = importlib.metadata.files("ta-lib") or []
    size = sum(f.size or 0 for f in files)
    return {"version": importlib.metadata.version("ta-lib"), "import_median_s": statistics.median(imports),
            "installed_mb": size / 1e6}


async def main() -> dict[str, Any]:
    try:
        import talib
    except ImportError:
        return {"skipped": {"reason": "ta-lib is not installed (pip install ta-lib)"}}
    df = _bars()
    out: dict[str, Any] = {"bars": {"count": len(df)}, "ta-lib": _cost()}
    for name, (ours, theirs, compare) in _cases(df, talib).items():
        t_ours, t_theirs = [], []
        for _ in range(ROUNDS):
            for fn, times in ((ours, t_ours), (theirs, t_theirs)):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
        a, b = compare(ours(), theirs())
        out[name] = {
            "ours_ms": statistics.median(t_ours) * 1000,
            "talib_ms": statistics.median(t_theirs) * 1000,
            "talib_speedup": statistics.median(t_ours) / statistics.median(t_theirs),
            "max_rel_diff_after_warmup": _max_rel(a, b),
        }
    return out
