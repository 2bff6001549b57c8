"""Refusals through the real client calls: anonymous clients, the purge that once emptied OPS,
JetStream publishes outside a role's domain, KV and Object Store writes to another's bucket or key,
a work consumer pointed at another domain, replies on another role's inbox. A refused call's
permission error reaches the connection's error callback (the call itself would only time out,
so the test cancels it once the error is in)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg
from nats.js import api
from nats.js.errors import APIError

from tests.helpers import subscribed
from tests.security.conftest import Errors, Server

pytestmark = pytest.mark.timeout(60)


async def refused(errors: Errors, call: Awaitable[Any], subject: str) -> None:
    """The call's permission error arrives; the call is then abandoned (it would time out).
    A subject ending in '.' is a prefix (object chunks have random names)."""
    task = asyncio.ensure_future(call)
    try:
        await errors.wait_for(f'"{subject.lower()}' + ("" if subject.endswith(".") else '"'))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert not (task.done() and not task.cancelled() and task.exception() is None), "the call succeeded"


async def test_anonymous_client_is_refused(secure_nats: Server) -> None:
    with pytest.raises(nats.errors.Error, match=r"(?i)authorization violation"):
        await nats.connect(secure_nats.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5)


async def test_wrong_key_is_refused(secure_nats: Server, tmp_path: Any) -> None:
    from ktrdr import auth

    other = auth.init(tmp_path, roles=["cli"])  # a valid NKEY the server does not know
    with pytest.raises(nats.errors.Error, match=r"(?i)authorization violation"):
        await nats.connect(secure_nats.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5,
                           **auth.connect_options("cli", auth_dir=other.dir))


async def test_nobody_but_nobody_deletes_or_purges_ops(as_role: Any) -> None:
    orch, _ = await as_role("orchestrator")
    await orch.jetstream().publish("ops.dummy.dummy-keep.created", b"kept")
    before = (await orch.jetstream().stream_info("OPS")).state.messages
    for role in ("cli", "observer", "orchestrator", "trainer", "job-manager", "dummy", "ib"):
        nc, errors = await as_role(role)
        js = nc.jetstream()
        await refused(errors, js.purge_stream("OPS"), "$JS.API.STREAM.PURGE.OPS")
        await refused(errors, js.delete_stream("OPS"), "$JS.API.STREAM.DELETE.OPS")
        await refused(errors, js.delete_msg("OPS", 1), "$JS.API.STREAM.MSG.DELETE.OPS")
        await refused(errors, js.delete_key_value("ACTORS"), "$JS.API.STREAM.DELETE.KV_ACTORS")
    assert (await orch.jetstream().stream_info("OPS")).state.messages >= before


CROSS_DOMAIN: list[tuple[str, str]] = [
    ("trainer", "ops.data.data-x.completed"),  # a trainer cannot publish data events
    ("trainer", "cmd.training.start"),  # ... nor commands
    ("trainer", "work.training.any"),  # ... nor skip the orchestrator's validation
    ("job-manager", "ops.training.training-x.progress"),  # a job-manager cannot touch training
    ("job-manager", "work.data.any"),
    ("dummy", "ops.data.data-x.failed"),
    ("observer", "ops.training.training-x.cancel"),  # an observer only reads
    ("observer", "cmd.dummy.run"),
    ("cli", "ops.training.training-x.completed"),  # the CLI cancels; it does not complete
    ("cli", "work.dummy.any"),
    ("ib", "ops.data.data-x.progress"),
]


@pytest.mark.parametrize(("role", "subject"), CROSS_DOMAIN)
async def test_jetstream_publish_outside_the_domain_is_refused(as_role: Any, role: str, subject: str) -> None:
    nc, errors = await as_role(role)
    await refused(errors, nc.jetstream().publish(subject, b"forged"), subject)


BUCKET_WRITES: list[tuple[str, str, Callable[[Any], Awaitable[Any]], str]] = [
    ("trainer", "presence of another role", lambda js: _kv_put(js, "ACTORS", "orchestrator.o-1"),
     "$KV.ACTORS.orchestrator.o-1"),
    ("cli", "presence at all", lambda js: _kv_put(js, "ACTORS", "cli.c-1"), "$KV.ACTORS.cli.c-1"),
    ("ib", "a lease", lambda js: _kv_put(js, "LEASES", "data-x"), "$JS.API.STREAM.INFO.KV_LEASES"),
    ("job-manager", "IB pacing", lambda js: _kv_put(js, "PACING", "p"), "$JS.API.STREAM.INFO.KV_PACING"),
    ("trainer", "bars", lambda js: _obj_put(js, "BARS", "AAPL/1h"), "$O.BARS.C."),
    ("job-manager", "a model", lambda js: _obj_put(js, "MODELS", "s/k/model.pt"), "$JS.API.STREAM.INFO.OBJ_MODELS"),
    ("cli", "a model", lambda js: _obj_put(js, "MODELS", "s/k/model.pt"), "$O.MODELS.C."),
    ("observer", "bars", lambda js: _obj_put(js, "BARS", "AAPL/1h"), "$JS.API.STREAM.INFO.OBJ_BARS"),
    ("dummy", "a checkpoint", lambda js: _obj_put(js, "CHECKPOINTS", "x/latest"),
     "$JS.API.STREAM.INFO.OBJ_CHECKPOINTS"),
]


async def _kv_put(js: Any, bucket: str, key: str) -> None:
    await (await js.key_value(bucket)).put(key, b"forged")


async def _obj_put(js: Any, bucket: str, name: str) -> None:
    await (await js.object_store(bucket)).put(name, b"forged")


@pytest.mark.parametrize(("role", "what", "call", "subject"), BUCKET_WRITES,
                         ids=[f"{r}-{w}" for r, w, *_ in BUCKET_WRITES])
async def test_bucket_writes_outside_the_role_are_refused(
    as_role: Any, role: str, what: str, call: Callable[[Any], Awaitable[Any]], subject: str
) -> None:
    nc, errors = await as_role(role)
    await refused(errors, call(nc.jetstream()), subject)


async def test_work_consumer_cannot_take_another_domains_work(as_role: Any) -> None:
    """The create subject carries the filter and the server checks the payload against it: the
    job-manager's own consumer name with a training filter is rejected by the server, and the
    training consumer's name is not in its grant at all."""
    nc, errors = await as_role("job-manager")
    js = nc.jetstream()
    req = {"stream_name": "WORK", "config": {"name": "work-data-any", "durable_name": "work-data-any",
                                             "filter_subject": "work.training.any", "ack_policy": "explicit"}}
    reply = await nc.request("$JS.API.CONSUMER.CREATE.WORK.work-data-any.work.data.any",
                             json.dumps(req).encode(), timeout=10)
    assert "error" in json.loads(reply.data)
    await refused(errors, js.add_consumer("WORK", api.ConsumerConfig(
        name="work-training-any", durable_name="work-training-any", filter_subject="work.training.any")),
        "$JS.API.CONSUMER.CREATE.WORK.work-training-any.work.training.any")
    # Today's legacy create (durable name only, filter in the payload) is not granted to workers.
    await refused(errors, js.add_consumer("WORK", api.ConsumerConfig(
        durable_name="work-data-any", filter_subject="work.data.any")),
        "$JS.API.CONSUMER.DURABLE.CREATE.WORK.work-data-any")


