"""Operation leases against a real nats-server: granted by the orchestrator alone, one attempt at a
time, attempts counted, a live holder never taken over, a silent one only after a whole lease time
on the orchestrator's own clock, and each grant published as the operation's `started`."""

from __future__ import annotations

from actors._leases import Busy, Held, Leases
from actors.orchestrator import Orchestrator
from events import proof, subjects
from events.codec import decode
from events.messages import Lease, RunDummy
from tests.helpers import scrape, value, wait_for_event


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


async def _queued(start_actors, client) -> tuple[Orchestrator, str]:
    """A live, queued dummy operation (no dummy worker runs) and the orchestrator that grants it."""
    (orch,) = await start_actors("orchestrator")
    assert isinstance(orch, Orchestrator) and orch.leases is not None
    cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=3, interval_s=0.1)
    await client.submit(cmd)
    await wait_for_event(client, cmd.op_id, lambda ev, v: v.status == "queued")
    return orch, cmd.op_id


async def test_a_silent_holder_is_taken_over_as_the_next_attempt_and_a_live_one_never(start_actors, client):
    orch, op = await _queued(start_actors, client)
    clock = FakeClock()
    assert orch.leases is not None
    orch.leases.bucket.clock, orch.leases.bucket.ttl_s = clock, 20.0
    takeovers = value(await scrape(orch.metrics_url), "ktrdr_lease_takeovers_total", domain="dummy")
    first = Leases(client.nc, "dummy", "w-1", proof.new_key(), 20)
    second = Leases(client.nc, "dummy", "w-2", proof.new_key(), 20)
    held = await first.acquire(op)
    assert isinstance(held, Held) and held.attempt == 1
    view = await wait_for_event(client, op, lambda ev, v: v.worker == "w-1")
    assert view.worker_key == first.public_key  # the grant, published by the orchestrator, names the key
    busy = await second.acquire(op)
    assert isinstance(busy, Busy) and busy.holder == "w-1" and busy.retry_in == 20
    clock.now += 15
    busy = await second.acquire(op)
    assert isinstance(busy, Busy) and busy.retry_in == 5
    assert await first.renew(held)  # a renewal starts the count again
    clock.now += 15
    assert isinstance(await second.acquire(op), Busy)
    clock.now += 20
    taken = await second.acquire(op)
    assert isinstance(taken, Held) and taken.attempt == 2
    # /metrics: one takeover (the refusals before it are none)
    assert value(await scrape(orch.metrics_url), "ktrdr_lease_takeovers_total", domain="dummy") == takeovers + 1
    assert not await first.renew(held)  # lost: its holder stops without a verdict
    await first.release(held, done=True)  # not ours: left alone
    kv = await client.js.key_value(subjects.LEASES_BUCKET)
    lease = decode((await kv.get(op)).value, Lease)
    assert (lease.holder, lease.attempt, lease.key) == ("w-2", 2, second.public_key)


async def test_a_lease_handed_back_is_the_next_attempt_at_once_and_ours_from_before_is_ours(start_actors, client):
    orch, op = await _queued(start_actors, client)
    takeovers = value(await scrape(orch.metrics_url), "ktrdr_lease_takeovers_total", domain="dummy")
    first = Leases(client.nc, "dummy", "w-1", proof.new_key(), 20)
    second = Leases(client.nc, "dummy", "w-2", proof.new_key(), 20)
    held = await first.acquire(op)
    assert isinstance(held, Held)
    again = await first.acquire(op)  # ours from before (a lost reply, say): the same attempt
    assert isinstance(again, Held) and again.attempt == 1
    await first.release(held, done=False)
    taken = await second.acquire(op)
    assert isinstance(taken, Held) and taken.attempt == 2
    # handed back, not taken over: /metrics counts no takeover
    assert value(await scrape(orch.metrics_url), "ktrdr_lease_takeovers_total", domain="dummy") == takeovers
    assert await second.renew(taken)
    # someone else's key cannot renew or release it, even naming its holder
    thief = Leases(client.nc, "dummy", "w-2", proof.new_key(), 20)
    assert not await thief.renew(taken)
    await second.release(taken, done=True)
    assert isinstance(fresh := await first.acquire(op), Held) and fresh.attempt == 3  # counted on from the view
