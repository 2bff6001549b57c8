"""Workflows in the orchestrator: a training is one operation whose children load the data and then
train; any client gets it from the same command; cancels, failures and deadlines travel down and up
the tree; an orchestrator that dies mid-workflow picks it up from the log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from events import subjects
from events.messages import OperationCreated, RunDummy, StartTraining
from ktrdr.ops import OperationView
from tests.cli.test_cli import ktrdr
from tests.conftest import utc
from tests.helpers import wait_for_event, wait_terminal

pytestmark = pytest.mark.slow
STRATEGY = Path(__file__).parents[2] / "strategies" / "mlp_rsi_aapl.yaml"


def training(**kw: object) -> StartTraining:
    args: dict[str, object] = {"op_id": subjects.new_op_id("training"), "strategy_path": str(STRATEGY),
                               "strategy_yaml": STRATEGY.read_text(), "epochs": 2,
                               "start": utc(2023, 1, 2), "end": utc(2023, 10, 2)}
    args.update(kw)
    return StartTraining(**args)  # type: ignore[arg-type]


async def children_of(client, parent: str) -> list[OperationView]:
    view = await client.view(parent)
    return [await client.view(k) for k in view.children]


async def test_no_wait_train_on_a_fresh_home_prints_one_json_object_and_completes_with_children(
        data_stack, data_settings, start_actors, client):
    await start_actors("trainer", settings=data_settings)
    rc, out, err = await ktrdr(data_settings, "train", str(STRATEGY), "--epochs", "2", "--start", "2023-01-02",
                               "--end", "2023-10-02", "--no-wait", "--json")
    assert rc == 0, err
    obj = json.loads(out)  # exactly one JSON object: nothing else on stdout
    parent = obj["op_id"]
    view = await wait_terminal(client, parent, timeout=180)
    assert view.status == "completed", view.error
    kids = await children_of(client, parent)
    assert [k.domain for k in kids] == ["data", "training"]
    assert all(k.status == "completed" and k.parent_op_id == parent for k in kids)
    assert view.result["training_metrics"]["epochs_completed"] == 2
    assert kids[0].result["bars_total"] > 1000  # the data child loaded what the training then used
    rc, out, err = await ktrdr(data_settings, "ops", "show", parent)  # the tree, each child with its state
    tree = [line for line in out.splitlines() if line.startswith(("  ├─ ", "  └─ "))]
    assert rc == 0 and [line.split()[1:3] for line in tree] == [[k.op_id, "completed"] for k in kids], out
    assert tree[-1].startswith("  └─ "), out


async def test_a_raw_client_gets_the_same_workflow(data_stack, data_settings, start_actors, client):
    """Any NATS client publishing cmd.training.start gets the data loaded first (not only the CLI)."""
    await start_actors("trainer", settings=data_settings)
    cmd = training()
    await client.js.publish(subjects.command(cmd), __import__("events").encode(cmd))
    view = await wait_terminal(client, cmd.op_id, timeout=180)
    assert view.status == "completed", view.error
    assert [k.status for k in await children_of(client, cmd.op_id)] == ["completed", "completed"]


async def test_cancelling_the_parent_cancels_running_and_queued_children(data_stack, data_settings, client, gateway):
    gateway.latency_s = 60.0  # every IB answer takes a minute: the data children stay in flight
    cmd = training(symbols=["AAPL", "MSFT"], timeframes=["1h"])
    await client.submit(cmd)
    await wait_for_event(client, cmd.op_id, lambda ev, v: len(v.children) == 3)
    kids = (await client.view(cmd.op_id)).children
    await wait_for_event(client, kids[0], lambda ev, v: v.status == "running", timeout=30)
    await client.cancel(cmd.op_id, reason="test")
    view = await wait_terminal(client, cmd.op_id, timeout=30)
    assert view.status == "cancelled" and view.reason == "test"
    states = {k.op_id: k for k in await children_of(client, cmd.op_id)}
    assert [states[k].status for k in kids[:2]] == ["cancelled", "cancelled"]
    assert all(states[k].reason_code == "parent" for k in kids[:2])
    assert kids[2] not in states or states[kids[2]].status in ("unknown", "cancelled")  # never trained


async def test_a_failed_child_fails_the_parent_with_the_childs_reason(data_stack, data_settings, client):
    cmd = training(symbols=["ZZZZ"])  # a well-formed symbol IB does not know
    await client.submit(cmd)
    view = await wait_terminal(client, cmd.op_id, timeout=60)
    assert view.status == "failed"
    assert "ZZZZ" in view.error and "child data-" in view.error


async def test_an_orchestrator_killed_mid_workflow_picks_it_up_from_the_log(
        start_actors, data_settings, client, gateway):
    first, = await start_actors("orchestrator", settings=data_settings)
    await start_actors("job-manager", "ib", "trainer", settings=data_settings)
    gateway.latency_s = 0.5
    cmd = training()
    await client.submit(cmd)
    await wait_for_event(client, cmd.op_id, lambda ev, v: len(v.children) == 2)
    data_child, train_child = (await client.view(cmd.op_id)).children
    await wait_for_event(client, data_child, lambda ev, v: v.status == "running", timeout=30)
    await first.kill()  # dies while the data child runs: nobody is there when it finishes
    done = await wait_terminal(client, data_child, timeout=120)
    assert done.status == "completed"
    assert not (await client.view(train_child)).created_at  # the training was not started by anyone
    await start_actors("orchestrator", settings=data_settings)
    view = await wait_terminal(client, cmd.op_id, timeout=180)
    assert view.status == "completed", view.error
    created = [e for e in await client.events(train_child) if isinstance(e, OperationCreated)]
    assert len(created) == 1  # planned once, by the orchestrator that came back


async def test_a_deadline_cancels_with_reason_deadline_and_the_cli_exits_1(start_actors, settings, client):
    await start_actors("orchestrator", "dummy")
    rc, out, err = await ktrdr(settings, "dummy", "--iterations", "100", "--interval", "0.5", "--timeout", "2")
    assert rc == 1, (out, err)
    assert "cancelled: deadline of 2 s passed at iteration" in out
    # An older client sends an absolute deadline: the duration it meant (deadline - ts, both on its
    # clock, here a day behind) runs on the orchestrator's clock (issue 18, F13).
    from datetime import UTC, datetime, timedelta

    behind = datetime.now(UTC) - timedelta(days=1)
    cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=100, interval_s=0.5, ts=behind,
                   deadline=behind + timedelta(seconds=2))
    await client.submit(cmd)
    view = await wait_terminal(client, cmd.op_id, timeout=30)
    assert view.status == "cancelled" and view.reason_code == "deadline" and view.reason == "deadline of 2 s passed"
    late = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=1, ts=behind, deadline=behind)
    await client.submit(late)
    view = await wait_terminal(client, late.op_id, timeout=30)
    assert view.status == "rejected" and "deadline: not after the command's ts" in (view.error or "")


async def test_a_workflow_deadline_cancels_its_children(data_stack, data_settings, client, gateway):
    from datetime import UTC, datetime, timedelta

    gateway.latency_s = 60.0
    cmd = training(deadline=datetime.now(UTC) + timedelta(seconds=3))
    await client.submit(cmd)
    view = await wait_terminal(client, cmd.op_id, timeout=60)
    assert view.status == "cancelled" and view.reason_code == "deadline"
    kids = await children_of(client, cmd.op_id)
    assert kids[0].status == "cancelled" and kids[0].reason_code == "parent"


async def test_a_client_cannot_create_children(start_actors, client):
    await start_actors("orchestrator", "dummy")
    parent = subjects.new_op_id("training")
    cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=1, parent_op_id=parent)
    await client.submit(cmd)
    view = await wait_terminal(client, cmd.op_id)
    assert view.status == "rejected" and "parent_op_id" in view.error
