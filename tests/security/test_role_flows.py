"""Each role can do everything its job needs, with the real nats-py calls (JetStream publish, pull
consumers with ack/nak/in_progress/term, ordered consumers and direct gets on OPS, KV put/get/
watch/CAS, Object Store put/get/list, request/reply to ib.>), against a server that enforces
ktrdr.auth's permissions. Objects are replaced and deleted as ktrdr.transport.objects does it (the old
chunks retired by a rollup): nats-py's ObjectStore purges for that, and no role may purge an object
bucket (issue 18, F5). Any permission error reaching a connection fails the test."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError

from ktrdr.transport import objects
from tests.helpers import subscribed
from tests.security.conftest import Errors

pytestmark = pytest.mark.timeout(60)


def op_id(domain: str) -> str:
    return f"{domain}-20260101T000000000000-{secrets.token_hex(3)}"


def clean(*errors: Errors) -> None:
    for e in errors:
        assert e.permission_errors() == [], e.permission_errors()


async def take(js: JetStreamContext, stream: str, consumer: str, want: bytes) -> Msg:
    """Fetch from a bound durable until the message we published arrives (others were left by
    other tests: terminated, so they do not come back)."""
    psub = await js.pull_subscribe_bind(durable=consumer, stream=stream)
    async with asyncio.timeout(20):
        while True:
            for m in await psub.fetch(1, timeout=5):
                if m.data == want:
                    return m
                await m.term()


async def work_consumer(js: JetStreamContext, domain: str, pool: str) -> str:
    """What the worker runtime must send: a named durable whose filter is in the create subject."""
    name = f"work-{domain}-{pool}"
    await js.add_consumer("WORK", api.ConsumerConfig(
        name=name, durable_name=name, filter_subject=f"work.{domain}.{pool}",
        ack_policy=api.AckPolicy.EXPLICIT, ack_wait=30, max_deliver=5))
    return name


async def replay(js: JetStreamContext, subject: str, count: int) -> list[Msg]:
    """An ordered consumer on OPS from the first stored event (what `ops watch` does)."""
    got: list[Msg] = []
    done = asyncio.Event()

    async def cb(m: Msg) -> None:
        got.append(m)
        if len(got) >= count:
            done.set()

    sub = await js.subscribe(subject, cb=cb, ordered_consumer=True)
    try:
        await asyncio.wait_for(done.wait(), 10)
    finally:
        await sub.unsubscribe()
    return got


async def push_read(nc: NATS, js: JetStreamContext, filters: list[str]) -> list[Msg]:
    """The replay actors use: an ephemeral push consumer with flow control on a core subscription,
    deleted afterwards."""
    inbox = nc.new_inbox()
    got: list[Msg] = []
    sub = await nc.subscribe(inbox, cb=_collect(got, nc))
    info = await js.add_consumer("OPS", api.ConsumerConfig(
        deliver_subject=inbox, filter_subjects=filters, ack_policy=api.AckPolicy.NONE, flow_control=True,
        idle_heartbeat=5.0, mem_storage=True, inactive_threshold=10.0))
    async with asyncio.timeout(10):
        while len(got) < (info.num_pending or 0):
            await asyncio.sleep(0.01)
    await sub.unsubscribe()
    await js.delete_consumer("OPS", info.name)
    return got


def _collect(into: list[Msg], nc: NATS) -> Any:
    async def cb(m: Msg) -> None:
        if not m.data and m.headers and "Status" in m.headers:
            if m.reply:  # flow control: answer or the server stops delivering
                await nc.publish(m.reply, b"")
            return
        into.append(m)

    return cb


async def core_listen(nc: NATS, subject: str) -> tuple[list[Msg], asyncio.Event]:
    got: list[Msg] = []
    event = asyncio.Event()

    async def cb(m: Msg) -> None:
        got.append(m)
        event.set()

    await nc.subscribe(subject, cb=cb)
    await subscribed(nc)
    return got, event


# ---------------------------------------------------------------------------------------------
async def lease_request(orch: Any, worker: Any, domain: str) -> None:
    """A worker's lease request (core request/reply on lease.<domain>.claim), answered by the
    orchestrator on the worker's own inbox (allow_responses: once)."""
    async def grant(m: Any) -> None:
        await m.respond(b"granted")

    served = await orch.subscribe("lease.>", cb=grant)
    await subscribed(orch)  # one flush() may return before the server has read the SUB
    assert (await worker.request(f"lease.{domain}.claim", b"claim", timeout=10)).data == b"granted"
    await served.unsubscribe()


