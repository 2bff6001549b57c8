"""Faults and hostile input, each a finding of the fault campaign reproduced: one run per operation
across a server restart, work that skipped the orchestrator, forged verdicts and dedupe ids, poison
messages, oversized rejections, a YAML alias bomb, `ops list` order, `ops watch` across an outage,
SIGTERM drain, a killed actors process. Each ends with the stack serving a normal operation."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from actors.registry import build
from events import subjects
from events.codec import encode
from events.messages import (
    LoadData,
    OperationCompleted,
    OperationCreated,
    OperationProgress,
    OperationStarted,
    RunDummy,
    StartTraining,
    WorkItem,
)
from ktrdr.client import Client
from tests.conftest import make_settings
from tests.helpers import eventually, wait_for_event, wait_terminal

pytestmark = pytest.mark.slow
STRATEGY = Path(__file__).parents[2] / "strategies" / "mlp_rsi_aapl.yaml"


def dummy(iterations: int = 3, interval: float = 0.01) -> RunDummy:
    return RunDummy(op_id=subjects.new_op_id("dummy"), iterations=iterations, interval_s=interval)


async def serves(client: Client) -> None:
    cmd = dummy()
    await client.submit(cmd)
    assert (await wait_terminal(client, cmd.op_id, timeout=60)).status == "completed"


async def stream_messages(client: Client, name: str, timeout: float = 30.0) -> int:
    """Messages left in a work-queue stream, once the acks and terms already sent have been applied
    (the server removes a message after it processes its ack: under load that lags the ack's send)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (left := (await client.js.stream_info(name)).state.messages) and \
            asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)  # poll interval while the server applies them
    return left


async def test_a_server_killed_mid_operation_runs_each_operation_once(start_actors, settings, nats_server):
    await start_actors("orchestrator", "dummy", "dummy")  # two replicas: either could grab a redelivery
    cmds = [dummy(iterations=40, interval=0.05) for _ in range(4)]
    async with Client(settings) as c:
        for cmd in cmds:
            await c.submit(cmd)
        await wait_for_event(c, cmds[-1].op_id, lambda ev, v: v.current_step >= 5, timeout=30)
    nats_server.kill()  # kill -9: acks, in-progress marks and memory-backed presence are gone
    nats_server.restart()
    async with Client(settings, reconnect_attempts=-1) as c:
        for cmd in cmds:
            view = await wait_terminal(c, cmd.op_id, timeout=90)
            assert view.status == "completed", view.error
            events = await c.events(cmd.op_id)
            starts = [e for e in events if isinstance(e, OperationStarted)]
            steps = [e.progress.current_step for e in events if isinstance(e, OperationProgress)]
            assert len(starts) == 1, [(e.worker, e.attempt) for e in starts]  # never a second run
            assert len(steps) == len(set(steps)) == 40  # each iteration once, none run twice
        await serves(c)


async def test_events_lost_in_a_dead_servers_socket_are_resent_and_all_counted(start_actors, settings, nats_server):
    # The server stops reading (SIGSTOP) while a dummy publishes: those progress events sit unread in
    # its socket and die with it (kill -9). What the dummy publishes until it reconnects waits in
    # nats-py's buffer, which its reconnect flushes before the publisher resends the unacked ones:
    # the stream stores the holder's chain out of order. Every step must still count, once.
    _orch, worker = await start_actors("orchestrator", "dummy")
    cmd = dummy(iterations=60, interval=0.05)
    async with Client(settings) as c:
        await c.submit(cmd)
        await wait_for_event(c, cmd.op_id, lambda ev, v: v.current_step >= 5, timeout=30)
    publisher = worker.publisher
    assert publisher is not None
    os.kill(nats_server.proc.pid, signal.SIGSTOP)
    sent = publisher.sent
    await eventually(lambda: publisher.sent >= sent + 5, timeout=30)  # written to the socket, never read
    nats_server.kill()
    nats_server.restart()
    async with Client(settings, reconnect_attempts=-1) as c:
        view = await wait_terminal(c, cmd.op_id, timeout=90)
        assert view.status == "completed", view.error
        events = await c.events(cmd.op_id)
        steps = [e.progress.current_step for e in events if isinstance(e, OperationProgress)]
        assert sorted(set(steps)) == list(range(1, 61)) and len(steps) == 60, (events.unproven, events.notes)
        assert publisher.resent >= 5  # the lost ones were sent again (stored once: the stream dedupes)


async def test_work_that_skipped_the_orchestrator_is_dropped(start_actors, client):
    await start_actors("orchestrator", "dummy", "trainer")
    forged = [RunDummy(op_id=subjects.new_op_id("dummy"), iterations=5),
              StartTraining(op_id=subjects.new_op_id("training"), strategy_yaml=STRATEGY.read_text(),
                            epochs=10**9, data_mode="none")]
    for cmd in forged:
        await client.js.publish(subjects.work(cmd.domain), encode(WorkItem(op_id=cmd.op_id, domain=cmd.domain,
                                                                          command=cmd)))
    await serves(client)  # consumed in order: the forged items were seen before this one ran
    for cmd in forged:
        assert await client.events(cmd.op_id) == []  # never started, never created
    assert await stream_messages(client, "WORK") == 0  # terminated, not left to poison the stream


async def test_forged_verdicts_and_dedupe_ids_change_nothing(start_actors, client):
    await start_actors("orchestrator", "dummy")
    cmd = dummy(iterations=20, interval=0.1)
    await client.submit(cmd)
    view = await wait_for_event(client, cmd.op_id, lambda ev, v: v.current_step >= 3)
    holder = view.worker
    subject = subjects.ops(cmd.op_id, "completed")
    forged = OperationCompleted(op_id=cmd.op_id, actor="stranger-1", result={"iterations_completed": 3})
    await client.js.publish(subject, encode(forged))
    # a forged event that names the holder, and every dedupe id a stranger could guess
    await client.js.publish(subject, encode(OperationCompleted(op_id=cmd.op_id, actor="stranger-2")),
                            headers={"Nats-Msg-Id": f"{cmd.op_id}.terminal"})
    await client.js.publish(subject, b"garbage", headers={"Nats-Msg-Id": f"{cmd.op_id}.{holder}.terminal"})
    final = await wait_terminal(client, cmd.op_id, timeout=60)
    assert final.status == "completed" and final.result["iterations_completed"] == 20
    assert any("unproven" in note for note in final.errors)  # not the holder's key: ignored, noted


async def test_poison_commands_and_work_never_stay_in_the_streams(start_actors, client):
    await start_actors("orchestrator", "dummy")
    deep = b'{"type":"RunDummy","op_id":' + b"[" * 60_000 + b"]" * 60_000 + b"}"
    unknown_domain = encode(dummy()).replace(b'"dummy-', b'"nope-')
    for payload in (deep, unknown_domain, b"\x00" * 1000, b"{}" * 100_000):
        await client.js.publish(subjects.command(RunDummy), payload)
        await client.js.publish(subjects.work("dummy"), payload)
    await serves(client)
    assert await stream_messages(client, "CMD") == 0
    assert await stream_messages(client, "WORK") == 0


async def test_a_huge_bad_value_is_rejected_with_a_short_reason(start_actors, client):
    await start_actors("orchestrator")
    cmd = LoadData(op_id=subjects.new_op_id("data"), symbol="A" * 900_000)  # ~1 MB: the max payload
    await client.js.publish(subjects.command(cmd), encode(cmd))
    view = await wait_terminal(client, cmd.op_id, timeout=30)
    assert view.status == "rejected" and "symbol" in view.error and len(view.error) < 500


async def test_a_yaml_alias_bomb_is_refused_and_stalls_nobody(start_actors, client):
    await start_actors("orchestrator", "dummy")
    bomb = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},"
        f"*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)}]\n" for i in range(12))
    running = dummy(iterations=30, interval=0.05)
    await client.submit(running)
    await wait_for_event(client, running.op_id, lambda ev, v: v.status == "running")
    cmd = StartTraining(op_id=subjects.new_op_id("training"), strategy_yaml=bomb)
    await client.submit(cmd)
    view = await wait_terminal(client, cmd.op_id, timeout=30)
    assert view.status == "rejected" and "alias" in view.error.lower()
    assert (await wait_terminal(client, running.op_id, timeout=60)).status == "completed"


