"""Technical indicators, vectorised over a bar frame, plus the registry strategies name them by.

Every indicator is causal: its value at bar t uses bars <= t only (rolling windows, recursive EWMs,
`diff`/`shift` with positive lags). That is what keeps the feature matrix free of look-ahead.
Single-output indicators produce one column named by the indicator id (`rsi`); multi-output ones
produce `{id}` (the primary output) plus `{id}_{output}` columns (`macd_signal`, `bbands_pctb`), and
fuzzy sets can refer to any of them.

TA-Lib is the field's reference; tests/training/test_indicators_talib.py holds every indicator to it,
value by value. Where KTRDR's definition differs on purpose (the seed of a recursive average, a
neutral 50 where TA-Lib says 0, OBV's starting level) the comment at the definition says so and the
test asserts the stated relationship instead. "Converges within 30 periods" means: the seeds differ,
the difference decays geometrically, and from 30 periods on the two agree to 1e-9 relative.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

SOURCES: tuple[str, ...] = ("open", "high", "low", "close", "volume")

Compute = Callable[[pd.DataFrame, dict[str, Any]], dict[str, pd.Series]]


@dataclass(frozen=True)
class ParamSpec:
    default: Any
    kind: str  # "period" (int >= 1), "float+" (> 0), "source"


@dataclass(frozen=True)
class IndicatorSpec:
    """One registry entry: parameters with defaults, output names (first = primary), the function."""

    name: str
    params: dict[str, ParamSpec]
    outputs: tuple[str, ...]  # "" is the primary output, named by the id alone
    compute: Compute
    aliases: dict[str, str] = field(default_factory=dict)  # KTRDR spellings -> our parameter names
    check: Callable[[dict[str, Any]], None] | None = None

    def validate(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Full parameter dict with defaults filled in; raises ValueError("param: problem")."""
        params: dict[str, Any] = {}
        for key, value in raw.items():
            name = self.aliases.get(key, key)
            if name not in self.params:
                known = ", ".join(sorted(self.params)) or "none"
                raise ValueError(f"{key}: unknown parameter for {self.name}; known: {known}")
            params[name] = _check_param(key, value, self.params[name].kind)
        for name, spec in self.params.items():
            params.setdefault(name, spec.default)
        if self.check is not None:
            self.check(params)
        return params


def _check_param(key: str, value: Any, kind: str) -> Any:
    if kind == "period":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}: must be a positive integer, got {value!r}")
        return value
    if kind == "float+":
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not np.isfinite(value)
            or value <= 0
        ):
            raise ValueError(f"{key}: must be a positive number, got {value!r}")
        return float(value)
    if kind == "source":
        if value not in SOURCES:
            raise ValueError(f"{key}: must be one of {', '.join(SOURCES)}, got {value!r}")
        return value
    raise AssertionError(kind)


# --------------------------------------------------------------------------------------------------
# Implementations (Series in, Series out; all causal)
# --------------------------------------------------------------------------------------------------
def _wilder(s: pd.Series, period: int) -> pd.Series:
    # Wilder's smoothing is an EWM with alpha = 1/period; min_periods hides the unsettled start.
    # Seeded with the first value (TA-Lib seeds with the simple average of the first `period`).
    return s.ewm(alpha=1.0 / period, adjust=False, min_periods=period).mean()


def rsi(close: pd.Series, period: int = 14) -> pd.Series:
    # vs TA-Lib RSI: same Wilder smoothing and first output bar (`period`), but seeded with the first
    # change, not the average of the first `period` changes: converges within 30 periods. A flat window
    # is 50 here (neutral, on purpose), 0 in TA-Lib.
    delta = close.diff()
    gain = _wilder(delta.clip(lower=0.0), period)
    loss = _wilder((-delta).clip(lower=0.0), period)
    total = gain + loss
    # A flat window (no gains, no losses) is neutral, not undefined.
    out = 100.0 * gain / total.where(total > 0)
    return out.where(total > 0, 50.0).where(gain.notna())


def sma(s: pd.Series, period: int) -> pd.Series:
    # Identical to TA-Lib SMA.
    return s.rolling(period, min_periods=period).mean()


