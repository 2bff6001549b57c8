"""The pull loop (actors/_pull.py) against a real nats-server, its pull requests reaching the server
late (a loaded host; here a proxy that holds the client's bytes 50 ms): a message stored while the
loop waits is handed to the handler at its first delivery, not held until the consumer's ack wait
redelivers it. nats-py's batch fetch held it so: the status of a pull that expired after the client
gave up was read as the next pull's answer, and the lingering pull sent after it captured the next
message and sent no status (the orchestrator's 1.8-2.4 s stalls, bench/stall.py)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from nats.aio.msg import Msg
from nats.js import api as js_api

from actors._pull import Consumer, fetch, pull_loop
from bench.nemesis.proxy import upstream_delay_proxy
from events import subjects
from ktrdr.client import Client
from ktrdr.config import Settings
from tests.conftest import NatsServer, make_settings
from tests.helpers import eventually, subscribed

STREAM, CONSUMER = "PULLTEST", "loop"
DELAY_S = 0.05  # client -> server: far more than the 0.1 ms nats-py allows between its deadline and the server's


async def test_a_message_is_handled_at_its_first_delivery_when_pulls_reach_the_server_late(
        settings: Settings, nats_server: NatsServer) -> None:
    proxy, port = await upstream_delay_proxy(nats_server.port, DELAY_S)
    late = make_settings(settings.home, f"nats://127.0.0.1:{port}")
    stop = asyncio.Event()
    async with Client(settings) as direct, Client(late) as c:
        await direct.js.add_stream(name=STREAM, subjects=["pulltest.>"], storage=js_api.StorageType.MEMORY)
        # an ack wait well inside the fetch's 2 s: a message held by the loop is redelivered before
        # the pull that holds it expires
        await direct.js.add_consumer(STREAM, js_api.ConsumerConfig(
            durable_name=CONSUMER, name=CONSUMER, filter_subject="pulltest.>", ack_policy=js_api.AckPolicy.EXPLICIT,
            ack_wait=0.8, max_deliver=5))
        pulls: list[Msg] = []

        async def on_pull(msg: Msg) -> None:
            pulls.append(msg)

        await direct.nc.subscribe(subjects.next_msg_api(STREAM, CONSUMER), cb=on_pull)
        await subscribed(direct.nc)
        handled: list[tuple[int, int]] = []  # (its delivery count, the consumer's deliveries so far)

        async def handle(msg: Msg) -> None:
            info = await direct.js.consumer_info(STREAM, CONSUMER)
            handled.append((msg.metadata.num_delivered, info.delivered.consumer_seq or 0))
            await msg.ack()

        async def on_fault(exc: BaseException, where: str) -> None:
            raise AssertionError(f"{where}: {exc}")

        loop_task = asyncio.create_task(pull_loop(Consumer(c.nc, STREAM, CONSUMER), handle, stopped=stop.is_set,
                                                  on_fault=on_fault, batch=16, fetch_timeout=2.0))
        try:
            # an idle loop: at least one of its pulls expired before the messages come
            await eventually(lambda: len(pulls) >= 3, timeout=30)
            for i in range(3):  # one after another, each once the one before was handled
                await direct.js.publish(f"pulltest.{i}", str(i).encode())
                await eventually(lambda i=i: len(handled) > i, timeout=30)
        finally:
            stop.set()
            loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop_task
            proxy.close()
    # each handed over at its first delivery, and nothing delivered twice before it was
    assert handled[:3] == [(1, 1), (1, 2), (1, 3)], f"(delivery, deliveries so far) at each handling: {handled}"


async def test_a_fetch_returns_what_is_stored_up_to_its_batch_and_times_out_on_nothing(settings: Settings) -> None:
    async with Client(settings) as c:
        await c.js.add_stream(name=STREAM, subjects=["pulltest.>"], storage=js_api.StorageType.MEMORY)
        await c.js.add_consumer(STREAM, js_api.ConsumerConfig(
            durable_name=CONSUMER, name=CONSUMER, filter_subject="pulltest.>", ack_policy=js_api.AckPolicy.EXPLICIT))
        consumer = Consumer(c.nc, STREAM, CONSUMER)
        for name in ("a", "b", "c"):
            await c.js.publish(f"pulltest.{name}", name.encode())
        two = await fetch(consumer, 2, 5.0)
        assert [m.data for m in two] == [b"a", b"b"]
        rest = await fetch(consumer, 16, 5.0)  # what is stored, at once: not the whole batch
        assert [m.data for m in rest] == [b"c"]
        for m in [*two, *rest]:
            await m.ack()
        with pytest.raises(TimeoutError):
            await fetch(consumer, 16, 0.2)
