"""Gap-analysis benchmark: the rule-based NYSE calendar KTRDR had (the baseline, kept below) against the
exchange-calendars one in ktrdr.data.calendar, same run, same stored series.

The workload is what a `full` load does before fetching anything: expected_bar_starts + find_gaps over
ten years of 1m bars (AAPL: ~1M bars; EURUSD: ~3.7M, whose calendar did not change: a control). The
stored series is the new calendar's bars (what IB returns) with 40 holes cut into it. Rounds alternate
before/after so machine noise hits both alike; medians are reported. The first call in a fresh process
(package import + calendar build) is measured in a subprocess of its own.

Besides time it reports what the rules got wrong over the range: bars they expect that never exist
(unscheduled closures, the afternoons of half days) and the IB requests a load would plan for them
again on every run.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd

from ktrdr.data.calendar import Instrument, expected_bar_starts, lookup, nyse_calendar, to_utc
from ktrdr.data.gaps import Gap, find_gaps
from ktrdr.data.planning import plan_segments
from ktrdr.data.timeframes import Timeframe, parse_timeframe

START, END = "2015-06-01", "2025-06-01"  # contains the 2018-12-05 and 2025-01-09 closures
ROUNDS = 7
HOLES = 40


# --- baseline: the rule-based calendar and find_gaps as they were before exchange-calendars ----------
def _nth_weekday(year: int, month: int, weekday: int, n: int) -> date:
    if n > 0:
        first = date(year, month, 1)
        return first + timedelta(days=(weekday - first.weekday()) % 7 + 7 * (n - 1))
    nxt = date(year + (month == 12), month % 12 + 1, 1)
    last = nxt - timedelta(days=1)
    return last - timedelta(days=(last.weekday() - weekday) % 7)


def _easter(year: int) -> date:
    a = year % 19
    b, c = divmod(year, 100)
    d, e = divmod(b, 4)
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    ell = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * ell) // 451
    month, day = divmod(h + ell - 7 * m + 114, 31)
    return date(year, month, day + 1)


def _observed(d: date) -> date:
    return d - timedelta(days=1) if d.weekday() == 5 else d + timedelta(days=1) if d.weekday() == 6 else d


def rules_holidays(year: int) -> frozenset[date]:
    days: set[date] = set()
    if date(year, 1, 1).weekday() != 5:
        days.add(_observed(date(year, 1, 1)))
    days.add(_nth_weekday(year, 1, 0, 3))
    days.add(_nth_weekday(year, 2, 0, 3))
    days.add(_easter(year) - timedelta(days=2))
    days.add(_nth_weekday(year, 5, 0, -1))
    if year >= 2022:
        days.add(_observed(date(year, 6, 19)))
    days.add(_observed(date(year, 7, 4)))
    days.add(_nth_weekday(year, 9, 0, 1))
    days.add(_nth_weekday(year, 11, 3, 4))
    days.add(_observed(date(year, 12, 25)))
    return frozenset(days)


def rules_expected_bar_starts(inst: Instrument, tf: str, start: str, end: str) -> pd.DatetimeIndex:
    """The old expected_bar_starts, intraday stock path only (the one this benchmark exercises)."""
    assert inst.kind == "stock"
    step = parse_timeframe(tf).seconds * 1_000_000_000
    s, e = to_utc(start), to_utc(end)
    first = s.tz_convert(inst.tz).tz_localize(None).normalize() - pd.Timedelta(days=1)
    last = e.tz_convert(inst.tz).tz_localize(None).normalize() + pd.Timedelta(days=1)
    days = pd.date_range(first, last, freq="D")
    holidays: set[date] = set()
    for y in range(days[0].year, days[-1].year + 1):
        holidays |= rules_holidays(y)
    hol = np.array(sorted(holidays), dtype="datetime64[D]")
    keep = (days.day_of_week < 5) & ~np.isin(days.values.astype("datetime64[D]"), hol)
    sdays = days[keep]
    opens = (sdays + pd.Timedelta(hours=9, minutes=30)).tz_localize(inst.tz).tz_convert("UTC").as_unit("ns").asi8
    closes = (sdays + pd.Timedelta(hours=16)).tz_localize(inst.tz).tz_convert("UTC").as_unit("ns").asi8
    n = int(((closes - opens + step - 1) // step).max())
    grid = opens[:, None] + np.arange(n, dtype=np.int64)[None, :] * step
    values = grid[grid < closes[:, None]]
    values = values[(values >= s.value) & (values < e.value)]
    values.sort()
    return pd.DatetimeIndex(pd.to_datetime(values, unit="ns", utc=True), name="timestamp")


def old_find_gaps(stored: pd.DatetimeIndex, expected: pd.DatetimeIndex, tf: str) -> list[Gap]:
    """The old find_gaps body (np.isin), given the expected bars."""
    have = np.isin(expected.asi8, stored.as_unit("ns").asi8)
    pos = np.flatnonzero(~have)
    if len(pos) == 0:
        return []
    breaks = np.flatnonzero(np.diff(pos) != 1)
    firsts = np.concatenate(([pos[0]], pos[breaks + 1]))
    lasts = np.concatenate((pos[breaks], [pos[-1]]))
    step = pd.Timedelta(seconds=parse_timeframe(tf).seconds)
    return [Gap(expected[f], expected[la] + step, int(la - f + 1)) for f, la in zip(firsts, lasts, strict=True)]


# --- the benchmark ----------------------------------------------------------------------------------
def _stored(inst: Instrument) -> pd.DatetimeIndex:
    full = expected_bar_starts(inst, "1m", START, END)
    rng = np.random.default_rng(13)
    drop = np.zeros(len(full), dtype=bool)
    for at in rng.integers(0, len(full) - 400, HOLES):
        drop[at : at + int(rng.integers(1, 400))] = True
    return full[~drop]


def _cold_first_call(fn: str) -> float:
    """Seconds for the first expected-bars call in a fresh process, imports included (for the library:
    exchange-calendars' import and the XNYS build)."""
    code = (
        "import time; t=time.perf_counter()\n"
        "from ktrdr.data.calendar import lookup\n"
        f"from {fn.rsplit('.', 1)[0]} import {fn.rsplit('.', 1)[1]} as f\n"
        f"f(lookup('AAPL'), '1m', '{START}', '{END}')\n"
        "print(time.perf_counter()-t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def _rounds(fn_before: Any, fn_after: Any) -> tuple[list[float], list[float]]:
    before, after = [], []
    for _ in range(ROUNDS):
        for fn, out in ((fn_before, before), (fn_after, after)):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return before, after


def _phantoms(inst: Instrument) -> dict[str, Any]:
    old = rules_expected_bar_starts(inst, "1m", START, END)
    new = expected_bar_starts(inst, "1m", START, END)
    phantom = old.difference(new)  # bars the rules expect and IB never has
    # A complete store (every bar IB has): the rules still see gaps, and plan requests for them.
    gaps = old_find_gaps(new, old, "1m")
    segments = plan_segments(gaps, Timeframe.M1, bar_starts=old)
    closures = sorted({t.date() for t in nyse_calendar().adhoc_holidays if START <= str(t.date()) < END})
    return {
        "phantom_bars": len(phantom),
        "phantom_days": len(set(phantom.tz_convert(inst.tz).date)),
        "phantom_gaps": len(gaps),
        "phantom_ib_requests_per_load": len(segments),
        "unscheduled_closures": ", ".join(map(str, closures)),
        "missing_bars_of_rules": len(new.difference(old)),  # bars the rules would never fetch
    }


async def main() -> dict[str, Any]:
    cold: dict[str, Any] = {}
    for label, fn in (("before", "bench.calendar.rules_expected_bar_starts"),
                      ("after", "ktrdr.data.calendar.expected_bar_starts")):
        cold[f"{label}_median_s"] = statistics.median(_cold_first_call(fn) for _ in range(3))
    out: dict[str, Any] = {"AAPL first call in a fresh process, imports included": cold}
    for symbol in ("AAPL", "EURUSD"):
        inst = lookup(symbol)
        assert inst is not None
        stored = _stored(inst)
        # The forex week did not change: its baseline is the old find_gaps on today's calendar.
        old_calendar = rules_expected_bar_starts if inst.kind == "stock" else expected_bar_starts

        def before_fn(inst: Instrument = inst, stored: pd.DatetimeIndex = stored, cal: Any = old_calendar) -> list:
            return old_find_gaps(stored, cal(inst, "1m", START, END), "1m")

        def after_fn(inst: Instrument = inst, stored: pd.DatetimeIndex = stored) -> list:
            return find_gaps(stored, inst, "1m", START, END)

        before, after = _rounds(before_fn, after_fn)
        # The calendar alone (expected_bar_starts), to tell its share from find_gaps' own.
        cal_before, cal_after = _rounds(
            lambda inst=inst, cal=old_calendar: cal(inst, "1m", START, END),
            lambda inst=inst: expected_bar_starts(inst, "1m", START, END),
        )
        fig: dict[str, Any] = {
            "bars_expected": len(expected_bar_starts(inst, "1m", START, END)),
            "gaps_found_after": len(after_fn()),
            "before_median_ms": statistics.median(before) * 1000,
            "after_median_ms": statistics.median(after) * 1000,
            "speedup": statistics.median(before) / statistics.median(after),
            "calendar_only_before_ms": statistics.median(cal_before) * 1000,
            "calendar_only_after_ms": statistics.median(cal_after) * 1000,
            "rounds": ROUNDS,
        }
        if inst.kind == "stock":
            fig["gaps_found_before"] = len(before_fn())
            fig.update(_phantoms(inst))
        out[f"{symbol} 1m {START}..{END}"] = fig
    return out

