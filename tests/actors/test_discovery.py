"""NATS service discovery on a running stack: every actor answers `$SRV.PING|INFO|STATS` (the micro
protocol's JSON, read back with nats-py's own nats.micro types) at its three narrowings, lists what it
handles as endpoints, and its counters move when an operation runs through it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from nats.aio.msg import Msg
from nats.micro.service import ServiceInfo, ServicePing, ServiceStats

from actors.dummy import DummyWorker
from actors.runtime import OperationContext
from events import subjects
from events.messages import RunDummy
from ktrdr.errors import KtrdrError
from tests.helpers import gather_answers, subscribed

pytestmark = pytest.mark.timeout(60)


async def test_ping_all_is_answered_once_by_each_actor_with_its_role_and_id(start_actors, client):
    actors = await start_actors("orchestrator", "dummy", "dummy")
    answers = [ServicePing.from_dict(a) for a in await gather_answers(client.nc, "$SRV.PING", len(actors))]
    by_id = {p.id: p for p in answers}
    assert len(by_id) == len(actors)  # one answer each
    for a in actors:
        ping = by_id[subjects.service_id(a.id)]
        assert ping.name == f"ktrdr-{a.role}"
        assert ping.metadata["role"] == a.role and ping.metadata["actor_id"] == a.id
        assert ping.version == ping.metadata["version"]
    assert by_id[subjects.service_id(actors[1].id)].metadata["pools"] == "any"
    # narrowed: a plain request to one service kind, and to one instance
    reply = await client.nc.request("$SRV.PING.ktrdr-orchestrator", b"", timeout=5)
    assert ServicePing.from_dict(json.loads(reply.data)).id == subjects.service_id(actors[0].id)
    one = actors[2]
    reply = await client.nc.request(f"$SRV.PING.ktrdr-dummy.{subjects.service_id(one.id)}", b"", timeout=5)
    assert json.loads(reply.data)["metadata"]["actor_id"] == one.id
    assert json.loads(reply.data)["type"] == "io.nats.micro.v1.ping_response"


async def test_info_lists_the_subjects_each_actor_handles(start_actors, client):
    _orch, dummy = await start_actors("orchestrator", "dummy")
    reply = await client.nc.request(f"$SRV.INFO.ktrdr-dummy.{subjects.service_id(dummy.id)}", b"", timeout=5)
    info = ServiceInfo.from_dict(json.loads(reply.data))
    assert info.type == "io.nats.micro.v1.info_response" and info.description
    endpoints = {e.name: e for e in info.endpoints}
    assert endpoints["work-dummy-any"].subject == "work.dummy.any"
    assert endpoints["work-dummy-any"].queue_group == "work-dummy-any"
    assert endpoints["cancel"].subject == "ops.*.*.cancel"
    reply = await client.nc.request("$SRV.INFO.ktrdr-orchestrator", b"", timeout=5)
    orch_eps = {e.name: e.subject for e in ServiceInfo.from_dict(json.loads(reply.data)).endpoints}
    assert orch_eps["commands"] == "cmd.>" and orch_eps["leases"] == "lease.>"


async def stats_of(client: Any, name: str, actor_id: str) -> dict[str, Any]:
    reply = await client.nc.request(f"$SRV.STATS.{name}.{subjects.service_id(actor_id)}", b"", timeout=5)
    stats = ServiceStats.from_dict(json.loads(reply.data))
    return {e.name: e for e in stats.endpoints}


async def stats_once_counted(client: Any, name: str, actor_id: str, endpoint: str) -> dict[str, Any]:
    """STATS of one actor once `endpoint` has counted a request: the worker records a work item once its
    verdict is out, a moment after a watcher sees the verdict (bounded: 10 s)."""
    async with asyncio.timeout(10):
        while (stats := await stats_of(client, name, actor_id))[endpoint].num_requests < 1:
            await asyncio.sleep(0.05)
    return stats


async def test_stats_count_the_work_and_commands_of_an_operation(start_actors, client):
    orch, dummy = await start_actors("orchestrator", "dummy")
    before_w, before_c = await stats_of(client, "ktrdr-dummy", dummy.id), await stats_of(client, "ktrdr-orchestrator",
                                                                                            orch.id)
    assert before_w["work-dummy-any"].num_requests == 0
    cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=3, interval_s=0.01)
    await client.submit(cmd)
    view = await client.watch(cmd.op_id, lambda ev, v: None, idle_timeout=10)
    assert view.status == "completed"
    work = (await stats_once_counted(client, "ktrdr-dummy", dummy.id, "work-dummy-any"))["work-dummy-any"]
    assert work.num_requests == 1 and work.num_errors == 0 and work.processing_time > 0
    assert work.average_processing_time == work.processing_time
    after_c = await stats_of(client, "ktrdr-orchestrator", orch.id)
    assert after_c["commands"].num_requests == before_c["commands"].num_requests + 1
    assert after_c["leases"].num_requests >= before_c["leases"].num_requests + 2  # claim and release


class FailingDummy(DummyWorker):
    async def handle(self, op: OperationContext) -> dict[str, Any]:
        raise KtrdrError("the dummy broke on purpose")


async def test_a_failed_operation_counts_as_an_endpoint_error(start_actors, client, settings):
    await start_actors("orchestrator")
    dummy = FailingDummy(settings)
    await dummy.start()
    try:
        cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=3, interval_s=0.01)
        await client.submit(cmd)
        view = await client.watch(cmd.op_id, lambda ev, v: None, idle_timeout=10)
        assert view.status == "failed"
        stats = await stats_once_counted(client, "ktrdr-dummy", dummy.id, "work-dummy-any")
        assert stats["work-dummy-any"].num_errors == 1
        assert stats["work-dummy-any"].last_error == "the dummy broke on purpose"
    finally:
        await dummy.stop()


async def test_an_answer_never_goes_to_a_subject_that_is_no_callers_inbox(start_actors, client):
    """A ping whose reply names another role's inbox, or an ops subject the orchestrator may publish
    on, is not answered (the actors' allow_responses must not make them write where a caller cannot)."""
    orch, = await start_actors("orchestrator")
    seen: list[str] = []
    done = asyncio.Event()

    async def cb(msg: Msg) -> None:
        seen.append(msg.subject)
        if msg.subject.startswith("_INBOX_cli."):
            done.set()

    for subject in ("_INBOX_job-manager.x.y", "ops.dummy.dummy-20260101T000000000000-abcdef.completed"):
        await client.nc.subscribe(subject, cb=cb)
    own = client.nc.new_inbox()
    await client.nc.subscribe(own, cb=cb)
    await subscribed(client.nc)
    await client.nc.publish("$SRV.PING.ktrdr-orchestrator", b"", reply="_INBOX_job-manager.x.y")
    await client.nc.publish("$SRV.PING", b"", reply="ops.dummy.dummy-20260101T000000000000-abcdef.completed")
    await client.nc.publish("$SRV.PING", b"", reply=own)  # answered: after the two above, in order
    await asyncio.wait_for(done.wait(), 10)
    assert seen == [own]
    assert orch.discovery.refused_replies == 2
