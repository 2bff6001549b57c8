"""Priorities (issue 22, item 4) against a real nats-server: the only worker, busy, finds low, normal
and high items queued and runs them high, normal, low, first come first served within one; a low item
is not starved by a stream of high ones (aging, with a small bound); a sweep's children and a
schedule's firings are low unless told otherwise; `--priority urgent` is one line, exit 2, and
creates nothing; work queued in the layout from before priorities (an old client's command, the old
consumer) still runs."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import msgspec
from nats.js import api as js_api

from actors.registry import build
from events import subjects
from events.messages import OperationCreated, OperationStarted, RunDummy, RunSweep, SweepParam
from ktrdr.transport import schedules as store
from tests.actors.test_schedules import dummy_schedule, started, wait_records
from tests.cli.test_cli import ktrdr
from tests.conftest import make_settings, utc
from tests.helpers import wait_for_event, wait_terminal

STRATEGY = Path(__file__).parents[2] / "strategies" / "mlp_rsi_aapl.yaml"


def dummy(priority: str | None = None, iterations: int = 1, interval: float = 0.01) -> RunDummy:
    return RunDummy(op_id=subjects.new_op_id("dummy"), iterations=iterations, interval_s=interval,
                    priority=priority)  # type: ignore[arg-type]


async def one_slot_worker(settings):
    """The only dummy worker, taking one operation at a time."""
    worker = build("dummy", settings)
    worker.max_concurrency = 1  # type: ignore[misc]
    await worker.start()
    return worker


async def start_order(client, op_ids: list[str]) -> list[str]:
    """The operations in the order they were started (the OPS sequence of their `started` events)."""
    seq: dict[str, int] = {}
    for op in op_ids:
        msg = await client.js.get_last_msg(subjects.STREAM_OPS, subjects.ops(op, OperationStarted.name))
        seq[op] = msg.seq
    return sorted(op_ids, key=seq.__getitem__)


async def queue_behind_a_blocker(client, settings, items: list[RunDummy]):
    """A one-slot worker running a long operation while `items` are queued, in order; then the blocker
    is cancelled and the worker takes the queued items."""
    worker = await one_slot_worker(settings)
    blocker = dummy(iterations=10_000, interval=0.05)
    await client.submit(blocker)
    await wait_for_event(client, blocker.op_id, lambda ev, v: v.status == "running")
    for cmd in items:  # one after another: their order in each priority's queue is this order
        await client.submit(cmd)
        await wait_for_event(client, cmd.op_id, lambda ev, v: v.status == "queued")
    await client.cancel(blocker.op_id)
    return worker


async def test_the_busy_worker_takes_high_then_normal_then_low_first_come_first_served(start_actors, client,
                                                                                       settings):
    await start_actors("orchestrator")
    items = [dummy("low"), dummy("normal"), dummy("high"), dummy("low"), dummy(None), dummy("high")]
    worker = await queue_behind_a_blocker(client, settings, items)
    try:
        for cmd in items:
            assert (await wait_terminal(client, cmd.op_id)).status == "completed"
        ids = [c.op_id for c in items]
        low1, normal1, high1, low2, normal2, high2 = ids
        assert await start_order(client, ids) == [high1, high2, normal1, normal2, low1, low2]
        # what `ops show` prints: the priority the orchestrator fixed (None: normal)
        assert [(await client.view(op)).priority for op in ids] == ["low", "normal", "high", "low", "normal", "high"]
    finally:
        await worker.stop()


async def test_a_low_item_is_not_starved_by_a_stream_of_high_ones(start_actors, client, settings, tmp_path):
    """With PRIORITY_AGING 0.3 s, a low item waits for at most two bounds' worth of high items (it rises
    a level each), not for all of them: here 40 high items of about 0.1 s each are queued before it
    may start, and it starts before the last of them."""
    await start_actors("orchestrator")
    aging = make_settings(settings.home, settings.nats_url, priority_aging_s=0.3)
    low = dummy("low")
    highs = [dummy("high", iterations=2, interval=0.05) for _ in range(40)]
    worker = await queue_behind_a_blocker(client, aging, [low, *highs])
    try:
        for cmd in [low, *highs]:
            assert (await wait_terminal(client, cmd.op_id, timeout=60)).status == "completed"
        order = await start_order(client, [low.op_id, *(h.op_id for h in highs)])
        assert order.index(low.op_id) < len(order) - 1, "the low item ran only after every high one"
        assert order[0] == highs[0].op_id  # high first while the low one had not waited a bound yet
    finally:
        await worker.stop()


async def test_without_aging_the_low_item_runs_after_every_high_one(start_actors, client, settings):
    """The same queue with the default bound (60 s, far longer than the high items take): the low item
    is last, so the test above sees aging, not chance."""
    await start_actors("orchestrator")
    low = dummy("low")
    highs = [dummy("high", iterations=2, interval=0.05) for _ in range(10)]
    worker = await queue_behind_a_blocker(client, settings, [low, *highs])
    try:
        for cmd in [low, *highs]:
            assert (await wait_terminal(client, cmd.op_id, timeout=60)).status == "completed"
        order = await start_order(client, [low.op_id, *(h.op_id for h in highs)])
        assert order[-1] == low.op_id
    finally:
        await worker.stop()


async def work_subjects(client) -> dict[str, int]:
    info = await client.js.stream_info(subjects.STREAM_WORK, subjects_filter="work.>")
    return dict(info.state.subjects or {})


async def work_held(client, subject: str, count: int, timeout: float = 10.0) -> dict[str, int]:
    """WORK's messages per subject, once `subject` holds `count` (routing follows the created event)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (held := await work_subjects(client)).get(subject, 0) < count:
        if loop.time() > deadline:
            raise TimeoutError(f"{subject}: {held}")
        await asyncio.sleep(0.05)
    return held