async def test_ops_list_is_in_creation_order_whatever_the_domain(start_actors, client):
    await start_actors("orchestrator", "dummy")
    made = []
    for cmd in (RunDummy(op_id=subjects.new_op_id("dummy"), iterations=1),
                StartTraining(op_id=subjects.new_op_id("training"), strategy_yaml="nope: [", data_mode="none"),
                LoadData(op_id=subjects.new_op_id("data"), symbol="AAPL", start=None, end=None, mode="local",
                         timeframe="7h")):
        await client.submit(cmd)
        await wait_terminal(client, cmd.op_id)
        made.append(cmd.op_id)
    listed = [v.op_id for v in await client.list_operations()]
    assert listed == made  # training- sorts before data- by id, but it was created after
    assert [v.op_id for v in await client.list_operations(limit=1)] == made[-1:]


async def test_ops_watch_rides_out_a_long_outage_and_refuses_an_unknown_id(start_actors, settings, client,
                                                                         nats_server):
    """`ops watch` gave up reconnecting after ~3 s of outage and then hung after the operation ended
    (nats-py tracebacks on stderr); on an unknown id it waited silently."""
    env = {**os.environ, "NATS_URL": settings.nats_url, "KTRDR_HOME": str(settings.home), "PYTHONUNBUFFERED": "1"}
    pipe = asyncio.subprocess.PIPE
    unknown = subjects.new_op_id("dummy")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "ktrdr", "ops", "watch", unknown, env=env,
                                                stdout=pipe, stderr=pipe)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2 and f"no operation {unknown} is stored" in err.decode()

    # The operation waits, queued, for a worker that only starts after the outage: it cannot end before
    # the watch is attached and the server gone (a 5 s dummy running meanwhile could: the watch's own
    # start-up takes longer than that under load, and it then had nothing to ride out).
    patient = make_settings(settings.home, settings.nats_url, orphan_timeout_s=3600.0)
    await start_actors("orchestrator", settings=patient)
    cmd = dummy(iterations=100, interval=0.05)
    await client.submit(cmd)
    await wait_for_event(client, cmd.op_id, lambda ev, v: v.status == "queued", timeout=60)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "ktrdr", "ops", "watch", cmd.op_id, env=env,
                                                stdout=pipe, stderr=pipe)
    assert proc.stdout is not None and proc.stderr is not None
    assert await asyncio.wait_for(proc.stdout.readline(), 60)  # attached: it printed the operation's line
    nats_server.stop()
    said = b""
    while b"connection to NATS lost" not in said:
        line = await asyncio.wait_for(proc.stderr.readline(), 60)
        assert line, "watch ended without saying the connection was lost"
        said += line
    await asyncio.sleep(6)  # the outage itself (the fault, not a wait for an outcome): twice what it survived before
    nats_server.restart()
    await start_actors("dummy")  # the operation runs, after the outage
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    said += err
    assert proc.returncode == 0, said.decode()
    assert "completed" in out.decode()
    assert b"reconnected to NATS" in said and b"Traceback" not in said
    async with Client(settings) as after:  # the fixture's client gave up its 5 reconnect attempts
        view = await wait_terminal(after, cmd.op_id, timeout=60)
    assert view.status == "completed" and view.current_step == 100


