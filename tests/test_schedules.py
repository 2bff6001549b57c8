"""ktrdr/schedules.py without a server: what each overlap policy decides, when a firing is a catch-up,
and the checks `ktrdr schedule add` runs on its options (the server's own refusals are tested against a
real server in tests/cli/test_schedule_cli.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from events.messages import RunDummy, Schedule
from ktrdr import schedules
from ktrdr.errors import ValidationError

T0 = datetime(2026, 12, 3, 22, 30, tzinfo=UTC)


@pytest.mark.parametrize(("overlap", "running", "buffered", "expected"), [
    ("skip", None, False, "start"), ("skip", "dummy-x", False, "skip"),
    ("buffer-one", None, False, "start"), ("buffer-one", "dummy-x", False, "buffer"),
    ("buffer-one", "dummy-x", True, "skip"),
    ("allow", "dummy-x", True, "start"),
])
def test_overlap_policies_decide_as_temporal_does(overlap, running, buffered, expected):
    assert schedules.decide(overlap, running, buffered) == expected


def test_a_firing_later_than_the_announced_time_is_a_catch_up_and_counts_the_missed_times():
    assert not schedules.is_catch_up(T0, None)
    assert not schedules.is_catch_up(T0 + timedelta(seconds=0.3), T0)
    assert schedules.is_catch_up(T0 + timedelta(seconds=4), T0)
    assert schedules.missed_count(T0 + timedelta(seconds=4), T0, "@every 1s") == 4
    assert schedules.missed_count(T0 + timedelta(hours=1), T0, "0 30 22 * * *") == 0  # a cron: unknown


@pytest.mark.parametrize(("text", "spec"), [("1s", "@every 1s"), ("15m", "@every 15m"), ("1h30m", "@every 1h30m"),
                                            ("1d", "@every 24h"), ("90s", "@every 1m30s")])
def test_every_durations_become_the_servers_pattern(text, spec):
    assert schedules.spec_from(None, text, None) == spec
    assert schedules.interval_s(spec) == schedules.every_seconds(text)


@pytest.mark.parametrize("call", [
    lambda: schedules.check_name("Nightly"), lambda: schedules.check_name("a.b"), lambda: schedules.check_name(""),
    lambda: schedules.check_name("x" * 33), lambda: schedules.every_seconds("0s"),
    lambda: schedules.every_seconds("500ms"), lambda: schedules.every_seconds("400d"),
    lambda: schedules.check_cron("0 0 * * *"), lambda: schedules.check_cron("0 0 0 * * * *"),
    lambda: schedules.check_cron("0 0 0 * * $(rm)"), lambda: schedules.check_tz("Mars/Olympus"),
    lambda: schedules.check_tz("../etc/localtime"), lambda: schedules.check_overlap("sometimes"),
    lambda: schedules.spec_from("0 0 0 * * *", "1s", None), lambda: schedules.spec_from(None, None, None),
    lambda: schedules.spec_from(None, "1s", "UTC"),
])
def test_bad_schedule_options_are_validation_errors(call):
    with pytest.raises(ValidationError):
        call()


def test_a_paused_or_removed_definition_carries_no_schedule_headers():
    s = Schedule(name="n", spec="0 30 22 * * 1-5", tz="America/New_York",
                 command=RunDummy(op_id="dummy-20260101T000000000000-000000"))
    assert schedules.definition_headers(s) == {"Nats-Rollup": "sub", "Nats-Schedule": "0 30 22 * * 1-5",
                                               "Nats-Schedule-Target": "sched.fire.n",
                                               "Nats-Schedule-Time-Zone": "America/New_York"}
    s.paused = True
    assert schedules.definition_headers(s) == {"Nats-Rollup": "sub"}
    s.paused, s.removed = False, True
    assert schedules.definition_headers(s) == {"Nats-Rollup": "sub"}
