"""A worker whose clock is an hour ahead (libfaketime) holds a long operation next to a normal
worker: it is not taken over while it runs; killed with SIGKILL, the normal worker takes the
operation over and completes it; two starts, one terminal event, nothing of the normal worker before
the kill (bench/nemesis/clock.py does the round). Skipped without libfaketime."""

from __future__ import annotations

import pytest

from bench.nemesis import clock

pytestmark = pytest.mark.skipif(clock.unavailable() is not None, reason=str(clock.unavailable()))


@pytest.mark.slow
@pytest.mark.parametrize("skew", ["+1h"])  # -1h and a 2x rate: python -m bench nemesis (clock_skew)
async def test_a_skewed_holder_is_taken_over_only_after_it_is_killed_and_nothing_runs_twice(skew: str) -> None:
    row = await clock.clock_skew(skew)
    assert row["ok"], row["notes"]
    assert row["lost"] == 0, row