async def test_orchestrator_flow(as_role: Any) -> None:
    nc, errs = await as_role("orchestrator")
    cli, cli_errs = await as_role("cli")
    js, cjs = nc.jetstream(), cli.jetstream()
    # Provisioning is idempotent: info, update with the same config, create of an existing bucket.
    info = await js.stream_info("OPS")
    await js.update_stream(info.config)
    await js.create_key_value(api.KeyValueConfig(bucket="ACTORS", history=1, direct=True))
    await js.create_object_store("CHECKPOINTS")
    # The CMD durable, in today's legacy form and in the named form.
    cfg = dict(filter_subject="cmd.>", ack_policy=api.AckPolicy.EXPLICIT, ack_wait=30, max_deliver=10)
    await js.add_consumer("CMD", api.ConsumerConfig(durable_name="orchestrator", **cfg))
    await js.add_consumer("CMD", api.ConsumerConfig(name="orchestrator", durable_name="orchestrator", **cfg))
    op = op_id("dummy")
    payload = f'{{"op_id": "{op}"}}'.encode()
    await cjs.publish("cmd.dummy.run", payload, headers={"Nats-Msg-Id": f"cmd-{op}"})
    m = await take(js, "CMD", "orchestrator", payload)
    await m.in_progress()
    await m.nak()
    m = await take(js, "CMD", "orchestrator", payload)
    await m.ack_sync()
    # Events and work go out as JetStream publishes; live events arrive on core subscriptions.
    live, seen = await core_listen(nc, f"ops.dummy.{op}.>")
    await js.publish(f"ops.dummy.{op}.created", b"created", headers={"Nats-Msg-Id": f"{op}.created"})
    await js.publish("work.dummy.cpu", payload)
    await asyncio.wait_for(seen.wait(), 10)
    assert [m.subject for m in live] == [f"ops.dummy.{op}.created"]
    assert [m.data for m in await replay(js, f"ops.dummy.{op}.>", 1)] == [b"created"]
    assert (await js.get_last_msg("OPS", f"ops.dummy.{op}.created", direct=True)).data == b"created"
    assert [m.data for m in await push_read(nc, js, [f"ops.*.{op}.created", f"ops.*.{op}.started"])] == [b"created"]
    # Presence: own key, read all, watch all; core subscription on the bucket's subjects.
    kv = await js.key_value("ACTORS")
    _kv_live, kv_seen = await core_listen(nc, "$KV.ACTORS.>")
    await kv.put("orchestrator.o-1", b"hb")
    await asyncio.wait_for(kv_seen.wait(), 10)
    assert (await kv.get("orchestrator.o-1")).value == b"hb"
    assert "orchestrator.o-1" in await kv.keys()
    watcher = await kv.watchall()
    assert (await watcher.updates(timeout=5)) is not None
    await watcher.stop()
    # Leases: it alone writes them (grant, renew, delete), answering a worker's request on its inbox;
    # checkpoints: delete one the trainer stored.
    tr, tr_errs = await as_role("trainer")
    tjs = tr.jetstream()
    lease_op = op_id("training")
    await lease_request(nc, tr, "training")
    await (await tjs.object_store("CHECKPOINTS")).put(f"{lease_op}/latest", b"ckpt" * 1000)
    leases = await js.key_value("LEASES")
    rev = await leases.create(lease_op, b"trainer-1")
    rev = await leases.update(lease_op, b"trainer-1 renewed", last=rev)
    assert (await leases.get(lease_op)).value == b"trainer-1 renewed"
    await leases.delete(lease_op, last=rev)
    ckpt = await js.object_store("CHECKPOINTS")
    assert await objects.delete(js, "CHECKPOINTS", f"{lease_op}/latest")
    with pytest.raises(NotFoundError):
        await ckpt.get(f"{lease_op}/latest")
    clean(errs, cli_errs, tr_errs)


