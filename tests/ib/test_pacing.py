"""PacingLimiter with scaled rules: waits exactly as long as IB's rules require, reports waits first,
stops at once on cancel."""

from __future__ import annotations

import asyncio
import time

import pytest

from ktrdr.cancellation import CancellationToken
from ktrdr.errors import OperationCancelledError
from ktrdr.ib.pacing import PacingLimiter, PacingRules, RequestKey, lower_bound_seconds
from ktrdr.ib.sim.enforcer import PacingEnforcer


def _key(i: int, contract: str = "265598") -> RequestKey:
    return RequestKey(contract, "SMART", "TRADES", f"end{i}")


async def test_burst_of_distinct_requests_obeys_every_rule_as_judged_by_the_gateway() -> None:
    rules = PacingRules(time_scale=0.05)  # burst window 0.1 s, 10-min window 30 s
    limiter = PacingLimiter(rules)
    judge = PacingEnforcer(rules)
    waits: list[tuple[float, str]] = []
    for i in range(12):
        await limiter.acquire(_key(i), on_wait=lambda s, why: waits.append((s, why)))
        now = time.monotonic()
        assert judge.violation(_key(i), now) is None
        judge.record(_key(i), now)
        limiter.release(_key(i))
    assert len(waits) >= 2  # requests 6 and 11 had to wait for the burst window
    assert all("IB pacing" in why for _, why in waits)


async def test_identical_request_waits_for_identical_window() -> None:
    rules = PacingRules(time_scale=0.01)  # identical window 0.15 s
    limiter, judge = PacingLimiter(rules), PacingEnforcer(rules)
    before = time.monotonic()
    await limiter.acquire(_key(0))
    judge.record(_key(0), time.monotonic())
    limiter.release(_key(0))
    reported: list[tuple[float, float]] = []
    await limiter.acquire(_key(0), on_wait=lambda s, _why: reported.append((s, time.monotonic())))
    # It said how long before waiting: the window (and its margin) less what had passed since the first
    # was counted, however long this process was held up in between (bounds, not a wall-clock guess).
    full = rules.identical_window * 1.02 + 0.025
    said, at = reported[0]
    assert before + full - at <= said <= full
    # What it then sent is legal in the gateway's eyes.
    assert judge.violation(_key(0), time.monotonic()) is None


async def test_window_rule_limits_to_max_requests() -> None:
    rules = PacingRules(max_requests=5, window_s=10.0, burst_count=100, time_scale=0.02)  # window 0.2 s
    limiter, judge = PacingLimiter(rules), PacingEnforcer(rules)
    reasons: list[str] = []
    for i in range(6):
        key = _key(i, contract=f"c{i}")
        await limiter.acquire(key, on_wait=lambda _s, why: reasons.append(why))
        now = time.monotonic()
        assert judge.violation(key, now) is None  # the 6th went only once the window allowed it
        judge.record(key, now)
        limiter.release(key)
    assert any("5 requests within" in why for why in reasons)


async def test_open_limit_waits_for_release() -> None:
    limiter = PacingLimiter(PacingRules(max_open=2, time_scale=0.001))
    await limiter.acquire(_key(0, "a"))
    await limiter.acquire(_key(1, "b"))
    third = asyncio.create_task(limiter.acquire(_key(2, "c")))
    await asyncio.sleep(0)
    assert not third.done()
    limiter.release(_key(0, "a"))
    await asyncio.wait_for(third, 1.0)
    assert limiter.open_requests == 2


async def test_cancel_during_wait_raises_promptly() -> None:
    limiter = PacingLimiter(PacingRules())  # real windows: the second identical request waits 15 s
    await limiter.acquire(_key(0))
    token = CancellationToken()
    waiting = asyncio.Event()
    task = asyncio.create_task(limiter.acquire(_key(0), cancel=token, on_wait=lambda _s, _w: waiting.set()))
    await asyncio.wait_for(waiting.wait(), 10)
    token.cancel("test")
    with pytest.raises(OperationCancelledError):  # well before the 15 s wait would have ended by itself
        await asyncio.wait_for(task, 5.0)


def test_lower_bound_matches_rules() -> None:
    rules = PacingRules()
    assert lower_bound_seconds(1, rules) == 0
    assert lower_bound_seconds(5, rules) == 0  # five fit in one burst window
    assert lower_bound_seconds(6, rules) == 2.0
    assert lower_bound_seconds(60, rules) == 11 * 2.0
    assert lower_bound_seconds(61, rules) == 600.0
    assert lower_bound_seconds(61, PacingRules(time_scale=0.01)) == pytest.approx(6.0)


class _Clocks:
    """A monotonic clock and a wall clock that advance together (each process has its own offset)."""

    def __init__(self, mono: float, wall: float) -> None:
        self.mono, self.wall = mono, wall

    def advance(self, s: float) -> None:
        self.mono += s
        self.wall += s


async def test_gate_drops_a_request_before_it_takes_a_slot() -> None:
    limiter = PacingLimiter(PacingRules())

    async def caller_gone() -> None:
        raise OperationCancelledError("waiting for IB pacing", "the caller went away")

    with pytest.raises(OperationCancelledError):
        await limiter.acquire(_key(0), gate=caller_gone)
    assert limiter.recorded == 0 and limiter.open_requests == 0 and not limiter.changed.is_set()
    passed: list[int] = []

    async def caller_here() -> None:
        passed.append(1)

    await limiter.acquire(_key(0), gate=caller_here)
    assert passed == [1] and limiter.recorded == 1 and limiter.changed.is_set()


