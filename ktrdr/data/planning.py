"""Load planning: the range a load mode covers and the IB-sized segments that fetch it.

Modes (as in KTRDR):
- local: no fetching; the range is only reported.
- tail: from the last stored bar (or end - 30 days when nothing is stored) to end (default now).
- backfill: from the head timestamp (or the requested start) up to the first stored bar; to end when
  nothing is stored.
- full: from the head timestamp (or the requested start) to end; every gap inside is fetched.
Requested starts are clamped to IB's head timestamp (no data exists before it). When neither a start
nor a head timestamp is known, backfill/full go back DEFAULT_LOOKBACK.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, TypeAlias

import pandas as pd

from ktrdr.data.calendar import to_utc
from ktrdr.data.gaps import Gap
from ktrdr.data.timeframes import Timeframe, ib_duration_str, max_request
from ktrdr.errors import ValidationError

Mode = Literal["local", "tail", "backfill", "full"]
MODES: tuple[str, ...] = ("local", "tail", "backfill", "full")
TAIL_DEFAULT = timedelta(days=30)
DEFAULT_LOOKBACK = timedelta(days=365)
# An end beyond now + this is a typo, not a request (bars in the future do not exist).
FUTURE_TOLERANCE = timedelta(days=1)

TimeLike: TypeAlias = datetime | pd.Timestamp | str


@dataclass(frozen=True)
class Segment:
    index: int  # 1-based, as shown to users ("segment 3/5")
    start: pd.Timestamp
    end: pd.Timestamp  # exclusive

    @property
    def ib_duration(self) -> str:
        return ib_duration_str(self.end - self.start)


def parse_mode(mode: str) -> Mode:
    m = str(mode).strip().lower()
    if m not in MODES:
        raise ValidationError(f"unknown load mode {mode!r}", hint=f"one of {', '.join(MODES)}")
    return m  # type: ignore[return-value]


def resolve_range(
    mode: str,
    stored_range: tuple[pd.Timestamp, pd.Timestamp] | None,
    head: TimeLike | None,
    start: TimeLike | None,
    end: TimeLike | None,
    now: TimeLike | None = None,
) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The UTC [start, end) a load in `mode` covers. May be empty (start == end): nothing to fetch.

    Raises ValidationError for unparseable or naive-garbage dates, start >= end as requested, and an
    end more than a day in the future."""
    m = parse_mode(mode)
    now_ts = to_utc(now, "now") if now is not None else pd.Timestamp.now(tz="UTC")
    req_start = to_utc(start, "start") if start is not None else None
    req_end = to_utc(end, "end") if end is not None else None
    if req_start is not None and req_end is not None and req_start >= req_end:
        raise ValidationError(f"start {req_start} is not before end {req_end}")
    if req_end is not None and req_end > now_ts + FUTURE_TOLERANCE:
        raise ValidationError(f"end {req_end} is in the future", hint=f"now is {now_ts}")
    if req_start is not None and req_start >= now_ts:
        raise ValidationError(f"start {req_start} is in the future", hint=f"now is {now_ts}")
    e = min(req_end, now_ts) if req_end is not None else now_ts
    head_ts = to_utc(head, "head timestamp") if head is not None else None

    def clamp(t: pd.Timestamp) -> pd.Timestamp:
        return max(t, head_ts) if head_ts is not None else t

    if m == "local":
        s = req_start if req_start is not None else (stored_range[0] if stored_range else e)
        if req_end is None and stored_range:
            e = stored_range[1] + pd.Timedelta(microseconds=1)  # include the last stored bar
    elif m == "tail":
        if stored_range is not None:
            s = stored_range[1]
            if req_start is not None:
                s = max(s, req_start)
        else:
            s = req_start if req_start is not None else e - TAIL_DEFAULT
        s = clamp(s)
    else:
        if req_start is not None:
            s = clamp(req_start)
        elif head_ts is not None:
            s = head_ts
        else:
            s = e - DEFAULT_LOOKBACK
        if m == "backfill" and stored_range is not None:
            e = min(e, stored_range[0])
    return (s, e) if s < e else (s, s)


def plan_segments(
    ranges: list[Gap] | list[tuple[pd.Timestamp, pd.Timestamp]],
    tf: Timeframe,
    coalesce: bool = True,
    bar_starts: pd.DatetimeIndex | None = None,
) -> list[Segment]:
    """IB requests covering `ranges`, none longer than max_request(tf), numbered from 1 in time order.

    With `bar_starts` (the expected bars, calendar.expected_bar_starts), each segment starts at the
    next expected bar, so no request is spent on a weekend or holiday with no bars in it.
    With `coalesce`, neighbouring ranges that fit together in one request share it (many small gaps
    would otherwise cost one paced IB request each); re-fetched stored bars are deduplicated by merge."""
    spans = sorted(
        (to_utc(r.start), to_utc(r.end)) if isinstance(r, Gap) else (to_utc(r[0]), to_utc(r[1])) for r in ranges
    )
    spans = [(s, e) for s, e in spans if s < e]
    limit = pd.Timedelta(max_request(tf))
    merged: list[tuple[pd.Timestamp, pd.Timestamp]] = []
    for s, e in spans:
        if merged and coalesce and e - merged[-1][0] <= limit:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    out: list[Segment] = []
    for s, e in merged:
        t = s
        while t < e:
            if bar_starts is not None:
                i = bar_starts.searchsorted(t)
                if i >= len(bar_starts) or bar_starts[i] >= e:
                    break
                t = bar_starts[i]
            nxt = min(t + limit, e)
            out.append(Segment(len(out) + 1, t, nxt))
            t = nxt
    return out
