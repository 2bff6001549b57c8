"""Synthetic and replayed bars for the simulated gateway.

`generate_bars` is a pure function of (instrument, timeframe, bar timestamps, seed): every bar is
derived from a per-minute price path that is itself seeded per (symbol, seed, UTC day), chained
between deterministic daily anchors. So the same bar is bit-identical whatever request range contains
it, and bars of different timeframes agree with each other (a 1h bar spans the same minutes as its
1m bars). Which bars exist is `expected_bar_starts`' decision, never this module's: the sim has no
bars on the library calendar's holidays and unscheduled closures and stops at 13:00 New York on half
days, exactly where gap analysis expects none, so a sim load never plans requests for missing bars.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from ktrdr.data.calendar import Instrument, expected_bar_starts
from ktrdr.data.timeframes import Timeframe, parse_timeframe

COLUMNS = ["open", "high", "low", "close", "volume"]
_ANCHOR_ORIGIN = date(1990, 1, 1)
_ANCHOR_DAYS = 366 * 60  # anchors up to ~2050
_MINUTES = 1440


def _symbol_seed(symbol: str, seed: int) -> int:
    digest = hashlib.blake2b(f"{symbol}|{seed}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _is_forex(inst: Instrument) -> bool:
    return inst.kind == "forex"


def _base_price(inst: Instrument, seed: int) -> float:
    u = (_symbol_seed(inst.symbol, seed) % 10_000) / 10_000
    if _is_forex(inst):
        return 100.0 + 60.0 * u if inst.symbol.endswith("JPY") else 0.6 + 1.2 * u
    return 20.0 + 480.0 * u


@lru_cache(maxsize=256)
def _anchors(symbol: str, kind: str, base: float, seed: int) -> np.ndarray:
    """Log-price at 00:00 UTC of each day since _ANCHOR_ORIGIN: a mean-reverting random walk, so
    decades of synthetic history stay in a plausible price range."""
    rng = np.random.default_rng(_symbol_seed(symbol, seed))
    sigma = 0.006 if kind == "forex" else 0.015
    shocks = rng.normal(0.0, sigma, _ANCHOR_DAYS)
    theta = 0.002
    x = np.empty(_ANCHOR_DAYS + 1)
    x[0] = 0.0
    for i, e in enumerate(shocks):  # 22k steps once per symbol (cached): fine in pure Python
        x[i + 1] = x[i] * (1.0 - theta) + e
    return np.log(base) + x


@lru_cache(maxsize=4096)
def _day_path(symbol: str, kind: str, base: float, seed: int, day: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-minute prices (1441 points: 00:00 .. next 00:00) and volumes (1440) of one UTC day.
    A Brownian bridge between today's and tomorrow's anchors: seeded by the day alone."""
    anchors = _anchors(symbol, kind, base, seed)
    a0, a1 = anchors[day], anchors[day + 1]
    rng = np.random.default_rng([_symbol_seed(symbol, seed) % (2**63), day])
    sigma = (0.006 if kind == "forex" else 0.015) / np.sqrt(_MINUTES)
    w = np.concatenate([[0.0], np.cumsum(rng.normal(0.0, sigma, _MINUTES))])
    frac = np.arange(_MINUTES + 1) / _MINUTES
    logp = a0 + w - frac * w[-1] + frac * (a1 - a0)
    prices = np.exp(logp)
    prices = np.round(prices, 5 if kind == "forex" else 2)
    if kind == "forex":
        volume = np.zeros(_MINUTES)  # IB's MIDPOINT/BID bars carry no volume
    else:
        volume = np.floor(rng.lognormal(7.0, 0.8, _MINUTES))
    return prices, volume