async def test_an_operation_past_its_event_budget_keeps_its_verdict_and_nobody_elses_events(settings):
    """OPS had no byte limit and no per-operation budget (fourteen long dummies filled a 10 GB store).
    Now OPS is capped in bytes and each operation's subject in events: a flooding operation loses its
    own oldest progress, never its lifecycle events nor another operation's history."""
    small = make_settings(settings.home, settings.nats_url, ops_max_events_per_subject=100, ops_max_bytes=64 << 20)
    async with Client(small) as c:
        await c.ensure_streams()
        cfg = (await c.js.stream_info("OPS")).config
        assert cfg.max_bytes == 64 << 20 and cfg.max_msgs_per_subject == 100
        actors = [build(role, small) for role in ("orchestrator", "dummy")]
        for a in actors:
            await a.start()
        try:
            other = dummy(iterations=5)
            await c.submit(other)
            await wait_terminal(c, other.op_id, timeout=60)
            kept = len(await c.events(other.op_id))
            flood = dummy(iterations=400, interval=0)
            await c.submit(flood)
            view = await wait_terminal(c, flood.op_id, timeout=120)
            assert view.status == "completed" and view.percentage == 100
            events = await c.events(flood.op_id)
            steps = [e.progress.current_step for e in events if isinstance(e, OperationProgress)]
            assert len(steps) == 100 and steps[-1] == 400 and steps[0] > 1  # the oldest went, the latest stayed
            assert any(isinstance(e, OperationStarted) for e in events)
            assert isinstance(events[-1], OperationCompleted)
            assert len(await c.events(other.op_id)) == kept
        finally:
            for a in reversed(actors):
                await asyncio.wait_for(a.stop(), 10)


