"""Operation leases against a real nats-server: one attempt at a time, attempts counted, a live holder
never taken over, a silent one only after a whole lease time on the taker's own clock."""

from __future__ import annotations

from actors._leases import Busy, Held, Leases, drop
from events import subjects
from events.codec import decode
from events.messages import Lease

OP = "dummy-20260101T000000000000-aaaaaa"


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


async def test_a_silent_holder_is_taken_over_as_the_next_attempt_and_a_live_one_never(client):
    kv = await client.js.key_value(subjects.LEASES_BUCKET)
    clock = FakeClock()
    first, second = Leases(kv, "w-1", 20), Leases(kv, "w-2", 20, clock=clock)
    held = await first.acquire(OP)
    assert isinstance(held, Held) and held.attempt == 1
    busy = await second.acquire(OP)
    assert isinstance(busy, Busy) and busy.holder == "w-1" and busy.retry_in == 20
    clock.now += 15
    busy = await second.acquire(OP)
    assert isinstance(busy, Busy) and busy.retry_in == 5
    second.forget(OP)  # a handed-back redelivery does not restart the count
    assert await first.renew(held)  # ...but a renewal does
    clock.now += 15
    assert isinstance(await second.acquire(OP), Busy)
    clock.now += 20
    taken = await second.acquire(OP)
    assert isinstance(taken, Held) and taken.attempt == 2
    assert not await first.renew(held)  # lost: its holder stops without a verdict
    await first.release(held, done=True)  # not ours: left alone
    lease = decode((await kv.get(OP)).value, Lease)
    assert (lease.holder, lease.attempt) == ("w-2", 2)


async def test_a_lease_handed_back_is_the_next_attempt_at_once_and_ours_from_before_is_ours(client):
    kv = await client.js.key_value(subjects.LEASES_BUCKET)
    first, second = Leases(kv, "w-1", 20), Leases(kv, "w-2", 20)
    held = await first.acquire(OP)
    assert isinstance(held, Held)
    again = await first.acquire(OP)  # ours from before (a server restart, say): the same attempt
    assert isinstance(again, Held) and again.attempt == 1 and again.revision == held.revision
    await first.release(held, done=False)
    taken = await second.acquire(OP)
    assert isinstance(taken, Held) and taken.attempt == 2
    assert await second.renew(taken)
    await second.release(taken, done=True)
    assert isinstance(fresh := await first.acquire(OP), Held) and fresh.attempt == 1  # removed: a new count
    await drop(kv, OP)
    assert isinstance(await second.acquire(OP), Held)
