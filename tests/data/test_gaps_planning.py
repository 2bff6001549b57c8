"""Gap analysis and load planning scenarios."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pandas as pd
import pytest

from ktrdr.data.calendar import DEFAULT_UNIVERSE, NEW_YORK, expected_bar_starts, nyse_calendar
from ktrdr.data.gaps import find_gaps
from ktrdr.data.planning import plan_segments, resolve_range
from ktrdr.data.timeframes import Timeframe, max_request
from ktrdr.errors import ValidationError

AAPL = DEFAULT_UNIVERSE["AAPL"]
NOW = pd.Timestamp("2024-06-28 20:00", tz="UTC")


def test_complete_series_over_a_weekend_has_no_gaps() -> None:
    idx = expected_bar_starts(AAPL, "1h", "2024-06-07", "2024-06-11")  # Fri .. Mon
    assert find_gaps(idx, AAPL, "1h", "2024-06-07", "2024-06-11") == []


def test_removed_contiguous_bars_are_found_as_one_gap() -> None:
    idx = expected_bar_starts(AAPL, "1h", "2024-06-03", "2024-06-08")
    removed = idx[10:15]  # crosses an overnight close: still contiguous in the calendar
    gaps = find_gaps(idx.difference(removed), AAPL, "1h", "2024-06-03", "2024-06-08")
    assert len(gaps) == 1
    assert gaps[0].start == removed[0] and gaps[0].missing_bars == 5
    assert gaps[0].end == removed[-1] + pd.Timedelta(hours=1)


def test_two_separate_holes_are_two_gaps() -> None:
    idx = expected_bar_starts(AAPL, "1d", "2024-01-01", "2024-04-01")
    gaps = find_gaps(idx.delete([3, 4, 20]), AAPL, "1d", "2024-01-01", "2024-04-01")
    assert [g.missing_bars for g in gaps] == [2, 1]


def _ib_like_hourly_bars(start: str, end: str, closed: set) -> pd.DatetimeIndex:
    """1h bars as IB returns them, built without the calendar under test: 09:30..15:30 New York on
    every weekday except the `closed` dates (so the test can catch a calendar that misses one)."""
    days = pd.bdate_range(start, end, inclusive="left")
    days = days[~days.to_series().dt.date.isin(closed).to_numpy()]
    hours = [pd.Timedelta(hours=9, minutes=30) + pd.Timedelta(hours=h) for h in range(7)]
    local = pd.DatetimeIndex([d + h for d in days for h in hours]).tz_localize(NEW_YORK)
    return local.tz_convert("UTC")


# The library's own unscheduled closures since 2000, with the week around each as the analysed range.
_CLOSURES = sorted({t.date() for t in nyse_calendar().adhoc_holidays if t.year >= 2000 and t.weekday() < 5})


@pytest.mark.parametrize("day", _CLOSURES)
def test_gap_analysis_plans_no_segment_for_an_unscheduled_closure(day) -> None:
    start, end = str(day - timedelta(days=5)), str(day + timedelta(days=9))
    # The days IB has no bars for, from the library's own tables (2007-01-02's week has New Year too).
    regular = nyse_calendar().regular_holidays.holidays(start, end, return_name=False)
    closed = {d for d in _CLOSURES if start <= str(d) < end} | set(regular.date)
    stored = _ib_like_hourly_bars(start, end, closed)
    assert len(stored) > 0
    gaps = find_gaps(stored, AAPL, "1h", start, end)
    assert gaps == []
    assert plan_segments(gaps, Timeframe.H1, bar_starts=expected_bar_starts(AAPL, "1h", start, end)) == []
    # A real hole around the closure is still found, and its request starts at a real bar.
    hole = stored[stored.tz_convert(NEW_YORK).date > max(closed)][:3]
    gaps = find_gaps(stored.difference(hole), AAPL, "1h", start, end)
    assert [(g.start, g.missing_bars) for g in gaps] == [(hole[0], 3)]


def test_unsorted_stored_index_finds_the_same_gaps() -> None:
    idx = expected_bar_starts(AAPL, "1h", "2024-06-03", "2024-06-08")
    kept = idx.delete([4, 5, 20])
    assert find_gaps(kept[::-1], AAPL, "1h", "2024-06-03", "2024-06-08") == find_gaps(
        kept, AAPL, "1h", "2024-06-03", "2024-06-08"
    )
    assert find_gaps(idx[:0], AAPL, "1h", "2024-06-03", "2024-06-08")[0].missing_bars == len(idx)


@pytest.mark.parametrize("tf", list(Timeframe))
def test_segments_never_exceed_max_request(tf: Timeframe) -> None:
    span = max_request(tf) * 3.5
    segs = plan_segments([(NOW - span, NOW)], tf)
    assert len(segs) == 4
    assert all(s.end - s.start <= max_request(tf) for s in segs)
    assert segs[0].start == NOW - span and segs[-1].end == NOW
    assert [s.index for s in segs] == [1, 2, 3, 4]
    assert all(a.end == b.start for a, b in itertools.pairwise(segs))


def test_small_neighbouring_gaps_share_one_request() -> None:
    day = pd.Timedelta(days=1)
    ranges = [(NOW - 5 * day, NOW - 4 * day), (NOW - 2 * day, NOW - day)]
    assert len(plan_segments(ranges, Timeframe.H1)) == 1
    assert len(plan_segments(ranges, Timeframe.M1)) == 2


def test_full_start_before_head_is_clamped_to_head() -> None:
    head = pd.Timestamp("2020-01-02", tz="UTC")
    s, e = resolve_range("full", None, head, "2010-01-01", "2024-01-01", NOW)
    assert s == head and e == pd.Timestamp("2024-01-01", tz="UTC")


def test_tail_with_nothing_stored_covers_thirty_days() -> None:
    s, e = resolve_range("tail", None, None, None, None, NOW)
    assert e == NOW and e - s == timedelta(days=30)


def test_tail_starts_at_last_stored_bar() -> None:
    stored = (pd.Timestamp("2024-01-02", tz="UTC"), pd.Timestamp("2024-06-01", tz="UTC"))
    assert resolve_range("tail", stored, None, None, None, NOW) == (stored[1], NOW)


def test_backfill_ends_at_first_stored_bar() -> None:
    stored = (pd.Timestamp("2024-01-02", tz="UTC"), pd.Timestamp("2024-06-01", tz="UTC"))
    head = pd.Timestamp("2023-01-03", tz="UTC")
    assert resolve_range("backfill", stored, head, None, None, NOW) == (head, stored[0])


@pytest.mark.parametrize(
    ("start", "end"),
    [("2024-02-01", "2024-01-01"), ("2024-01-01", "2030-01-01"), ("not a date", None), ("2024-01-01", "2024-01-01")],
)
def test_bad_dates_are_rejected(start: str, end: str | None) -> None:
    with pytest.raises(ValidationError):
        resolve_range("full", None, None, start, end, NOW)


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValidationError, match="tail"):
        resolve_range("sideways", None, None, None, None, NOW)