def _actors_process(settings, *roles: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NATS_URL": settings.nats_url, "KTRDR_HOME": str(settings.home),
           "KTRDR_HEARTBEAT_S": "0.2", "KTRDR_WORKER_TIMEOUT": "1.5", "KTRDR_DRAIN_TIMEOUT": "0.5",
           "PYTHONUNBUFFERED": "1"}
    log = open(settings.home / f"actors-{'-'.join(roles)}-{os.urandom(2).hex()}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "actors", *roles], env=env, stdout=log, stderr=log)


async def _announced(client, procs: list[subprocess.Popen[bytes]], timeout: float = 120.0) -> None:
    """Until every one of these processes has announced its dummy actor (bounded)."""
    want = {p.pid for p in procs}
    deadline = asyncio.get_running_loop().time() + timeout
    while not want <= {hb.pid for hb in await client.live_actors() if hb.role == "dummy"}:
        assert asyncio.get_running_loop().time() < deadline, f"dummy processes {want} not announced"
        await asyncio.sleep(0.1)  # poll interval of the presence read


async def _holder(client, procs: list[subprocess.Popen[bytes]], op_id: str,
                  timeout: float = 60.0) -> subprocess.Popen[bytes]:
    """The process whose heartbeat says it is running op_id."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        pids = {hb.pid for hb in await client.live_actors() if op_id in hb.busy}
        for p in procs:
            if p.pid in pids:
                return p
        assert asyncio.get_running_loop().time() < deadline, f"no process here says it runs {op_id}"
        await asyncio.sleep(0.1)


async def test_sigterm_hands_work_back_and_kill_9_lets_a_replica_finish(start_actors, settings, client):
    """A rolling restart: a replica is up before its peer is stopped (with none alive, the orchestrator
    fails queued work once the worker timeout passed: the pool-empty verdict, tested elsewhere)."""
    await start_actors("orchestrator")
    procs = [_actors_process(settings, "dummy"), _actors_process(settings, "dummy")]
    try:
        await _announced(client, procs)
        drained = dummy(iterations=200, interval=0.05)
        await client.submit(drained)
        await wait_for_event(client, drained.op_id, lambda ev, v: v.current_step >= 3, timeout=60)
        first = await _holder(client, procs, drained.op_id)
        first.send_signal(signal.SIGTERM)  # drain: stop taking work, hand running work back
        assert await asyncio.to_thread(first.wait, 60) == 0
        procs.remove(first)
        view = await wait_terminal(client, drained.op_id, timeout=120)
        assert view.status == "completed" and view.attempts == 2
        procs.append(_actors_process(settings, "dummy"))
        await _announced(client, procs)
        killed = dummy(iterations=200, interval=0.05)
        await client.submit(killed)
        await wait_for_event(client, killed.op_id, lambda ev, v: v.current_step >= 3, timeout=60)
        second = await _holder(client, procs, killed.op_id)
        second.kill()  # kill -9: no drain, no verdict
        second.wait()
        procs.remove(second)
        view = await wait_terminal(client, killed.op_id, timeout=120)
        assert view.status == "completed" and view.attempts == 2
        starts = [e for e in await client.events(killed.op_id) if isinstance(e, OperationStarted)]
        assert len({e.worker for e in starts}) == 2
        for p in procs:
            p.terminate()
        for p in procs:
            assert await asyncio.to_thread(p.wait, 60) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


async def test_a_command_whose_creation_failed_midway_is_created_again_not_left_queued(start_actors, client):
    """Found by the cluster bench: during an election a publish inside the orchestrator's create()
    failed after it had started tracking the operation; the redelivered command was then ignored as
    a duplicate and the operation stayed queued for good, with an idle worker alive. A creation that
    fails now forgets the operation, so the redelivery creates and routes it (its publishes carry
    fixed ids: nothing is stored twice). The fault is injected where the election hit it, the route."""
    orch, _ = await start_actors("orchestrator", "dummy")
    route, calls = orch._route, []

    async def route_failing_once(cmd):  # type: ignore[no-untyped-def]
        calls.append(cmd.op_id)
        if len(calls) == 1:
            raise TimeoutError("nats: timeout (as a publish during a JetStream election)")
        await route(cmd)

    orch._route = route_failing_once  # type: ignore[method-assign]
    cmd = dummy(iterations=3, interval=0.01)
    await client.submit(cmd)
    view = await wait_terminal(client, cmd.op_id, timeout=60)
    assert view.status == "completed" and calls == [cmd.op_id, cmd.op_id]
    events = await client.events(cmd.op_id)
    assert sum(isinstance(e, OperationCreated) for e in events) == 1
    assert sum(isinstance(e, OperationStarted) for e in events) == 1


async def test_a_redelivered_command_routes_an_operation_left_queued_without_its_work_item(start_actors, client):
    """The other way a failed route could end: the created event's echo tracks the operation again
    after the failed creation was forgotten, so the redelivery looks like a duplicate. A duplicate
    command for an operation still queued routes it again (the item's fixed id dedupes). The state is
    made directly here: the first route is lost, then the command comes again."""
    orch, _ = await start_actors("orchestrator", "dummy")
    route, calls = orch._route, []

    async def route_lost_once(cmd):  # type: ignore[no-untyped-def]
        calls.append(cmd.op_id)
        if len(calls) > 1:
            await route(cmd)

    orch._route = route_lost_once  # type: ignore[method-assign]
    cmd = dummy(iterations=3, interval=0.01)
    await client.submit(cmd)
    await wait_for_event(client, cmd.op_id, lambda ev, v: v.status == "queued")
    await client.js.publish(subjects.command(cmd), encode(cmd), headers={"Nats-Msg-Id": "again"})
    view = await wait_terminal(client, cmd.op_id, timeout=60)
    assert view.status == "completed" and calls == [cmd.op_id, cmd.op_id]
    events = await client.events(cmd.op_id)
    assert sum(isinstance(e, OperationCreated) for e in events) == 1
    assert sum(isinstance(e, OperationStarted) for e in events) == 1


async def test_progress_after_a_failover_goes_on_from_the_new_worker_not_frozen(start_actors, client):
    """Issue 18, F7: the worker that takes over numbers its events from its own sequence (lower than
    the dead one's last); every progress event of the new attempt is what the view shows."""
    await start_actors("orchestrator")
    (first,) = await start_actors("dummy")
    cmd = dummy(iterations=400, interval=0.02)
    await client.submit(cmd)
    await wait_for_event(client, cmd.op_id, lambda ev, v: v.current_step >= 30, timeout=60)
    await start_actors("dummy")  # the replica that takes it over: its sequence starts near 1
    await first.kill()
    behind: list[tuple[int, int]] = []

    def attempt_two_goes_on(ev, view) -> bool:  # type: ignore[no-untyped-def]
        if not (isinstance(ev, OperationProgress) and view.attempts == 2 and ev.actor == view.worker):
            return False
        if view.current_step != ev.progress.current_step:
            behind.append((ev.progress.current_step, view.current_step))
        return ev.progress.current_step >= 20

    view = await wait_for_event(client, cmd.op_id, attempt_two_goes_on, timeout=90)
    assert behind == [], f"the view stayed behind the new attempt's progress: {behind[:5]}"
    assert view.worker != first.id and view.progress_attempt == 2
    final = await wait_terminal(client, cmd.op_id, timeout=90)
    assert final.status == "completed" and final.current_step == 400