async def test_replies_reach_only_the_requesting_role(as_role: Any) -> None:
    """The ib actor answers a job-manager's request on the job-manager's inbox (allow_responses);
    it cannot publish on an inbox it did not receive, nor can any role subscribe to another's."""
    jm, jm_errors = await as_role("job-manager")
    ib, ib_errors = await as_role("ib")
    trainer, tr_errors = await as_role("trainer")

    async def serve(msg: Msg) -> None:
        await msg.respond(b"answer")

    await ib.subscribe("ib.>", queue="ib", cb=serve)
    await subscribed(ib)
    assert (await jm.request("ib.head", b"AAPL", timeout=10)).data == b"answer"
    await trainer.subscribe("_INBOX_job-manager.>")
    await tr_errors.wait_for('subscription to "_inbox_job-manager.>"')
    await trainer.subscribe("_INBOX.>")
    await tr_errors.wait_for('subscription to "_inbox.>"')
    await ib.publish("_INBOX_job-manager.guessed.1", b"forged")
    await ib_errors.wait_for('publish to "_inbox_job-manager.guessed.1"')
    await trainer.publish("_INBOX_job-manager.guessed.2", b"forged")
    await tr_errors.wait_for('publish to "_inbox_job-manager.guessed.2"')
    assert jm_errors.permission_errors() == []


async def test_push_consumer_redirect_keeps_the_original_subject(as_role: Any) -> None:
    """Known limit of subject permissions: a role that may create consumers on OPS can point a push
    consumer's deliver subject (and deliver group) at anything with a subscriber; the server does
    not check it against the creator's permissions. What arrives still carries the stored subject
    (ops.…) and a $JS.ACK reply, never the subject it was delivered to, so handlers that check
    msg.subject (ib.* for the ib actor, $KV.ACTORS.* for presence) drop it. Streams do not count as
    subscribers here: nothing lands in WORK or CMD this way (no role may core-subscribe there)."""
    cli, _ = await as_role("cli")
    ib, _ = await as_role("ib")
    orch, _ = await as_role("orchestrator")
    got: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()

    async def on_ib(msg: Msg) -> None:
        if not got.done():
            got.set_result(msg)

    await ib.subscribe("ib.bars", queue="ib", cb=on_ib)
    await subscribed(ib)
    await orch.jetstream().publish("ops.data.data-redirect.created", b'{"symbol": "AAPL"}')
    js = cli.jetstream()
    info = await js.add_consumer("OPS", api.ConsumerConfig(
        deliver_subject="ib.bars", deliver_group="ib", filter_subject="ops.data.data-redirect.created",
        ack_policy=api.AckPolicy.NONE))
    msg = await asyncio.wait_for(got, 10)
    assert msg.subject == "ops.data.data-redirect.created"
    assert msg.reply.startswith("$JS.ACK.OPS.")
    await js.delete_consumer("OPS", info.name)
    with pytest.raises(APIError):  # nor can it deliver into OPS itself (a cycle)
        await js.add_consumer("OPS", api.ConsumerConfig(deliver_subject="ops.data.x.completed",
                                                        ack_policy=api.AckPolicy.NONE))
