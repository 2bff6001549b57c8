from __future__ import annotations

from events.messages import RunDummy
from events.subjects import new_op_id


async def test_dummy_operation_from_command_to_completed(start_actors, client):
    await start_actors("orchestrator", "dummy")
    cmd = RunDummy(op_id=new_op_id("dummy"), iterations=5, interval_s=0.01)
    await client.submit(cmd)
    seen = []
    view = await client.watch(cmd.op_id, lambda ev, v: seen.append(type(ev).__name__), idle_timeout=10)
    assert view.status == "completed", view
    assert seen[0] == "OperationCreated" and seen[1] == "OperationStarted"
    assert seen.count("OperationProgress") == 5
    assert seen[-1] == "OperationCompleted"
    assert view.result["iterations_completed"] == 5