async def test_a_sweeps_trainings_are_low_unless_the_sweep_says_otherwise(start_actors, client):
    await start_actors("orchestrator")  # no trainer: the children stay queued where the workers would look

    def sweep(priority: str | None) -> RunSweep:
        return RunSweep(op_id=subjects.new_op_id("training"), strategy_path=str(STRATEGY),
                        strategy_yaml=STRATEGY.read_text(), epochs=1, data_mode="none", start=utc(2024, 1, 1),
                        end=utc(2024, 5, 1), max_parallel=2, priority=priority,  # type: ignore[arg-type]
                        params=[SweepParam(path="model.training.learning_rate", values=[0.001, 0.01])])

    for given, expected in ((None, "low"), ("high", "high")):
        cmd = sweep(given)
        await client.submit(cmd)
        parent = await wait_for_event(client, cmd.op_id, lambda ev, v: len(v.children) == 2)
        assert parent.priority == expected
        for child in parent.children:
            view = await wait_for_event(client, child, lambda ev, v: v.status == "queued")
            assert view.priority == expected and view.parent_op_id == cmd.op_id
        held = await work_held(client, subjects.work("training", "any", expected), 2)
        assert held.get(subjects.work("training", "any", "normal"), 0) == 0, held


async def test_a_schedules_firings_are_low_unless_its_command_says_otherwise(start_actors, client):
    await start_actors("orchestrator", "dummy")
    await store.put_definition(client.js, dummy_schedule("lowtick"))
    high = dummy_schedule("hightick")
    high = msgspec.structs.replace(high, command=msgspec.structs.replace(high.command, priority="high"))
    await store.put_definition(client.js, high)
    for name, expected in (("lowtick", "low"), ("hightick", "high")):
        recs = await wait_records(client, name, lambda rs: len(started(rs)) >= 1)
        op_id = started(recs)[0].op_id
        assert op_id is not None
        view = await wait_terminal(client, op_id)
        assert view.status == "completed" and view.priority == expected
        created = [e for e in await client.events(op_id) if isinstance(e, OperationCreated)]
        assert created[0].command.priority == expected


async def test_an_unknown_priority_is_one_line_exit_2_and_creates_nothing(start_actors, client, settings):
    await start_actors("orchestrator", "dummy")
    before = (await client.js.stream_info(subjects.STREAM_CMD)).state.last_seq
    rc, out, err = await ktrdr(settings, "dummy", "--iterations", "1", "--priority", "urgent")
    assert rc == 2 and out == ""
    assert err.strip().splitlines() == ["error: --priority 'urgent': expected high, normal or low"]
    assert (await client.js.stream_info(subjects.STREAM_CMD)).state.last_seq == before
    rc, out, err = await ktrdr(settings, "schedule", "add", "nightly", "--every", "1h", "--", "dummy",
                               "--priority", "urgent")
    assert rc == 2 and "--priority 'urgent'" in err
    assert await store.definitions(client.js) == []


async def test_work_queued_in_the_layout_from_before_priorities_still_runs(start_actors, client, settings):
    """A store made before priorities: the old worker's consumer (`work-dummy-any` on `work.dummy.any`)
    and an old client's command (no `priority` field) queued while no worker runs. The new worker takes
    it from the same consumer: normal work kept the old subject and consumer name."""
    await start_actors("orchestrator")
    name = "work-dummy-any"
    await client.js.add_consumer(subjects.STREAM_WORK, js_api.ConsumerConfig(
        name=name, durable_name=name, filter_subject="work.dummy.any", ack_policy=js_api.AckPolicy.EXPLICIT,
        ack_wait=settings.worker_timeout_s, max_deliver=settings.max_deliver, max_ack_pending=1000))
    op_id = subjects.new_op_id("dummy")
    old = {"type": "RunDummy", "v": 2, "op_id": op_id, "iterations": 1, "interval_s": 0.01}
    await client.js.publish(subjects.command(RunDummy), msgspec.json.encode(old),
                            headers={"Nats-Msg-Id": subjects.command_msg_id(op_id)})
    await wait_for_event(client, op_id, lambda ev, v: v.status == "queued")
    assert set(await work_held(client, "work.dummy.any", 1)) == {"work.dummy.any"}
    worker = build("dummy", settings)
    await worker.start()
    try:
        view = await wait_terminal(client, op_id)
        assert view.status == "completed" and view.priority == "normal"
    finally:
        with contextlib.suppress(Exception):
            await worker.stop()