def ema(s: pd.Series, period: int) -> pd.Series:
    # vs TA-Lib EMA: same alpha 2/(period+1) and first output bar (period-1), seeded with the first
    # value instead of the SMA of the first `period` (KTRDR's pandas definition): converges within
    # 30 periods.
    return s.ewm(span=period, adjust=False, min_periods=period).mean()


def macd(
    close: pd.Series, fast: int = 12, slow: int = 26, signal: int = 9
) -> tuple[pd.Series, pd.Series, pd.Series]:
    # vs TA-Lib MACD: built on our EMAs (see ema), so converges within 30 slow periods; the line
    # starts at bar slow-1 here, TA-Lib starts all three outputs at slow+signal-2.
    line = ema(close, fast) - ema(close, slow)
    sig = line.ewm(span=signal, adjust=False, min_periods=signal).mean()
    return line, sig, line - sig


def rolling_std(s: pd.Series, period: int) -> pd.Series:
    """Population standard deviation (ddof=0) of each `period`-bar window, computed two-pass per window.

    pandas' rolling std updates one running variance over the whole series and drifts: 3.8e-6 relative
    after 1M 1m bars; this is exact to the last bits (and ~3x slower, 0.1 s per 1M bars)."""
    x = s.to_numpy(dtype="float64")
    out = np.full(len(x), np.nan)
    if len(x) >= period:
        windows = np.lib.stride_tricks.sliding_window_view(x, period)
        step = max(1, (1 << 21) // period)  # ~16 MB of temporaries per block, whatever the length
        for a in range(0, len(windows), step):
            block = windows[a : a + step]
            dev = block - block.mean(axis=1, keepdims=True)
            out[period - 1 + a : period - 1 + a + len(block)] = np.sqrt((dev * dev).mean(axis=1))
    return pd.Series(out, index=s.index)


def bollinger(close: pd.Series, period: int = 20, k: float = 2.0) -> dict[str, pd.Series]:
    # Bands identical to TA-Lib BBANDS(matype=SMA, nbdevup=nbdevdn=k): both use the population std
    # (ddof=0). %b and width are KTRDR's, derived from the bands (TA-Lib has neither).
    mid = sma(close, period)
    std = rolling_std(close, period)
    upper, lower = mid + k * std, mid - k * std
    band = (upper - lower).where(upper > lower)
    return {
        "upper": upper,
        "middle": mid,
        "lower": lower,
        "pctb": ((close - lower) / band).fillna(0.5).where(mid.notna()),
        "width": band.fillna(0.0).where(mid.notna()) / mid,
    }


def atr(df: pd.DataFrame, period: int = 14) -> pd.Series:
    # vs TA-Lib ATR: same true range and Wilder smoothing, but the first bar's range (high - low, no
    # previous close) counts and seeds the average, so ours starts one bar earlier (period-1) and
    # converges within 30 periods.
    prev = df["close"].shift(1)
    tr = pd.concat([df["high"] - df["low"], (df["high"] - prev).abs(), (df["low"] - prev).abs()], axis=1).max(
        axis=1, skipna=True
    )
    return _wilder(tr, period)


def roc(s: pd.Series, period: int = 10) -> pd.Series:
    # Identical to TA-Lib ROC.
    return 100.0 * (s / s.shift(period) - 1.0)


def obv(df: pd.DataFrame) -> pd.Series:
    # vs TA-Lib OBV: ours starts at 0, TA-Lib at the first bar's volume: ours = TA-Lib - volume[0],
    # exactly (the level is arbitrary; starting at 0 does not depend on where the series begins).
    direction = np.sign(df["close"].diff().fillna(0.0))
    return (direction * df["volume"]).cumsum()


def mfi(df: pd.DataFrame, period: int = 14) -> pd.Series:
    # vs TA-Lib MFI: identical from bar `period` on; ours also has bar period-1 (the first bar's flow
    # counts as neither up nor down). Where the window has no money flow (forex: no volume) ours is
    # 50, neutral, on purpose; TA-Lib says 0 whenever the window's flow is below 1.
    tp = (df["high"] + df["low"] + df["close"]) / 3.0
    flow = tp * df["volume"]
    # Equal typical prices can differ in the last bit (the three prices summed to the same total by
    # other roundings): a change below 1e-12 of the price is no change (TA-Lib: below 1e-8).
    change = tp.diff()
    tiny = 1e-12 * tp.abs()
    up = change > tiny
    down = change < -tiny
    pos = flow.where(up, 0.0).rolling(period, min_periods=period).sum()
    neg = flow.where(down, 0.0).rolling(period, min_periods=period).sum()
    total = pos + neg
    return (100.0 * pos / total.where(total > 0)).where(total > 0, 50.0).where(pos.notna())


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------
def _period(default: int) -> ParamSpec:
    return ParamSpec(default, "period")


_SOURCE = ParamSpec("close", "source")


def _check_macd(p: dict[str, Any]) -> None:
    if p["fast_period"] >= p["slow_period"]:
        raise ValueError(f"fast_period: must be < slow_period ({p['slow_period']}), got {p['fast_period']}")


def _macd(df: pd.DataFrame, p: dict[str, Any]) -> dict[str, pd.Series]:
    line, sig, hist = macd(df[p["source"]], p["fast_period"], p["slow_period"], p["signal_period"])
    return {"": line, "signal": sig, "hist": hist}


def _bbands(df: pd.DataFrame, p: dict[str, Any]) -> dict[str, pd.Series]:
    b = bollinger(df[p["source"]], p["period"], p["multiplier"])
    # %b is the primary output: unlike the bands themselves it is comparable across symbols and prices.
    return {"": b["pctb"], **b}


_BB = IndicatorSpec(
    "bbands",
    {"period": _period(20), "multiplier": ParamSpec(2.0, "float+"), "source": _SOURCE},
    ("", "upper", "middle", "lower", "pctb", "width"),
    _bbands,
    aliases={"std_dev": "multiplier", "num_std": "multiplier"},
)

REGISTRY: dict[str, IndicatorSpec] = {
    "rsi": IndicatorSpec(
        "rsi",
        {"period": _period(14), "source": _SOURCE},
        ("",),
        lambda df, p: {"": rsi(df[p["source"]], p["period"])},
    ),
    "sma": IndicatorSpec(
        "sma",
        {"period": _period(20), "source": _SOURCE},
        ("",),
        lambda df, p: {"": sma(df[p["source"]], p["period"])},
    ),
    "ema": IndicatorSpec(
        "ema",
        {"period": _period(20), "source": _SOURCE},
        ("",),
        lambda df, p: {"": ema(df[p["source"]], p["period"])},
    ),
    "macd": IndicatorSpec(
        "macd",
        {
            "fast_period": _period(12),
            "slow_period": _period(26),
            "signal_period": _period(9),
            "source": _SOURCE,
        },
        ("", "signal", "hist"),
        _macd,
        check=_check_macd,
    ),
    "bbands": _BB,
    "bollinger_bands": _BB,
    "atr": IndicatorSpec("atr", {"period": _period(14)}, ("",), lambda df, p: {"": atr(df, p["period"])}),
    "roc": IndicatorSpec(
        "roc",
        {"period": _period(10), "source": _SOURCE},
        ("",),
        lambda df, p: {"": roc(df[p["source"]], p["period"])},
    ),
    "obv": IndicatorSpec("obv", {}, ("",), lambda df, p: {"": obv(df)}),
    "mfi": IndicatorSpec("mfi", {"period": _period(14)}, ("",), lambda df, p: {"": mfi(df, p["period"])}),
}


def output_columns(name: str, ind_id: str) -> list[str]:
    """Column names an indicator instance produces (primary first)."""
    return [ind_id if not out else f"{ind_id}_{out}" for out in REGISTRY[name].outputs]


def compute_indicator(bars: pd.DataFrame, name: str, ind_id: str, params: dict[str, Any]) -> pd.DataFrame:
    """One indicator's outputs as columns on the bars' index."""
    spec = REGISTRY[name]
    full = spec.validate(params)
    series = spec.compute(bars, full)
    return pd.DataFrame(
        {(ind_id if not out else f"{ind_id}_{out}"): s.astype("float64") for out, s in series.items()},
        index=bars.index,
    )


def compute_indicators(bars: pd.DataFrame, indicators: list[Any]) -> pd.DataFrame:
    """All of a strategy's indicators (`IndicatorConfig` objects) as one frame."""
    frames = [compute_indicator(bars, ind.name, ind.id, ind.params) for ind in indicators]
    return pd.concat(frames, axis=1) if frames else pd.DataFrame(index=bars.index)
