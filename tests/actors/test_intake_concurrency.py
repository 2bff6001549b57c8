"""The orchestrator handles a fetched batch of commands concurrently, one operation's commands in
order (actors/_pull.py with a key, actors/_orch_leader.py): duplicates of one op id in a batch create
one operation, a cancel right after each create is honoured on every operation, and a kill -9 of the
orchestrator process mid-batch loses no stored command or acknowledged cancel and creates nothing
twice (the next orchestrator handles what the dead one had not acked)."""

from __future__ import annotations

import asyncio
import os
import secrets

import pytest

from events import subjects
from events.codec import encode
from events.messages import Command, OperationCreated, OrchestratorCancelled, RunDummy
from ktrdr.client import Client
from ktrdr.transport import publish
from tests.actors.test_ha import Orchestrators
from tests.actors.test_workflows import training
from tests.conftest import make_settings
from tests.helpers import stop_process, wait_for_event, wait_terminal


async def _submit_raw(client: Client, cmd: Command) -> None:
    """A command stored again under another message id: what a redelivery, or a client that made its
    own id, hands the orchestrator (the stream's own dedupe does not catch it)."""
    await publish(client.js, subjects.command(cmd), encode(cmd), f"again-{secrets.token_hex(8)}")


async def _until_exist(client: Client, op_ids: list[str], timeout: float) -> None:
    """Poll the log until every op id is recorded (created or rejected)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    missing = list(op_ids)
    while missing:
        missing = [o for o in missing if not await client.exists(o)]
        if missing and loop.time() > deadline:
            raise TimeoutError(f"{len(missing)} of {len(op_ids)} operations never recorded, e.g. {missing[0]}")
        if missing:
            await asyncio.sleep(0.05)


@pytest.fixture
def settings(tmp_path, nats_server):  # batched intake (KTRDR_ORCH_CMD_BATCH), for in-process and child orchestrators
    home = tmp_path / "home"
    home.mkdir()
    os.environ["KTRDR_ORCH_CMD_BATCH"] = "256"
    yield make_settings(home, nats_server.url, orch_cmd_batch=256)
    os.environ.pop("KTRDR_ORCH_CMD_BATCH", None)


def _created(events: list[object]) -> int:
    return sum(isinstance(e, OperationCreated) for e in events)


async def test_the_same_op_id_submitted_many_times_in_one_batch_creates_one_operation_each(
        start_actors, client):
    await start_actors("orchestrator")
    cmds = [RunDummy(op_id=subjects.new_op_id("dummy"), iterations=1, interval_s=0.01) for _ in range(40)]
    # Every op id four times, interleaved, stored before the orchestrator's next fetch can split them.
    await asyncio.gather(*(_submit_raw(client, c) for _ in range(4) for c in cmds))
    await _until_exist(client, [c.op_id for c in cmds], timeout=30)
    await start_actors("dummy")
    for c in cmds:
        view = await wait_terminal(client, c.op_id, timeout=30)
        assert view.status == "completed", (c.op_id, view.status, view.errors)
        assert _created(await client.events(c.op_id)) == 1, c.op_id


async def test_a_training_submitted_many_times_in_one_batch_creates_one_workflow(start_actors, client):
    """A training's validation and planning leave the event loop (a thread) before the operation is
    tracked: only the per-operation order keeps its repeats from each creating it."""
    await start_actors("orchestrator")  # no worker: the workflows stay at their first step
    cmds = [training() for _ in range(6)]
    await asyncio.gather(*(_submit_raw(client, c) for _ in range(4) for c in cmds))
    await _until_exist(client, [c.op_id for c in cmds], timeout=30)
    for c in cmds:
        view = await wait_for_event(client, c.op_id, lambda ev, v: len(v.children) == 2, timeout=30)
        assert view.status != "failed", view.errors
        assert _created(await client.events(c.op_id)) == 1, c.op_id
        assert _created(await client.events(view.children[0])) == 1, view.children[0]


async def test_a_cancel_right_after_each_create_in_a_concurrent_burst_cancels_every_operation(
        start_actors, client):
    await start_actors("orchestrator")  # no worker: each stays queued until its cancel
    cmds = [RunDummy(op_id=subjects.new_op_id("dummy"), iterations=5, interval_s=0.05) for _ in range(60)]

    async def submit_then_cancel(c: RunDummy) -> None:
        await client.submit(c)
        await client.cancel(c.op_id, reason="changed my mind")

    await asyncio.gather(*(submit_then_cancel(c) for c in cmds))
    for c in cmds:
        view = await wait_terminal(client, c.op_id, timeout=30)
        assert (view.status, view.reason_code) == ("cancelled", "user"), (c.op_id, view.status, view.errors)
        events = await client.events(c.op_id)
        kinds = [type(e) for e in events]
        assert kinds[0] is OperationCreated and _created(events) == 1, kinds
        assert kinds[-1] is OrchestratorCancelled, kinds  # applied after the create, the last event


@pytest.mark.slow
async def test_kill_9_of_the_orchestrator_mid_batch_loses_no_command_and_creates_nothing_twice(
        settings, client):
    orch = Orchestrators(settings, client)
    try:
        first = orch.start()
        await orch.wait_state(first, "active")
        cmds = [RunDummy(op_id=subjects.new_op_id("dummy"), iterations=2, interval_s=0.01) for _ in range(400)]
        cancelled = cmds[::10]

        async def submit(c: RunDummy) -> None:
            await client.submit(c)
            if c in cancelled:
                await client.cancel(c.op_id, reason="changed my mind")

        submitting = asyncio.gather(*(submit(c) for c in cmds))
        await _until_exist(client, [cmds[0].op_id], timeout=30)
        first.kill()  # SIGKILL while the burst is being handled
        await submitting  # every command and cancel stored (acknowledged to the client)
        first.wait()
        assert not all([await client.exists(c.op_id) for c in cmds]), "the kill came after the whole burst"
        second = orch.start()
        await orch.wait_state(second, "active")
        await _until_exist(client, [c.op_id for c in cmds], timeout=60)
        for c in cancelled:
            view = await wait_terminal(client, c.op_id, timeout=30)
            assert (view.status, view.reason_code) == ("cancelled", "user"), (c.op_id, view.status, view.errors)
        for c in cmds:
            assert _created(await client.events(c.op_id)) == 1, c.op_id
    finally:
        for p in orch.procs:
            stop_process(p)