def generate_bars(
    inst: Instrument,
    tf: Timeframe | str,
    start: datetime,
    end: datetime,
    seed: int = 0,
    *,
    starts: pd.DatetimeIndex | None = None,
) -> pd.DataFrame:
    """The simulated bars of `inst` at `tf` whose start lies in [start, end): exactly the timestamps of
    `expected_bar_starts` (or `starts` when given), UTC index "timestamp", float OHLCV columns."""
    tf = parse_timeframe(tf)
    if starts is None:
        starts = expected_bar_starts(inst, tf, _utc(start), _utc(end))
    if len(starts) == 0:
        return _empty()
    base = _base_price(inst, seed)
    origin = pd.Timestamp(_ANCHOR_ORIGIN, tz=UTC)
    secs = (starts - origin).total_seconds().to_numpy()
    first_min = (secs // 60).astype(np.int64)
    last_min = first_min + max(tf.seconds // 60, 1)  # index of the bar's closing minute mark
    day0 = int(first_min.min() // _MINUTES)
    day1 = int((last_min.max() - 1) // _MINUTES)
    if day0 < 0 or day1 + 1 >= _ANCHOR_DAYS:
        raise ValueError(f"simulated data covers {_ANCHOR_ORIGIN} to ~2050, not {starts[0]}..{starts[-1]}")
    prices_parts, vol_parts = [], []
    for d in range(day0, day1 + 1):
        p, v = _day_path(inst.symbol, inst.kind, base, seed, d)
        prices_parts.append(p[:-1])
        vol_parts.append(v)
    prices_parts.append(_day_path(inst.symbol, inst.kind, base, seed, day1)[0][-1:])
    prices = np.concatenate(prices_parts)
    cumvol = np.concatenate([[0.0], np.cumsum(np.concatenate(vol_parts))])
    i0 = first_min - day0 * _MINUTES
    i1 = last_min - day0 * _MINUTES
    opens = prices[i0]
    closes = prices[i1]
    highs = np.empty(len(i0))
    lows = np.empty(len(i0))
    for k, (a, b) in enumerate(zip(i0, i1, strict=True)):  # a few thousand bars per request at most
        seg = prices[a : b + 1]
        highs[k] = seg.max()
        lows[k] = seg.min()
    volume = cumvol[i1] - cumvol[i0]
    df = pd.DataFrame(
        {"open": opens, "high": highs, "low": lows, "close": closes, "volume": volume},
        index=pd.DatetimeIndex(starts, name="timestamp"),
    )
    return df.astype("float64")


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _empty() -> pd.DataFrame:
    return pd.DataFrame(
        {c: pd.Series(dtype="float64") for c in COLUMNS},
        index=pd.DatetimeIndex([], tz=UTC, name="timestamp"),
    )


class CsvBars:
    """Bars replayed from `{SYMBOL}_{tf}.csv` files (columns timestamp|date, open, high, low, close,
    volume; timestamps UTC or epoch seconds). A file, once read, is kept in memory."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._cache: dict[tuple[str, str], pd.DataFrame | None] = {}

    def get(self, symbol: str, tf: Timeframe) -> pd.DataFrame | None:
        key = (symbol, str(tf))
        if key not in self._cache:
            path = self.directory / f"{symbol}_{tf}.csv"
            self._cache[key] = self._read(path) if path.exists() else None
        return self._cache[key]

    @staticmethod
    def _read(path: Path) -> pd.DataFrame:
        raw = pd.read_csv(path)
        raw.columns = [c.strip().lower() for c in raw.columns]
        tcol = next(c for c in ("timestamp", "date", "datetime", "time") if c in raw.columns)
        t = raw[tcol]
        numeric = pd.api.types.is_numeric_dtype(t.dtype)
        idx = pd.to_datetime(t, unit="s", utc=True) if numeric else pd.to_datetime(t, utc=True)
        df = raw[COLUMNS].astype("float64")
        df.index = pd.DatetimeIndex(idx, name="timestamp")
        return df.sort_index()

    def bars(self, symbol: str, tf: Timeframe, start: datetime, end: datetime) -> pd.DataFrame | None:
        df = self.get(symbol, tf)
        if df is None:
            return None
        return df[(df.index >= pd.Timestamp(start)) & (df.index < pd.Timestamp(end))]


def trading_hours(inst: Instrument, now: datetime, days: int = 7) -> str:
    """IB's tradingHours string for the next `days` days, derived from the calendar's 30-minute bars
    ("20240102:0930-20240102:1600;20240106:CLOSED;..." in the instrument's time zone; half days end
    at 1300, closures are CLOSED)."""
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(inst.tz)
    local_today = now.astimezone(tz).date()
    start_local = datetime(local_today.year, local_today.month, local_today.day, tzinfo=tz)
    end_local = start_local + timedelta(days=days)
    tf = Timeframe.M30
    starts = expected_bar_starts(inst, tf, start_local.astimezone(UTC), end_local.astimezone(UTC))
    sessions: list[tuple[datetime, datetime]] = []
    for ts in starts:
        t = ts.to_pydatetime()
        if sessions and sessions[-1][1] == t:
            sessions[-1] = (sessions[-1][0], t + tf.delta)
        else:
            sessions.append((t, t + tf.delta))
    parts: list[str] = []
    open_days = set()
    for a, b in sessions:
        la, lb = a.astimezone(tz), b.astimezone(tz)
        open_days.add(la.date())
        parts.append(f"{la:%Y%m%d:%H%M}-{lb:%Y%m%d:%H%M}")
    for i in range(days):
        d = local_today + timedelta(days=i)
        if d not in open_days:
            parts.append(f"{d:%Y%m%d}:CLOSED")
    return ";".join(sorted(parts))
