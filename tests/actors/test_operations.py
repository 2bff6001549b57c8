"""The operation lifecycle end to end against a real nats-server: commands, cancels, replay,
restart, worker death, malformed input, duplicates."""

from __future__ import annotations

import asyncio

import msgspec
import nats
from nats.js import api as js_api

from events import subjects
from events.codec import encode
from events.messages import LoadData, OperationProgress, RunDummy, WorkItem
from ktrdr.ops import fold_all
from ktrdr.transport import last_message
from tests.conftest import make_settings
from tests.helpers import wait_for_event, wait_terminal


def dummy(iterations: int = 5, interval: float = 0.01) -> RunDummy:
    return RunDummy(op_id=subjects.new_op_id("dummy"), iterations=iterations, interval_s=interval)


async def test_cancel_running_operation_stops_during_iteration(start_actors, client):
    await start_actors("orchestrator", "dummy")
    cmd = dummy(iterations=100, interval=5.0)
    await client.submit(cmd)
    await wait_for_event(client, cmd.op_id, lambda ev, v: v.status == "running")
    await client.cancel(cmd.op_id, reason="test")
    view = await wait_terminal(client, cmd.op_id, timeout=5)
    assert view.status == "cancelled"
    assert view.where == "iteration 1/100"  # woke during the 5 s sleep, not after it
    assert view.finished_at is not None and view.started_at is not None
    assert (view.finished_at - view.started_at).total_seconds() < 4.0


async def test_cancel_queued_operation_is_cancelled_before_start(start_actors, client):
    await start_actors("orchestrator")  # no dummy worker: the work stays queued
    cmd = dummy()
    await client.submit(cmd)
    await wait_for_event(client, cmd.op_id, lambda ev, v: v.status == "queued")
    await client.cancel(cmd.op_id)
    view = await wait_terminal(client, cmd.op_id)
    assert view.status == "cancelled" and view.where.startswith("queued")
    # A worker that arrives later drops the work instead of running it.
    await start_actors("dummy")
    other = dummy(iterations=1)
    await client.submit(other)
    assert (await wait_terminal(client, other.op_id)).status == "completed"
    events = await client.events(cmd.op_id)
    assert not any(type(e).__name__ == "OperationStarted" for e in events)
    assert fold_all(events).status == "cancelled"


async def test_a_cancel_recorded_while_no_orchestrator_hears_it_is_honoured_by_the_worker(start_actors, client):
    """A user's cancel of queued work while the orchestrator is away is only in OPS_CANCELS: the worker
    that later takes the work finds it there before it runs anything."""
    orch, = await start_actors("orchestrator")  # no dummy worker yet: the work stays queued
    cmd = dummy(iterations=50, interval=0.2)
    await client.submit(cmd)
    await wait_for_event(client, cmd.op_id, lambda ev, v: v.status == "queued")
    await orch.stop()
    await client.cancel(cmd.op_id, reason="while the orchestrator was away")
    await start_actors("orchestrator", "dummy")
    view = await wait_terminal(client, cmd.op_id)
    assert view.status == "cancelled" and view.reason == "while the orchestrator was away"
    assert view.current_step == 0  # not one iteration ran


async def test_cancel_finished_operation_changes_nothing(start_actors, client):
    await start_actors("orchestrator", "dummy")
    cmd = dummy(iterations=2)
    await client.submit(cmd)
    assert (await wait_terminal(client, cmd.op_id)).status == "completed"
    await client.cancel(cmd.op_id)
    # The cancel request is recorded (stored in OPS_CANCELS once cancel() returns); the fold is unchanged.
    assert await last_message(client.js, subjects.cancel(cmd.op_id)) is not None
    view = await client.view(cmd.op_id)
    assert view.status == "completed" and view.result["iterations_completed"] == 2