async def test_job_manager_flow(as_role: Any) -> None:
    nc, errs = await as_role("job-manager")
    orch, orch_errs = await as_role("orchestrator")
    ib, ib_errs = await as_role("ib")
    cli, cli_errs = await as_role("cli")
    js, ojs = nc.jetstream(), orch.jetstream()
    consumer = await work_consumer(js, "data", "any")
    op = op_id("data")
    item = f'{{"op_id": "{op}"}}'.encode()
    await ojs.publish("work.data.any", item)
    m = await take(js, "WORK", consumer, item)
    await m.in_progress()
    await m.nak(delay=0.01)
    m = await take(js, "WORK", consumer, item)
    await lease_request(orch, nc, "data")  # the operation's lease, asked of the orchestrator
    await ojs.publish(f"ops.data.{op}.started", b"started")  # the orchestrator grants and says so
    await js.publish(f"ops.data.{op}.progress", b"p1")
    await m.ack()
    # Cancels reach it live; it reads one operation's events back.
    _cancels, cancel_seen = await core_listen(nc, "ops.*.*.cancel")
    await cli.jetstream().publish(f"ops.data.{op}.cancel", b"cancel")
    await asyncio.wait_for(cancel_seen.wait(), 10)
    assert [m.data for m in await push_read(nc, js, [f"ops.data.{op}.>"])] == [b"started", b"p1"]
    assert (await js.get_last_msg("OPS", f"ops.data.{op}.progress", direct=True)).data == b"p1"
    # the cancel is stored beside OPS: a direct get of the last on its subject, no consumer
    assert (await js.get_last_msg("OPS_CANCELS", f"ops.data.{op}.cancel", direct=True)).data == b"cancel"
    assert len(await replay(js, f"ops.data.{op}.>", 2)) == 2
    # Request/reply with the ib actor: interim notices and a final answer on the job-manager's inbox.
    async def serve(msg: Msg) -> None:
        await ib.publish(msg.reply, b"wait 1")
        await ib.publish(msg.reply, b"wait 2")
        await msg.respond(b"bars:" + msg.data)

    await ib.subscribe("ib.>", queue="ib", cb=serve)
    await subscribed(ib)
    answers: list[bytes] = []
    final = asyncio.Event()

    async def on_reply(msg: Msg) -> None:
        answers.append(msg.data)
        if msg.data.startswith(b"bars:"):
            final.set()

    inbox = nc.new_inbox()
    await nc.subscribe(inbox, cb=on_reply)
    await nc.publish("ib.bars", b"AAPL", reply=inbox)
    await asyncio.wait_for(final.wait(), 10)
    assert answers == [b"wait 1", b"wait 2", b"bars:AAPL"]
    assert (await nc.request("ib.contract", b"MSFT", timeout=10)).data == b"wait 1"  # first reply wins
    # Bars: write, read, list, replace, delete.
    bars = await js.object_store("BARS")
    await bars.put("AAPL/1h", b"x" * 300_000, meta=api.ObjectMeta(description="sim"))
    await objects.put(js, "BARS", "AAPL/1h", b"y" * 200_000)
    assert (await bars.get("AAPL/1h")).data == b"y" * 200_000
    assert "AAPL/1h" in [o.name for o in await bars.list()]
    await bars.put("TMP/1d", b"t")
    assert await objects.delete(js, "BARS", "TMP/1d")
    # Presence; series leases (compare-and-set, SERIES).
    await (await js.key_value("ACTORS")).put("job-manager.jm-1.host.example", b"hb")
    series = await js.key_value("SERIES")
    key = f"series.{op.rsplit('-', 1)[-1].upper()}.1h"  # its own (the permission table writes series.AAPL.1h)
    rev = await series.create(key, b"jm-1")
    rev = await series.update(key, b"jm-1 renewed", last=rev)
    with pytest.raises(KeyWrongLastSequenceError):
        await series.update(key, b"someone else", last=rev - 1)
    assert (await series.get(key)).value == b"jm-1 renewed"
    await series.delete(key, last=rev)
    clean(errs, orch_errs, ib_errs, cli_errs)


async def test_trainer_flow(as_role: Any) -> None:
    nc, errs = await as_role("trainer")
    orch, orch_errs = await as_role("orchestrator")
    jm, jm_errs = await as_role("job-manager")
    js = nc.jetstream()
    op = op_id("training")
    item = f'{{"op_id": "{op}"}}'.encode()
    for pool in ("gpu", "any"):
        consumer = await work_consumer(js, "training", pool)
        await orch.jetstream().publish(f"work.training.{pool}", item)
        m = await take(js, "WORK", consumer, item)
        await m.in_progress()
        await m.ack()
    await orch.jetstream().publish(f"ops.training.{op}.started", b"started")  # the orchestrator's grant
    await js.publish(f"ops.training.{op}.completed", b"done")
    assert len(await push_read(nc, js, [f"ops.training.{op}.>"])) == 2
    assert (await js.get_last_msg("OPS", f"ops.training.{op}.completed", direct=True)).data == b"done"
    await (await jm.jetstream().object_store("BARS")).put("MSFT/1d", b"bars")
    assert (await (await js.object_store("BARS")).get("MSFT/1d")).data == b"bars"
    models = await js.object_store("MODELS")
    await models.put("s1/k1/model.pt", b"w" * 150_000)
    await models.put("s1/k1/metadata.json", b"{}")
    assert (await models.get("s1/k1/model.pt")).data == b"w" * 150_000
    assert {"s1/k1/model.pt", "s1/k1/metadata.json"} <= {o.name for o in await models.list()}
    ckpt = await js.object_store("CHECKPOINTS")
    await ckpt.put(f"{op}/latest", b"c1")
    await objects.put(js, "CHECKPOINTS", f"{op}/latest", b"c2")
    assert (await ckpt.get(f"{op}/latest")).data == b"c2"
    assert await objects.delete(js, "CHECKPOINTS", f"{op}/latest")
    await (await js.key_value("ACTORS")).put("trainer.t-1", b"hb")
    await lease_request(orch, nc, "training")
    clean(errs, orch_errs, jm_errs)


