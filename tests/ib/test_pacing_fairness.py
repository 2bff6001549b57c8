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