async def test_history_restored_in_a_new_process_keeps_every_window() -> None:
    rules = PacingRules(burst_count=100)  # the 10-minute window is what this is about
    old = _Clocks(mono=1000.0, wall=1_700_000_000.0)
    first = PacingLimiter(rules, clock=lambda: old.mono, wall_clock=lambda: old.wall)
    for i in range(rules.max_requests):
        await first.acquire(_key(i, contract=f"c{i}"))
        first.release(_key(i, contract=f"c{i}"))
        old.advance(1.0)
    stamps = first.history()
    assert len(stamps) == rules.max_requests
    # A new process 30 s later: another monotonic origin, the same wall clock.
    new = _Clocks(mono=5.0, wall=old.wall + 30.0)
    second = PacingLimiter(rules, clock=lambda: new.mono, wall_clock=lambda: new.wall)
    assert second.restore(stamps) == rules.max_requests
    wait, why = second.required_wait(_key(999, contract="fresh"))
    # The oldest request was sent 60 + 30 s ago: the window frees 600 - 90 s from now (+ margin).
    assert 510 <= wait <= 510 + 600 * 0.001 + 0.006 and f"{rules.max_requests} requests within" in why
    # The identical-request rule survives too; stamps older than every window are dropped.
    third = PacingLimiter(rules, clock=lambda: new.mono, wall_clock=lambda: new.wall)
    assert third.restore([(new.wall - 5.0, _key(7))]) == 1
    ident_wait, ident_why = third.required_wait(_key(7))
    assert 10.0 <= ident_wait <= 10.0 + 15 * 0.02 + 0.03 and "identical" in ident_why
    assert third.required_wait(_key(8))[0] == 0
    stale = PacingLimiter(rules, clock=lambda: new.mono, wall_clock=lambda: new.wall + 3600)
    assert stale.restore(stamps) == 0 and stale.required_wait(_key(0, contract="c0"))[0] == 0


def test_restore_counts_stamps_from_the_future_as_now() -> None:
    clocks = _Clocks(mono=50.0, wall=1_700_000_000.0)
    limiter = PacingLimiter(PacingRules(), clock=lambda: clocks.mono, wall_clock=lambda: clocks.wall)
    assert limiter.restore([(clocks.wall + 10_000, _key(1)), (float("nan"), _key(2))]) == 1
    wait, _ = limiter.required_wait(_key(1))
    assert 15.0 <= wait <= 15.0 + 15.0 * 0.02 + 0.03  # identical rule counted from now, not from the future


async def test_the_10_minute_window_counts_each_request_from_its_answer() -> None:
    # The send time is only a lower bound on when the gateway counted a request (it may read it late);
    # the answer proves it had it by then, so the window frees from the answer.
    rules = PacingRules(max_requests=2, window_s=10.0, burst_count=100)
    clocks = _Clocks(mono=100.0, wall=1_700_000_000.0)
    limiter = PacingLimiter(rules, clock=lambda: clocks.mono, wall_clock=lambda: clocks.wall)
    await limiter.acquire(_key(0, "a"))  # sent at 100, answered at 105
    clocks.advance(5.0)
    limiter.release(_key(0, "a"))
    await limiter.acquire(_key(1, "b"))
    limiter.release(_key(1, "b"))
    clocks.advance(5.5)  # 110.5: 10.5 s after the first send, 5.5 s after its answer
    wait, why = limiter.required_wait(_key(2, "c"))
    assert wait == pytest.approx(4.5 + 10.0 * 0.001 + 0.005) and "2 requests within" in why
    # What a restarted process loads says the same.
    assert [t - clocks.wall for t, _ in limiter.history()] == [pytest.approx(-5.5), pytest.approx(-5.5)]


async def test_an_unanswered_request_stays_in_the_10_minute_window() -> None:
    rules = PacingRules(max_requests=1, window_s=10.0, burst_count=100)
    clocks = _Clocks(mono=100.0, wall=1_700_000_000.0)
    limiter = PacingLimiter(rules, clock=lambda: clocks.mono, wall_clock=lambda: clocks.wall)
    await limiter.acquire(_key(0, "a"))
    clocks.advance(60.0)  # long past the window, but the gateway may not have counted it yet
    assert limiter.required_wait(_key(1, "b"))[0] == -1.0  # only its answer can free the slot
    limiter.release(_key(0, "a"))
    wait, _ = limiter.required_wait(_key(1, "b"))
    assert wait == pytest.approx(10.0 + 10.0 * 0.001 + 0.005)


async def test_requests_waiting_for_the_same_window_each_announce_their_wait_once_per_window() -> None:
    # Nine requests wait for a full 10-minute window (scaled to 0.2 s) whose three slots free a few ms
    # apart: each wakes as each slot frees and all but one wait again a few ms longer. Each says its
    # wait when it starts waiting and again only when it has to wait for a later window, not at every
    # slot it lost (one interim reply and one progress event each: 13 per request were measured).
    rules = PacingRules(max_requests=3, window_s=10.0, burst_count=100, time_scale=0.02)
    limiter = PacingLimiter(rules)
    for i in range(3):
        await limiter.acquire(_key(i, contract=f"c{i}"))
    for i in range(3):
        limiter.release(_key(i, contract=f"c{i}"))
        await asyncio.sleep(0.02)  # the answers come a little apart: so do the slots they free
    said: dict[int, int] = {}

    async def one(i: int) -> None:
        def on_wait(_s: float, why: str) -> None:
            assert "IB pacing" in why
            said[i] = said.get(i, 0) + 1

        key = _key(10 + i, contract=f"d{i}")
        await limiter.acquire(key, on_wait=on_wait)
        limiter.release(key)

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(9))), timeout=30)
    assert sorted(said) == list(range(9))  # every one of them said it was waiting
    assert max(said.values()) <= 3 and sum(said.values()) <= 2 * 9, said
    assert limiter.announced == sum(said.values()) < limiter.waits