async def test_dummy_flow(as_role: Any) -> None:
    nc, errs = await as_role("dummy")
    orch, orch_errs = await as_role("orchestrator")
    js = nc.jetstream()
    consumer = await work_consumer(js, "dummy", "any")
    op = op_id("dummy")
    item = f'{{"op_id": "{op}"}}'.encode()
    await orch.jetstream().publish("work.dummy.any", item)
    m = await take(js, "WORK", consumer, item)
    await js.publish(f"ops.dummy.{op}.completed", b"done")
    await m.term()  # a malformed item is terminated, not redelivered
    assert len(await push_read(nc, js, [f"ops.dummy.{op}.>"])) == 1
    await (await js.key_value("ACTORS")).put("dummy.d-1", b"hb")
    await lease_request(orch, nc, "dummy")
    clean(errs, orch_errs)


async def test_ib_flow(as_role: Any) -> None:
    nc, errs = await as_role("ib")
    js = nc.jetstream()
    pacing = await js.key_value("PACING")
    await pacing.put("ib-pool-1", b"[1,2,3]")
    assert (await pacing.get("ib-pool-1")).value == b"[1,2,3]"
    await (await js.key_value("ACTORS")).put("ib.ib-1", b"hb")
    await nc.subscribe("ops.*.*.cancel")
    await subscribed(nc)  # a refusal of the subscription would have arrived by now
    await js.stream_info("OPS")
    clean(errs)


async def test_cli_flow(as_role: Any) -> None:
    nc, errs = await as_role("cli")
    tr, tr_errs = await as_role("trainer")
    js = nc.jetstream()
    op = op_id("training")
    ack = await js.publish("cmd.training.start", b"{}", headers={"Nats-Msg-Id": f"cmd-{op}"})
    assert ack.stream == "CMD"
    # a cancel is stored beside OPS (OPS_CANCELS), never in it
    assert (await js.publish(f"ops.training.{op}.cancel", b"cancel")).stream == "OPS_CANCELS"
    for s in ("CMD", "WORK", "OPS", "OPS_CANCELS"):
        await js.stream_info(s)
    _live, seen = await core_listen(nc, "ops.>")
    await tr.jetstream().publish(f"ops.training.{op}.progress", b"p")
    await asyncio.wait_for(seen.wait(), 10)
    assert len(await replay(js, f"ops.training.{op}.>", 1)) == 1
    assert (await js.get_last_msg("OPS", f"ops.training.{op}.progress", direct=True)).data == b"p"
    assert len(await push_read(nc, js, [f"ops.training.{op}.>"])) == 1
    await (await tr.jetstream().key_value("ACTORS")).put("trainer.t-9", b"hb")
    actors = await js.key_value("ACTORS")
    assert (await actors.get("trainer.t-9")).value == b"hb"
    assert "trainer.t-9" in await actors.keys()
    await (await tr.jetstream().object_store("MODELS")).put("s2/k/model.pt", b"m")
    models = await js.object_store("MODELS")
    assert (await models.get("s2/k/model.pt")).data == b"m"
    assert "s2/k/model.pt" in [o.name for o in await models.list()]
    bars = await js.object_store("BARS")
    await bars.put("IMPORT/1d", b"imported")
    assert (await bars.get("IMPORT/1d")).data == b"imported"
    clean(errs, tr_errs)


async def test_observer_flow(as_role: Any) -> None:
    nc, errs = await as_role("observer")
    tr, tr_errs = await as_role("trainer")
    js = nc.jetstream()
    op = op_id("training")
    _live, seen = await core_listen(nc, "ops.>")
    await tr.jetstream().publish(f"ops.training.{op}.progress", b"s")
    await asyncio.wait_for(seen.wait(), 10)
    assert len(await replay(js, f"ops.training.{op}.>", 1)) == 1
    assert (await js.get_last_msg("OPS", f"ops.training.{op}.progress", direct=True)).data == b"s"
    assert len(await push_read(nc, js, [f"ops.training.{op}.>"])) == 1
    for s in ("CMD", "WORK", "OPS"):
        await js.stream_info(s)
    actors = await js.key_value("ACTORS")
    await (await tr.jetstream().key_value("ACTORS")).put("trainer.t-obs", b"hb")
    assert (await actors.get("trainer.t-obs")).value == b"hb"
    assert "trainer.t-obs" in await actors.keys()
    clean(errs, tr_errs)
