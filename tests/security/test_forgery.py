"""The probes of issue 18's campaign, kept: each ordinary key publishes what its permissions let it
publish, on a running stack with auth on (a nats-server with every role's NKEY, the orchestrator and
the dummy in this process, each connected with its own role's key, the client with the CLI's), and
nothing it publishes means more than its subject proves.

- F1: a CLI key (`cmd.>`, `ops.*.*.cancel`) publishes an OperationCompleted body on a running
  operation's cancel subject: no reader says completed; the dummy completes by itself.
- F3: a job-manager key (`ops.data.>`) publishes on a data subject a completion naming a training
  operation: no reader (Client.view, ops list, the orchestrator's rebuild) files it under that op.
- F10: a CLI key publishes a cancel with reason code `shutdown`: the message is dropped (it does not
  decode: a wire cancel cannot carry a hand-back reason) and reported; the dummy goes on and completes
  with one start, no hand-back loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from events import roles, subjects
from events.codec import encode
from events.messages import OperationCompleted, OperationStarted, RunDummy, StartTraining
from ktrdr.client import Client
from tests.conftest import make_settings
from tests.helpers import run_ktrdr, wait_for_event, wait_terminal
from tests.security.conftest import Server, Stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
STRATEGY = Path(__file__).parents[2] / "strategies" / "mlp_rsi_aapl.yaml"


@pytest.fixture
async def stack(secure_server: tuple[Server, Path]) -> AsyncIterator[Stack]:
    server, home = secure_server
    # A queued operation must stay queued for the whole test (no `no_worker` verdict in the way).
    s = Stack(server, make_settings(home, server.url, orphan_timeout_s=600.0))
    yield s
    await s.close()


@pytest.fixture
async def cli(stack: Stack) -> AsyncIterator[Client]:
    """The CLI's client: it connects with the CLI role's key from the stack's home."""
    await stack.start(roles.ORCHESTRATOR)  # provisions the streams and buckets
    async with Client(stack.settings) as c:
        assert c.settings.role in ("", roles.CLI)
        yield c


async def running_dummy(stack: Stack, cli: Client, iterations: int, interval: float = 0.05) -> RunDummy:
    await stack.start(roles.DUMMY)
    cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=iterations, interval_s=interval)
    await cli.submit(cmd)
    await wait_for_event(cli, cmd.op_id, lambda ev, v: v.current_step >= 3, timeout=60)
    return cmd


# ---------------------------------------------------------------------------------------------- F1
async def test_f1_a_completion_on_the_cancel_subject_completes_nothing(stack, cli):
    cmd = await running_dummy(stack, cli, iterations=60)
    forged = OperationCompleted(op_id=cmd.op_id, actor="orchestrator-evil", result={"forged": True})
    ack = await cli.js.publish(subjects.cancel(cmd.op_id), encode(forged))  # the CLI key may: it is stored
    assert ack.stream == subjects.STREAM_CANCELS  # beside the operation's history, never in it
    view = await cli.view(cmd.op_id)
    assert view.status == "running" and view.result is None and view.dropped == 0
    # `ops watch` as a user runs it: it follows the real run to its real end
    watched = await asyncio.to_thread(run_ktrdr, stack.env(), "ops", "watch", cmd.op_id, "--json", timeout=120)
    assert watched.returncode == 0, watched.stderr
    final_json = json.loads(watched.stdout.strip().splitlines()[-1])
    assert final_json["status"] == "completed" and final_json["result"]["iterations_completed"] == 60
    assert "forged" not in final_json["result"]
    final = await wait_terminal(cli, cmd.op_id, timeout=60)
    assert final.result is not None and final.result["iterations_completed"] == 60
    # every actor dropped it as a malformed cancel, and the orchestrator said so on the operation
    assert any("malformed cancel request ignored" in e and "CancelOperation" in e for e in final.errors)


# ---------------------------------------------------------------------------------------------- F3
async def test_f3_a_data_key_cannot_finish_a_training_by_naming_it(stack, cli):
    training = StartTraining(op_id=subjects.new_op_id("training"), strategy_path=str(STRATEGY),
                             strategy_yaml=STRATEGY.read_text(), epochs=1, data_mode="none")
    await cli.submit(training)  # no trainer runs: it stays queued, as a running child would stay running
    await wait_for_event(cli, training.op_id, lambda ev, v: v.status == "queued", timeout=60)
    nc, errors = await stack.key(roles.JOB_MANAGER)
    js = nc.jetstream()
    forged = OperationCompleted(op_id=training.op_id, actor="orchestrator-evil", result={"model_path": "MODELS/evil"})
    other = subjects.new_op_id("data")
    await js.publish(subjects.ops(other, "completed"), encode(forged))  # another op's subject
    await js.publish(f"ops.data.{training.op_id}.completed", encode(forged))  # its id, on a data subject
    assert errors.permission_errors() == []  # both are the job-manager's to publish: stored

    async def not_forged(view: Any) -> None:
        assert view.status == "queued" and view.result is None, view

    await not_forged(await cli.view(training.op_id))
    listed = {v.op_id: v for v in await cli.list_operations()}
    await not_forged(listed[training.op_id])
    # (how many forgeries this list itself read and dropped depends on the index's watermark: the
    # orchestrator's indexer folds the log, forgeries dropped there, and the list reads only what lies
    # past the watermark; either way neither forged operation is listed)
    assert other not in listed and set(listed) == {training.op_id}
    # the orchestrator that restarts rebuilds it from OPS, forgeries included: still queued, still tracked
    orch = next(a for a in stack.actors if a.role == roles.ORCHESTRATOR)
    await orch.stop()
    stack.actors.remove(orch)
    (again,) = await stack.start(roles.ORCHESTRATOR)
    assert training.op_id in again.live  # type: ignore[attr-defined]
    await not_forged(again.live[training.op_id].view)  # type: ignore[attr-defined]
    assert other not in again.live and other not in again.known  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------- F10
async def test_f10_a_shutdown_cancel_from_a_cli_key_is_dropped_not_a_hand_back_loop(stack, cli):
    """Dropped, not obeyed as a user's cancel: a wire cancel whose reason code is a worker's own does
    not decode, so every actor reports it as malformed and the dummy runs to its end, started once."""
    cmd = await running_dummy(stack, cli, iterations=40)
    dummy_actor = next(a for a in stack.actors if a.role == roles.DUMMY)
    body = json.dumps({"type": "CancelOperation", "op_id": cmd.op_id, "reason": "shutdown",
                       "reason_code": "shutdown", "requested_by": "cli"}).encode()
    await cli.js.publish(subjects.cancel(cmd.op_id), body)
    final = await wait_terminal(cli, cmd.op_id, timeout=60)  # a hand-back loop never gets here
    assert final.status == "completed" and final.result is not None and final.result["iterations_completed"] == 40
    events = await cli.events(cmd.op_id)
    assert sum(isinstance(e, OperationStarted) for e in events) == 1
    # stored in CANCELS, not in the operation's history: nothing there to drop
    assert events.dropped == 0 and final.dropped == 0 and not final.cancel_requested
    assert any("malformed cancel request ignored" in e and "reason_code" in e for e in final.errors)
    assert dummy_actor.dropped_cancels == 1
    assert dummy_actor.js is not None
    info = await dummy_actor.js.consumer_info(subjects.STREAM_WORK, subjects.work_consumer("dummy"))
    assert info.num_redelivered == 0
