"""Fair turns in the pacing limiter: several operations' requests share IB's budget round robin, the
limits still hold across all of them, and an owner blocked by its own contract's rule does not hold
the others up. Windows are shrunk (PacingRules.time_scale) so it runs in about a second."""

from __future__ import annotations

import asyncio
import itertools

from ktrdr.ib.pacing import PacingLimiter, PacingRules, RequestKey

RULES = PacingRules(max_requests=3, window_s=100.0, time_scale=0.002)  # 3 requests per 0.2 s


def key(owner: str, i: int, contract: str = "") -> RequestKey:
    return RequestKey(contract or f"{owner}-{i}", "SMART", "TRADES", f"seg{i}")


async def run_owner(limiter: PacingLimiter, owner: str, n: int, grants: list[tuple[str, float]],
                    contract: str = "") -> None:
    async def one(i: int) -> None:
        k = key(owner, i, contract)
        await limiter.acquire(k, owner=owner)
        grants.append((owner, asyncio.get_running_loop().time()))
        await asyncio.sleep(0)
        limiter.release(k)

    await asyncio.gather(*(one(i) for i in range(n)))


def longest_run(seq: list[str]) -> int:
    best = run = 1
    for a, b in itertools.pairwise(seq):
        run = run + 1 if a == b else 1
        best = max(best, run)
    return best


async def test_two_operations_with_many_requests_each_take_turns_and_the_window_limit_holds():
    limiter = PacingLimiter(RULES)
    grants: list[tuple[str, float]] = []
    first = asyncio.ensure_future(run_owner(limiter, "op-a", 9, grants))
    await asyncio.sleep(0)  # op-a queues all of its requests before op-b asks at all
    await asyncio.wait_for(asyncio.gather(first, run_owner(limiter, "op-b", 9, grants),
                                          run_owner(limiter, "op-c", 9, grants)), timeout=30)
    owners = [o for o, _ in grants]
    assert sorted(owners) == sorted(["op-a"] * 9 + ["op-b"] * 9 + ["op-c"] * 9)
    # op-a alone asked first and took the free window (3 grants); from then on, while all three
    # wait, the grants go round: no operation takes two turns in a row, each gets one per round
    assert owners[:3] == ["op-a"] * 3
    assert longest_run(owners[3: 3 + 3 * 6]) == 1, owners
    assert all(owners[i: i + 3].count(o) == 1 for i in range(3, 3 + 3 * 6, 3) for o in ("op-a", "op-b", "op-c"))
    # the 10-minute rule (scaled) across all of them: never more than 3 grants inside one window
    times = [t for _, t in grants]
    assert all(times[i + RULES.max_requests] - times[i] >= RULES.window * 0.99
               for i in range(len(times) - RULES.max_requests)), times


async def test_without_owners_named_the_limiter_serves_one_queue_as_before():
    limiter = PacingLimiter(RULES)
    grants: list[tuple[str, float]] = []
    await asyncio.wait_for(run_owner(limiter, "", 5, grants), timeout=30)
    assert len(grants) == 5


async def test_an_operation_held_by_its_own_contract_burst_rule_does_not_hold_up_the_others():
    rules = PacingRules(max_requests=60, window_s=600.0, burst_count=2, burst_window_s=0.5, time_scale=1.0)
    limiter = PacingLimiter(rules)
    grants: list[tuple[str, float]] = []
    # op-a: four requests on ONE contract (one per burst window, 0.5 s each); op-b: four on distinct ones
    slow = asyncio.ensure_future(run_owner(limiter, "op-a", 4, grants, contract="AAPL"))
    await asyncio.sleep(0)
    await asyncio.wait_for(run_owner(limiter, "op-b", 4, grants), timeout=30)
    b_done = len(grants)
    assert [o for o, _ in grants].count("op-b") == 4 and b_done <= 6  # op-b finished while op-a still waits
    await asyncio.wait_for(slow, timeout=30)


async def test_an_operation_whose_gate_is_slow_does_not_hold_up_the_others_turns():
    # The gate (is the caller still there?) takes a round trip: op-a's request holds its own slot
    # meanwhile, and op-b, next in turn, is granted without waiting for op-a's round trip to end.
    limiter = PacingLimiter(PacingRules(time_scale=0.01))
    gate_open = asyncio.Event()

    async def slow_gate() -> None:
        await gate_open.wait()

    a = asyncio.ensure_future(limiter.acquire(key("op-a", 0), owner="op-a", gate=slow_gate))
    await asyncio.sleep(0)
    await asyncio.wait_for(limiter.acquire(key("op-b", 0), owner="op-b"), timeout=10)
    assert not a.done() and limiter.open_requests == 2  # op-a's slot is held through its gate
    gate_open.set()
    await asyncio.wait_for(a, timeout=10)
    assert limiter.recorded == 2


async def test_a_request_dropped_at_its_gate_gives_its_slot_back_to_the_next_one():
    limiter = PacingLimiter(PacingRules(max_open=1, time_scale=0.01))
    judged: list[str] = []

    async def caller_gone() -> None:
        await asyncio.sleep(0.01)
        raise RuntimeError("the caller went away")

    async def caller_here() -> None:
        judged.append("op-b")

    dropped = asyncio.ensure_future(limiter.acquire(key("op-a", 0), owner="op-a", gate=caller_gone))
    await asyncio.sleep(0)
    waiting = asyncio.ensure_future(limiter.acquire(key("op-b", 0), owner="op-b", gate=caller_here))
    try:
        await asyncio.wait_for(dropped, timeout=10)
    except RuntimeError:
        pass
    await asyncio.wait_for(waiting, timeout=10)  # the one open slot came back: op-b went
    assert judged == ["op-b"] and limiter.recorded == 1 and limiter.open_requests == 1
    assert limiter.required_wait(key("op-a", 0))[0] == -1.0  # op-b's request holds the only slot now


async def test_three_operations_pipelining_with_slow_gates_stay_within_every_limit():
    # Three operations with all of their requests asked at once (a pipelining job-manager), each
    # request's gate a different round trip: the gateway's own judge finds no violation, every
    # request goes, and grants keep going round (no operation takes a long run while others wait).
    from ktrdr.ib.sim.enforcer import PacingEnforcer

    rules = PacingRules(max_requests=6, window_s=100.0, burst_count=3, burst_window_s=5.0, time_scale=0.002)
    limiter, judge = PacingLimiter(rules), PacingEnforcer(rules)
    order: list[str] = []
    violations: list[str] = []

    async def one(owner: str, i: int) -> None:
        k = key(owner, i, contract=owner)  # one contract per operation: its burst rule binds too

        async def gate() -> None:
            await asyncio.sleep(0.001 * (i % 4))

        await limiter.acquire(k, owner=owner, gate=gate)
        now = asyncio.get_running_loop().time()
        why = judge.violation(k, now)
        if why is not None:
            violations.append(why)
        judge.record(k, now)
        order.append(owner)
        await asyncio.sleep(0.002)  # the answer
        limiter.release(k)

    await asyncio.wait_for(asyncio.gather(*(one(o, i) for o in ("op-a", "op-b", "op-c") for i in range(8))),
                           timeout=60)
    assert violations == [] and len(order) == 24
    assert longest_run(order[: 3 * 6]) <= 2, order
