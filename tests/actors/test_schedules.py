"""Schedules fired by nats-server's own message schedules (`@every 1s` on a real server, no fake
clock): each firing becomes one operation carrying schedule_name, a firing delivered again creates
nothing new, `skip` records the firings it skipped, a schedule the stack was down over fires once when
it is back (marked catch-up), and a schedule survives kill -9 of nats-server and of the orchestrator."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from events import subjects
from events.messages import OperationCreated, RunDummy, Schedule, ScheduleFired
from ktrdr.embedded import start_nats_server
from ktrdr.transport import schedules as store
from tests.actors.test_ha import Orchestrators, orchestrators  # noqa: F401  (the fixture)
from tests.helpers import wait_terminal

TEMPLATE_OP = "dummy-20260101T000000000000-000000"  # the command's op id is a template: each firing gets its own


def dummy_schedule(name: str, *, iterations: int = 1, interval_s: float = 0.01, overlap: str = "skip",
                   spec: str = "@every 1s") -> Schedule:
    return Schedule(name=name, spec=spec, overlap=overlap,  # type: ignore[arg-type]
                    command=RunDummy(op_id=TEMPLATE_OP, iterations=iterations, interval_s=interval_s))


async def records(client, name: str) -> list[ScheduleFired]:
    return await store.history(client.js, name)


async def wait_records(client, name: str, check, timeout: float = 20.0) -> list[ScheduleFired]:
    found: list[ScheduleFired] = []

    async def ok() -> bool:
        nonlocal found
        found = await records(client, name)
        return bool(check(found))

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await ok():
        if loop.time() > deadline:
            raise TimeoutError(f"schedule {name}: records {[(r.seq, r.outcome, r.note) for r in found]}")
        await asyncio.sleep(0.1)
    return found


def started(recs: list[ScheduleFired]) -> list[ScheduleFired]:
    return [r for r in recs if r.outcome == "started"]


async def created_count(client, domain: str = "dummy") -> int:
    info = await client.js.stream_info(subjects.STREAM_OPS, subjects_filter=f"ops.{domain}.*.{OperationCreated.name}")
    return len(info.state.subjects or {})


async def test_the_schedules_stream_lets_the_server_fire_its_schedules(client):
    from ktrdr.transport.streams import stream_api

    info = await stream_api(client.js, f"STREAM.INFO.{subjects.STREAM_SCHEDULES}")
    assert info["config"]["allow_msg_schedules"] is True
    assert sorted(info["config"]["subjects"]) == sorted(subjects.SCHEDULES_SUBJECTS)


async def test_a_schedule_fires_operations_that_carry_its_name(start_actors, client):
    await start_actors("orchestrator", "dummy")
    await store.put_definition(client.js, dummy_schedule("tick"))
    recs = await wait_records(client, "tick", lambda rs: len(started(rs)) >= 2)
    ops = [r.op_id for r in started(recs)]
    assert len(set(ops)) == len(ops)
    for op_id in ops[:2]:
        assert op_id is not None
        view = await wait_terminal(client, op_id)
        assert view.status == "completed" and view.schedule_name == "tick"
        assert view.command is not None and view.command["schedule_name"] == "tick"
        created = [e for e in await client.events(op_id) if isinstance(e, OperationCreated)]
        assert created and created[0].schedule_name == "tick"
    assert all(not r.catch_up and not r.manual for r in started(recs))


async def test_a_firing_delivered_again_creates_no_second_operation(start_actors, client, settings):
    orch, _ = await start_actors("orchestrator", "dummy")
    await store.put_definition(client.js, dummy_schedule("again"))
    await wait_records(client, "again", lambda rs: len(started(rs)) >= 2)
    paused = dummy_schedule("again")
    paused.paused = True
    await store.put_definition(client.js, paused)
    await orch.stop()
    before = await created_count(client)
    # The orchestrator's consumer forgotten: the next one is delivered every stored firing again.
    await client.js.delete_consumer(subjects.STREAM_SCHEDULES, subjects.SCHEDULES_CONSUMER)
    await start_actors("orchestrator", settings=settings)
    await until(lambda: _all_acked(client))
    assert await created_count(client) == before
    firings = await client.js.stream_info(subjects.STREAM_SCHEDULES, subjects_filter=subjects.schedule_fire("again"))
    assert before == len({r.op_id for r in started(await records(client, "again"))}) <= firings.state.messages


async def until(check, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await _quietly(check):
        if loop.time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.1)


async def _quietly(check) -> bool:
    try:
        return bool(await check())
    except Exception:  # the server still restarting: not yet
        return False


async def _js_back(client) -> bool:
    await client.js.stream_info(subjects.STREAM_SCHEDULES)
    await client.live_actors()
    return True


async def _all_acked(client) -> bool:
    ci = await client.js.consumer_info(subjects.STREAM_SCHEDULES, subjects.SCHEDULES_CONSUMER)
    return ci.num_pending == 0 and ci.num_ack_pending == 0


async def test_skip_records_the_firings_it_skipped_while_one_runs(start_actors, client):
    await start_actors("orchestrator", "dummy")
    await store.put_definition(client.js, dummy_schedule("slow", iterations=40, interval_s=0.1))
    recs = await wait_records(client, "slow", lambda rs: len([r for r in rs if r.outcome == "skipped"]) >= 2)
    first = started(recs)[0]
    skipped = [r for r in recs if r.outcome == "skipped"]
    assert len(started(recs)) == 1 and all(first.op_id in r.note for r in skipped)
    assert all(r.op_id is None for r in skipped)
    await client.cancel(first.op_id or "")
    await wait_terminal(client, first.op_id or "")


async def test_buffer_one_starts_one_firing_when_the_running_one_ends(start_actors, client):
    await start_actors("orchestrator", "dummy")
    await store.put_definition(client.js, dummy_schedule("buf", iterations=25, interval_s=0.1, overlap="buffer-one"))
    recs = await wait_records(client, "buf", lambda rs: any(r.outcome == "skipped" for r in rs))
    buffered = [r for r in recs if r.outcome == "buffered"]
    assert len(buffered) == 1 and len(started(recs)) == 1
    recs = await wait_records(client, "buf", lambda rs: any(r.outcome == "started" and r.seq == buffered[0].seq
                                                            for r in rs), timeout=30)
    first, second = started(recs)[:2]
    assert second.seq == buffered[0].seq
    v1 = await wait_terminal(client, first.op_id or "", timeout=30)
    v2 = await client.view(second.op_id or "")
    assert v1.status == "completed" and v1.finished_at is not None and v2.created_at is not None
    assert v2.created_at >= v1.finished_at  # it started once the first had ended, not beside it
    paused = dummy_schedule("buf", overlap="buffer-one")
    paused.paused = True
    await store.put_definition(client.js, paused)


async def test_firings_that_piled_up_while_the_orchestrator_was_away_run_once(start_actors, client, settings):
    orch, _ = await start_actors("orchestrator", "dummy")
    # overlap allow: an operation the stopped orchestrator left unfinished must not turn the newest firing
    # into a skip (that is the overlap rule, tested on its own above); here only the piled-up rule counts
    await store.put_definition(client.js, dummy_schedule("away", overlap="allow"))
    recs = await wait_records(client, "away", lambda rs: len(started(rs)) >= 1)
    await orch.stop()
    last_seen = recs[-1].seq
    fire = subjects.schedule_fire("away")

    async def piled_up() -> bool:  # three firings stored that nobody has taken
        info = await client.js.stream_info(subjects.STREAM_SCHEDULES, subjects_filter=fire)
        raw = await client.js.get_last_msg(subjects.STREAM_SCHEDULES, fire)
        return info.state.messages >= 4 and (raw.seq or 0) > last_seen + 5

    await until(piled_up)
    await start_actors("orchestrator", settings=settings)
    recs = await wait_records(client, "away", lambda rs: any(r.seq > last_seen + 5 and r.outcome == "started"
                                                             for r in rs))
    after = [r for r in recs if r.seq > last_seen]
    first_run = next(r for r in after if r.outcome == "started")
    missed = [r for r in after if r.seq < first_run.seq]
    assert len(missed) >= 2 and all(r.outcome == "missed" and r.op_id is None for r in missed), after
    assert first_run.catch_up and "catch-up" in first_run.note
    assert (await wait_terminal(client, first_run.op_id or "")).status == "completed"


async def test_a_firing_left_waiting_for_a_schedule_removed_since_starts_nothing(start_actors, client, settings):
    orch, _ = await start_actors("orchestrator", "dummy")
    await store.put_definition(client.js, dummy_schedule("gone"))
    recs = await wait_records(client, "gone", lambda rs: len(started(rs)) >= 1)
    await orch.stop()
    fire = subjects.schedule_fire("gone")

    async def one_waiting() -> bool:
        raw = await client.js.get_last_msg(subjects.STREAM_SCHEDULES, fire)
        return (raw.seq or 0) > recs[-1].seq + 1

    await until(one_waiting)
    removed = dummy_schedule("gone")
    removed.removed = True
    await store.put_definition(client.js, removed)
    before = await created_count(client)
    await start_actors("orchestrator", settings=settings)
    recs = await wait_records(client, "gone", lambda rs: any("removed" in r.note for r in rs))
    assert all(r.outcome == "skipped" and r.op_id is None for r in recs if "removed" in r.note)
    await until(lambda: _all_acked(client))
    assert await created_count(client) == before


@pytest.mark.slow
async def test_a_schedule_the_stack_was_down_over_fires_once_on_return_marked_catch_up(
        start_actors, client, settings, nats_server):
    actors = await start_actors("orchestrator", "dummy")
    await store.put_definition(client.js, dummy_schedule("down"))
    recs = await wait_records(client, "down", lambda rs: len(started(rs)) >= 1)
    for a in actors:
        await a.stop()
    await client.__aexit__(None, None, None)
    nats_server.stop()
    down_at = datetime.now(UTC)
    await asyncio.sleep(3.5)  # the stack is down over three of its `@every 1s` times: the scenario itself
    nats_server.proc = start_nats_server(nats_server.store, nats_server.port, nats_server.log)
    async with type(client)(settings) as c2:
        await start_actors("orchestrator", "dummy", settings=settings)
        recs = await wait_records(c2, "down", lambda rs: any(r.fired_at > down_at and r.outcome == "started"
                                                             for r in rs))
        after = [r for r in recs if r.fired_at > down_at]
        assert after[0].outcome == "started" and after[0].catch_up, after
        assert "catch-up" in after[0].note
        # one firing for the three times it was down over: the next one comes a full interval later
        assert all(not r.catch_up for r in after[1:])
        view = await wait_terminal(c2, after[0].op_id or "")
        assert view.status == "completed" and view.schedule_name == "down"


@pytest.mark.slow
async def test_a_schedule_survives_kill_9_of_nats_server_and_of_the_orchestrator(
        client, settings, nats_server, orchestrators, start_actors):  # noqa: F811
    orchs: Orchestrators = orchestrators()
    proc = orchs.start()
    await orchs.wait_state(proc, "active")
    await start_actors("dummy")
    await store.put_definition(client.js, dummy_schedule("hardy"))
    await wait_records(client, "hardy", lambda rs: len(started(rs)) >= 1)
    proc.kill()  # kill -9 of the orchestrator
    proc.wait()
    nats_server.kill()  # and of nats-server
    nats_server.proc = start_nats_server(nats_server.store, nats_server.port, nats_server.log)
    back = datetime.now(UTC)
    await until(lambda: _js_back(client), timeout=40)
    proc = orchs.start()
    await orchs.wait_state(proc, "active", timeout=40)
    recs = await wait_records(client, "hardy", lambda rs: len([r for r in started(rs) if r.fired_at > back]) >= 2,
                              timeout=40)
    for r in [r for r in started(recs) if r.fired_at > back][:2]:
        view = await wait_terminal(client, r.op_id or "", timeout=30)
        assert view.status == "completed" and view.schedule_name == "hardy"
    assert (await store.definition(client.js, "hardy")) is not None


async def test_a_client_command_claiming_a_schedule_is_rejected(start_actors, client):
    await start_actors("orchestrator")
    cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=1, interval_s=0.0, schedule_name="forged")
    await client.submit(cmd)
    view = await wait_terminal(client, cmd.op_id)
    assert view.status == "rejected" and "schedule_name" in (view.error or "")
