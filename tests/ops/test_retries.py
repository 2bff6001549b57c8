"""Retry policies, pure (ktrdr.ops.retries): Temporal's waits (1 s, x2, at most 100 s or what the
command says), attempts per domain unless the command says, capped by KTRDR_MAX_DELIVER, only
retryable codes, and none past the deadline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from events import subjects
from events.bounds import DEFAULT_RETRIES
from events.messages import LoadData, RunDummy, StartTraining
from ktrdr.ops import retries

NOW = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)


def load(**kw: object) -> LoadData:
    return LoadData(op_id=subjects.new_op_id("data"), symbol="AAPL", **kw)  # type: ignore[arg-type]


def test_the_waits_double_from_one_second_up_to_the_maximum_interval() -> None:
    p = retries.policy_for(load(retries=10), max_deliver=100)
    assert [p.wait_after(n) for n in range(1, 10)] == [1, 2, 4, 8, 16, 32, 64, 100, 100]
    short = retries.policy_for(load(retries=10, retry_max_interval_s=5.0), max_deliver=100)
    assert [short.wait_after(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]


def test_attempts_are_the_domains_default_unless_the_command_says_and_max_deliver_caps_them() -> None:
    assert retries.policy_for(load(), 100).max_attempts == DEFAULT_RETRIES["data"] + 1
    assert retries.policy_for(RunDummy(op_id=subjects.new_op_id("dummy")), 100).max_attempts == 1
    assert retries.policy_for(StartTraining(op_id=subjects.new_op_id("training"), retries=0), 100).max_attempts == 1
    assert retries.policy_for(load(retries=9), 100).max_attempts == 10
    assert retries.policy_for(load(retries=9), 5).max_attempts == 5  # every attempt is a delivery


def test_only_a_retryable_failure_with_attempts_left_before_the_deadline_is_retried() -> None:
    p = retries.policy_for(load(retries=4), 100)
    assert retries.next_attempt(p, 1, "disconnected", NOW, None) == 1.0
    assert retries.next_attempt(p, 3, "disconnected", NOW, None) == 4.0
    assert retries.next_attempt(p, 5, "disconnected", NOW, None) is None  # the fifth was the last
    for code in ("validation", "unknown_symbol", "cancelled", "data", "internal"):
        assert retries.next_attempt(p, 1, code, NOW, None) is None
    assert retries.next_attempt(p, 3, "disconnected", NOW, NOW + timedelta(seconds=3)) is None  # 4 s > deadline
    assert retries.next_attempt(p, 3, "disconnected", NOW, NOW + timedelta(seconds=5)) == 4.0


def test_the_announcement_says_which_attempt_of_how_many_in_how_long_and_why() -> None:
    p = retries.policy_for(load(retries=4), 100)
    assert retries.announce(p, 1, 4.0, "IB gateway disconnected") == "attempt 2 of 5 in 4 s: IB gateway disconnected"


def test_nats_unavailable_for_a_step_is_a_typed_retryable_failure_and_nothing_else_is() -> None:
    from nats import errors as nats_errors
    from nats.js import errors as js_errors

    from ktrdr.transport.connection import unavailable

    p = retries.policy_for(load(retries=4), 100)
    assert retries.next_attempt(p, 1, "nats_unavailable", NOW, None) == 1.0
    for exc in (nats_errors.TimeoutError(), nats_errors.NoRespondersError(), nats_errors.ConnectionClosedError(),
                js_errors.ServiceUnavailableError(code=503, description="JetStream system temporarily unavailable")):
        typed = unavailable(exc)
        assert typed is not None and typed.code == "nats_unavailable", exc
        assert str(typed).startswith(f"NATS unavailable: {type(exc).__name__}")
    try:  # raised from inside another error (a store that wraps the server's timeout)
        try:
            raise nats_errors.TimeoutError
        except nats_errors.TimeoutError as inner:
            raise RuntimeError("writing BARS failed") from inner
    except RuntimeError as outer:
        assert unavailable(outer) is not None
    for other in (ValueError("bad"), TimeoutError(), KeyError("x"), js_errors.NotFoundError()):
        assert unavailable(other) is None, other  # a bug, a plain timeout, a missing key: not NATS away