async def test_replayed_view_equals_live_view(start_actors, client):
    await start_actors("orchestrator", "dummy")
    cmd = dummy(iterations=20, interval=0.005)
    live_lines: list[tuple[str, float]] = []
    from ktrdr.rendering import ProgressRenderer

    r = ProgressRenderer.for_domain("dummy")
    watcher = asyncio.create_task(client.watch(
        cmd.op_id, lambda ev, v: live_lines.append((r.line(v), v.percentage)), idle_timeout=15))
    await asyncio.sleep(0)  # let the watcher subscribe before the command goes out
    await client.submit(cmd)
    live = await watcher
    replayed_lines: list[tuple[str, float]] = []
    replayed = await client.watch(cmd.op_id, lambda ev, v: replayed_lines.append((r.line(v), v.percentage)),
                                  idle_timeout=15)
    assert live.status == "completed"
    assert msgspec.to_builtins(replayed) == msgspec.to_builtins(live)
    assert replayed_lines == live_lines


async def test_same_command_twice_creates_one_operation(start_actors, client, settings):
    await start_actors("orchestrator", "dummy")
    cmd = dummy(iterations=2)
    await client.submit(cmd)
    await client.submit(cmd)  # a retried publish (same Nats-Msg-Id): stored once
    # Beyond the dedupe window the orchestrator's own check catches it: publish with another msg id.
    await client.js.publish(subjects.command(cmd), encode(cmd), headers={"Nats-Msg-Id": "other-id"})
    await wait_terminal(client, cmd.op_id)
    marker = dummy(iterations=1)  # commands are consumed in order: once this one ends, all were seen
    await client.submit(marker)
    await wait_terminal(client, marker.op_id)
    events = await client.events(cmd.op_id)
    names = [type(e).__name__ for e in events]
    assert names.count("OperationCreated") == 1
    assert names.count("OperationStarted") == 1
    assert names.count("OperationCompleted") == 1


async def test_invalid_command_is_rejected_with_reason(start_actors, client):
    await start_actors("orchestrator", "dummy")
    cmd = dummy(iterations=0)
    await client.submit(cmd)
    view = await wait_terminal(client, cmd.op_id)
    assert view.status == "rejected"
    assert "iterations" in view.error and "between 1 and" in view.error


async def test_malformed_payloads_do_not_crash_any_actor(start_actors, client, settings):
    await start_actors("orchestrator", "dummy")
    nc = client.nc
    js = client.js
    bad_op = subjects.new_op_id("dummy")
    garbage = [b"", b"not json", b'{"type":"RunDummy"}', b'{"type":"Nope","op_id":"x"}', b"\xff\xfe", b"[1,2]",
               b'{"type":"RunDummy","op_id":"' + bad_op.encode() + b'","iterations":"many"}']
    for g in garbage:
        await js.publish("cmd.dummy.run", g)
        await js.publish("cmd.unknown.verb", g)
        await js.publish(subjects.work("dummy"), g)
        await nc.publish(subjects.cancel(bad_op), g)
        await nc.publish("ops.dummy.not-an-op.cancel", g)
    # A work item whose command does not match its op id is dropped too.
    wrong = WorkItem(op_id=bad_op, domain="dummy", command=LoadData(op_id="data-x", symbol="AAPL"))
    await js.publish(subjects.work("dummy"), encode(wrong))
    await nc.flush()
    # The malformed command with a sniffable op id is rejected with a reason.
    view = await wait_terminal(client, bad_op)
    assert view.status == "rejected" and "malformed command" in view.error
    # Everyone still works.
    cmd = dummy(iterations=3)
    await client.submit(cmd)
    assert (await wait_terminal(client, cmd.op_id)).status == "completed"


async def test_killed_worker_does_not_leave_operation_running(start_actors, client, settings):
    await start_actors("orchestrator")
    worker, = await start_actors("dummy")
    cmd = dummy(iterations=1000, interval=0.05)
    await client.submit(cmd)
    await wait_for_event(client, cmd.op_id, lambda ev, v: isinstance(ev, OperationProgress))
    await worker.kill()  # no drain, no terminal event: as if the process died
    view = await wait_terminal(client, cmd.op_id, timeout=settings.worker_timeout_s + 10)
    assert view.status == "failed"
    assert view.error_code == "worker_lost" and "stopped heartbeating" in view.error


