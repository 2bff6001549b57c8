"""The one-writer series lease against a real nats-server: a second writer waits, says for whom and
can be cancelled; a silent holder is taken over only after a whole ttl on the waiter's own clock; a
claim the server refuses is an error, never "another writer"."""

from __future__ import annotations

import asyncio

import pytest
from nats.js import api as js_api
from nats.js.errors import APIError

from events import subjects
from ktrdr.cancellation import CancellationToken
from ktrdr.data.series_lease import SeriesWriterLease, series_lease
from ktrdr.errors import OperationCancelledError

OP_A, OP_B = "data-20260101T000000000000-aaaaaa", "data-20260101T000000000001-bbbbbb"


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_second_writer_of_a_series_waits_says_for_whom_and_can_be_cancelled(client, settings):
    first = await series_lease(client.js, "AAPL", "1h", holder="jm-1", op_id="data-20260101T000000000000-aaaaaa",
                               ttl_s=30)
    second = await series_lease(client.js, "aapl", "1h", holder="jm-2", op_id="data-20260101T000000000001-bbbbbb",
                                ttl_s=30)
    waits: list[str] = []
    async with first.held():
        token = CancellationToken()
        task = asyncio.create_task(second.acquire(token, on_wait=lambda rec: waits.append(rec.op_id)))
        while not waits:
            await asyncio.sleep(0.01)
        assert waits == ["data-20260101T000000000000-aaaaaa"] and not task.done()
        token.cancel("user")
        with pytest.raises(OperationCancelledError):
            await task
        told: list[str] = []
        task = asyncio.create_task(second.acquire(CancellationToken(), on_wait=lambda rec: told.append(rec.op_id)))
        while not told:  # it has seen the lease held (a local condition, not a fixed sleep)
            await asyncio.sleep(0.01)
        assert told == ["data-20260101T000000000000-aaaaaa"] and not task.done()
    await asyncio.wait_for(task, 10)  # released: the waiter gets it
    assert await second.renew() and not await first.renew()
    await second.release()
    # An earlier attempt of the same operation left it behind: its next attempt takes it at once.
    stale = await series_lease(client.js, "AAPL", "1h", holder="jm-dead", op_id="data-20260101T000000000002-cccccc")
    await stale.acquire()
    retry = await series_lease(client.js, "AAPL", "1h", holder="jm-3", op_id="data-20260101T000000000002-cccccc")
    await asyncio.wait_for(retry.acquire(), 5)


async def test_a_silent_holder_is_taken_over_after_a_whole_ttl_on_the_waiters_clock(client):
    kv = await client.js.key_value(subjects.LEASES_BUCKET)
    dead = SeriesWriterLease(kv, "AAPL", "1h", holder="jm-dead", op_id=OP_A, ttl_s=30)
    await dead.acquire()  # and then never renews
    clock = FakeClock()
    waiter = SeriesWriterLease(kv, "AAPL", "1h", holder="jm-2", op_id=OP_B, ttl_s=30, clock=clock)
    looks: list[str] = []

    def on_wait(rec):  # the first look starts the count; a whole ttl passes on this clock before the next
        looks.append(rec.op_id)
        clock.now += 30

    await asyncio.wait_for(waiter.acquire(on_wait=on_wait), 10)
    assert looks == [OP_A]
    assert not await dead.renew() and dead.lost and await waiter.renew()


async def test_a_holder_that_renews_is_never_taken_over(client):
    kv = await client.js.key_value(subjects.LEASES_BUCKET)
    holder = SeriesWriterLease(kv, "AAPL", "1h", holder="jm-1", op_id=OP_A, ttl_s=30)
    await holder.acquire()
    clock = FakeClock()
    waiter = SeriesWriterLease(kv, "AAPL", "1h", holder="jm-2", op_id=OP_B, ttl_s=30, clock=clock)
    for _ in range(3):  # a whole ttl passes between each look, but the holder renewed in between
        assert (await waiter._try()) is not None
        clock.now += 30
        assert await holder.renew()
    assert (await waiter._try()) is not None and await holder.renew()


async def test_a_claim_the_server_refuses_is_an_error_not_another_writer(client):
    # A bucket whose values may not exceed 8 bytes refuses every lease record: not a lost race.
    tiny = await client.js.create_key_value(js_api.KeyValueConfig(bucket="TINY", max_value_size=8))
    lease = SeriesWriterLease(tiny, "AAPL", "1h", holder="jm-1", op_id=OP_A)
    waits: list[str] = []
    with pytest.raises(APIError):
        await asyncio.wait_for(lease.acquire(on_wait=lambda rec: waits.append(rec.holder)), 10)
    assert waits == []


async def test_a_load_ends_even_when_the_lease_renewal_swallows_its_cancel(client, settings):
    # nats.py turns a cancel inside a publish into an exception (or swallows it): the renewer must
    # still stop when the load ends, or the load waits for it forever (seen in python -m bench universe).
    lease = await series_lease(client.js, "AAPL", "1h", holder="jm-1", op_id=OP_A, ttl_s=0.3)
    renewing = asyncio.Event()
    real_renew = lease.renew

    async def renew_like_nats() -> bool:
        renewing.set()
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            raise RuntimeError("publish interrupted") from None  # what nats.py raises instead
        return await real_renew()

    lease.renew = renew_like_nats  # type: ignore[method-assign]

    async def load() -> None:
        async with lease.held():
            await renewing.wait()  # the load ends while a renewal is in flight

    task = asyncio.ensure_future(load())
    done, _ = await asyncio.wait({task}, timeout=10)  # waited, never cancelled: a cancel would unstick it
    if not done:
        task.cancel()
    assert task in done, "the load never ended: its lease renewer swallowed the cancel and kept renewing"
    other = await series_lease(client.js, "AAPL", "1h", holder="jm-2", op_id=OP_B, ttl_s=30)
    await asyncio.wait_for(other.acquire(), 5)  # and the lease was released
