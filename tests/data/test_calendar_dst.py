"""Regression: the bars of a range must not depend on the time of day the range starts at, also when
the day before the start is a DST change (found through a data load whose segment began at 14:30 UTC
on the Monday after the November 2022 change)."""

from __future__ import annotations

from datetime import UTC, datetime

from ktrdr.data.calendar import expected_bar_starts, lookup


def test_bars_do_not_depend_on_the_start_time_of_day_across_dst():
    aapl = lookup("AAPL")
    assert aapl is not None
    whole = expected_bar_starts(aapl, "1h", datetime(2022, 11, 7, tzinfo=UTC), datetime(2022, 11, 9, tzinfo=UTC))
    later = expected_bar_starts(aapl, "1h", datetime(2022, 11, 7, 14, 30, tzinfo=UTC),
                                datetime(2022, 11, 9, tzinfo=UTC))
    assert list(later) == list(whole)
    assert whole[0] == datetime(2022, 11, 7, 14, 30, tzinfo=UTC)  # 09:30 EST