async def test_killed_worker_operation_is_redelivered_to_a_replica(start_actors, client, settings):
    await start_actors("orchestrator")
    first, = await start_actors("dummy")
    cmd = dummy(iterations=60, interval=0.05)
    await client.submit(cmd)
    await wait_for_event(client, cmd.op_id, lambda ev, v: isinstance(ev, OperationProgress))
    await first.kill()
    await start_actors("dummy")  # a replica: JetStream redelivers the work when the lease runs out
    view = await wait_terminal(client, cmd.op_id, timeout=settings.worker_timeout_s + 15)
    assert view.status == "completed"
    assert view.attempts == 2


async def test_restart_of_everything_keeps_history(start_actors, client, settings, nats_server):
    actors = await start_actors("orchestrator", "dummy")
    done = dummy(iterations=3)
    await client.submit(done)
    await wait_terminal(client, done.op_id)
    for a in actors:
        await a.stop()
    await client.nc.close()
    nats_server.restart()
    from ktrdr.client import Client

    async with Client(settings) as c2:
        views = {v.op_id: v for v in await c2.list_operations()}
        assert views[done.op_id].status == "completed"
        assert views[done.op_id].result["iterations_completed"] == 3
        # And the restarted stack takes new work.
        await start_actors("orchestrator", "dummy")
        again = dummy(iterations=2)
        await c2.submit(again)
        assert (await wait_terminal(c2, again.op_id)).status == "completed"


async def test_streams_with_other_settings_are_reported_not_changed(client, settings):
    from ktrdr.transport import ensure_streams

    assert await ensure_streams(client.js, settings) == []  # same settings: nothing to say
    other = make_settings(settings.home, settings.nats_url, ops_max_age_s=60.0)
    warnings = await ensure_streams(client.js, other)
    # OPS and OPS_CANCELS (its cancels keep as long as its events): each says so
    assert len(warnings) == 2 and all("max_age" in w for w in warnings)
    assert [w.split()[1] for w in warnings] == ["OPS", "OPS_CANCELS"]
    info = await client.js.stream_info("OPS")
    assert abs(info.config.max_age - settings.ops_max_age_s) < 1


async def test_server_restart_mid_operation_is_survived(start_actors, client, settings, nats_server):
    await start_actors("orchestrator", "dummy")
    cmd = dummy(iterations=40, interval=0.05)
    await client.submit(cmd)
    await wait_for_event(client, cmd.op_id, lambda ev, v: v.current_step >= 3)
    nats_server.restart()
    nc = await nats.connect(settings.nats_url)
    try:
        from ktrdr.client import Client

        async with Client(settings) as c2:
            view = await wait_terminal(c2, cmd.op_id, timeout=30)
        assert view.status == "completed"
    finally:
        await nc.close()


async def test_work_consumers_deliver_an_item_at_most_max_deliver_times(start_actors, client, settings):
    """KTRDR_MAX_DELIVER is the WORK consumers' max_deliver (it was -1: unlimited), also for a
    consumer an earlier version created without it."""
    name = subjects.work_consumer("dummy", "gpu")
    await client.js.add_consumer(subjects.STREAM_WORK, js_api.ConsumerConfig(
        name=name, durable_name=name, filter_subject=subjects.work("dummy", "gpu"),
        ack_policy=js_api.AckPolicy.EXPLICIT, max_deliver=-1))
    await start_actors("dummy", settings=make_settings(settings.home, settings.nats_url, max_deliver=3,
                                                        pools=["gpu"]))
    for pool in ("any", "gpu"):
        info = await client.js.consumer_info(subjects.STREAM_WORK, subjects.work_consumer("dummy", pool))
        assert info.config.max_deliver == 3, pool
