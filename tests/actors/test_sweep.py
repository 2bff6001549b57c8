"""Sweeps (`ktrdr sweep`, cmd.training.sweep): one parent, the data children once for all variants, one
training child per variant carrying the variant's strategy text, at most K of them running at once;
a failed or cancelled variant is a row of the leaderboard and the sweep goes on; cancelling the sweep
cancels its running children and never starts the queued ones; an orchestrator killed mid-sweep is
replaced and the sweep goes on from the log. Against real processes: nats-server, orchestrator,
trainers (their training child processes), the job manager and a backtester, on bars stored in BARS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from events import subjects
from events.messages import OperationCreated, RunSweep, SweepParam
from ktrdr.ops import OperationView
from ktrdr.training.strategy import parse_strategy
from tests.cli.test_cli import ktrdr
from tests.conftest import make_settings, utc
from tests.helpers import wait_for_event, wait_terminal

pytestmark = pytest.mark.slow
STRATEGY = Path(__file__).parents[2] / "strategies" / "mlp_rsi_aapl.yaml"  # AAPL, [1h]
START, END = "2024-01-01", "2024-05-01"


async def store_bars(client) -> None:
    from ktrdr.data.bars_store import BarStore
    from tests.training.conftest import make_bars

    await BarStore(client.js).merge("AAPL", "1h", make_bars(3000, seed=1), "sim")  # 2024-01-01 on, 1h


def sweep(*params: tuple[str, list[object]], **kw: object) -> RunSweep:
    args: dict[str, object] = {"op_id": subjects.new_op_id("training"), "strategy_path": str(STRATEGY),
                               "strategy_yaml": STRATEGY.read_text(), "epochs": 1, "data_mode": "none",
                               "start": utc(2024, 1, 1), "end": utc(2024, 5, 1),
                               "params": [SweepParam(path=p, values=v) for p, v in params]}
    args.update(kw)
    return RunSweep(**args)  # type: ignore[arg-type]


async def views(client, op_ids: list[str]) -> list[OperationView]:
    return [await client.view(k) for k in op_ids]


async def most_at_once(client, op_ids: list[str]) -> int:
    """The most of these operations that were live at once, from their events: each is live from its
    OperationCreated to its terminal event."""
    marks: list[tuple[object, int]] = []
    for op in op_ids:
        evs = await client.events(op)
        created = [e.ts for e in evs if isinstance(e, OperationCreated)]
        ended = [e.ts for e in evs if type(e).terminal]
        if created:
            marks += [(created[0], 1), (ended[0], -1)] if ended else [(created[0], 1)]
    live = peak = 0
    for _, step in sorted(marks, key=lambda m: (m[0], m[1])):  # an end before a start at the same instant
        live += step
        peak = max(peak, live)
    return peak


async def test_a_sweep_from_the_cli_loads_once_trains_each_variant_and_ranks_them(start_actors, settings, client):
    await store_bars(client)
    await start_actors("orchestrator", "job-manager", "trainer", "trainer")
    rc, out, err = await ktrdr(
        settings, "sweep", str(STRATEGY), "--param", "model.training.learning_rate=[0.01, 0.001]",
        "--param", "model.architecture.hidden_layers=[[8], [16, 8]]", "--epochs", "1", "--data", "local",
        "--max-parallel", "2", "--start", START, "--end", END, "--json", timeout=240)
    assert rc == 0, (out, err)
    final = json.loads(out.strip().splitlines()[-1])
    parent = await client.view(final["op_id"])
    assert parent.status == "completed" and parent.op_type == "training_sweep", parent.error
    kids = await views(client, parent.children)
    assert [k.domain for k in kids] == ["data", "training", "training", "training", "training"]  # data once
    assert all(k.status == "completed" and k.parent_op_id == parent.op_id for k in kids)
    board = parent.result["leaderboard"]
    assert parent.result["variants"] == 4 and parent.result["completed"] == 4
    # each variant's training child carries the variant's strategy, and the row names its values
    for row in board:
        child = next(k for k in kids if k.op_id == row["op_id"])
        s = parse_strategy(child.command["strategy_yaml"])
        assert (s.model.training.learning_rate, s.model.architecture.hidden_layers) == (
            row["params"]["model.training.learning_rate"], row["params"]["model.architecture.hidden_layers"])
        assert row["val_loss"] == child.result["validation_metrics"]["val_loss"]
        assert row["model"] == child.result["artifacts"]["name"]
    assert sorted(row["variant"] for row in board) == [0, 1, 2, 3]
    assert [row["params"] for row in sorted(board, key=lambda r: r["variant"])] == [
        {"model.training.learning_rate": lr, "model.architecture.hidden_layers": hl}
        for lr in (0.01, 0.001) for hl in ([8], [16, 8])]
    losses = [row["val_loss"] for row in board]
    assert losses == sorted(losses)  # ranked by val_loss, lowest first
    assert len({row["model"] for row in board}) == 4  # four versions of the model
    assert await most_at_once(client, [k.op_id for k in kids if k.domain == "training"]) <= 2
    rc, shown, err = await ktrdr(settings, "ops", "show", parent.op_id)
    assert rc == 0, err
    table = shown[shown.index("leaderboard ("):].splitlines()[2:6]
    assert [int(line.split()[1]) for line in table] == [row["variant"] for row in board], shown
    assert [line.split()[3] for line in table] == [f"{row['val_loss']:.4f}" for row in board], shown


async def test_at_most_k_trainings_run_at_once_and_a_cancelled_variant_does_not_end_the_sweep(
        start_actors, settings, client):
    await store_bars(client)
    await start_actors("orchestrator", "trainer", "trainer")
    # Variant 0 trains long enough to be cancelled while it runs; the two after it train 2 epochs each
    # (it was 200 each, ~2 minutes of training under a load of 10 on 2 cores: past the test's timeout).
    cmd = sweep(("model.training.epochs", [500, 2, 2]), epochs=None, max_parallel=1)
    await client.submit(cmd)
    first = subjects.child_op_id(cmd.op_id, "training", "v0")
    await wait_for_event(client, first, lambda ev, v: v.status == "running", timeout=60)
    await client.cancel(first, reason="not this one")  # a user stops one variant: the sweep goes on
    view = await wait_terminal(client, cmd.op_id, timeout=300)
    assert view.status == "completed", view.error
    rows = {r["variant"]: r for r in view.result["leaderboard"]}
    assert rows[0]["status"] == "cancelled" and rows[0]["val_loss"] is None
    assert rows[1]["status"] == rows[2]["status"] == "completed"
    assert [r["variant"] for r in view.result["leaderboard"]][-1] == 0  # an unfinished variant ranks last
    assert view.result["completed"] == 2 and view.result["failed"] == 1
    # two trainers were free, K = 1: never two trainings at once
    assert await most_at_once(client, view.children) == 1


async def test_a_variant_that_fails_in_training_is_a_row_and_the_sweep_completes(start_actors, settings, client):
    await store_bars(client)
    await start_actors("orchestrator", "trainer", "trainer")
    # labels 5,000 bars ahead: a valid strategy, but no bar of this range is left to train on
    cmd = sweep(("training.labels.label_lookahead", [20, 5000]), max_parallel=2)
    await client.submit(cmd)
    view = await wait_terminal(client, cmd.op_id, timeout=240)
    assert view.status == "completed", view.error
    rows = {r["variant"]: r for r in view.result["leaderboard"]}
    assert rows[0]["status"] == "completed" and rows[1]["status"] == "failed", rows
    assert rows[1]["error"] and view.result["best"]["variant"] == 0
    failed = await client.view(rows[1]["op_id"])
    assert failed.status == "failed" and failed.error == rows[1]["error"]


async def test_cancelling_the_sweep_cancels_the_running_trainings_and_never_starts_the_queued(
        start_actors, settings, client):
    await store_bars(client)
    await start_actors("orchestrator", "trainer", "trainer")
    cmd = sweep(("model.training.learning_rate", [0.01, 0.005, 0.002, 0.001]), epochs=500, max_parallel=2)
    await client.submit(cmd)
    running = [subjects.child_op_id(cmd.op_id, "training", f"v{i}") for i in (0, 1)]
    for op in running:
        await wait_for_event(client, op, lambda ev, v: v.status == "running", timeout=60)
    await client.cancel(cmd.op_id, reason="enough")
    view = await wait_terminal(client, cmd.op_id, timeout=60)
    assert view.status == "cancelled" and view.reason == "enough"
    kids = {k.op_id: k for k in await views(client, view.children)}
    assert [(kids[op].status, kids[op].reason_code) for op in running] == [("cancelled", "parent")] * 2
    queued = [subjects.child_op_id(cmd.op_id, "training", f"v{i}") for i in (2, 3)]
    assert [kids[op].created_at for op in queued] == [None, None]  # never created, so never trained


async def test_cancelling_a_sweep_whose_trainings_wait_for_a_trainer_cancels_them_and_ends_cancelled(
        start_actors, settings, client):
    # No trainer at all: the training children stay queued (no_worker only after an hour here). The
    # orchestrator cancels queued work itself, inside the sweep's cancelling step; that step used to
    # drop the parent's re-step those cancels caused, and the sweep stayed `running` (issue: faults 3).
    patient = make_settings(settings.home, settings.nats_url, orphan_timeout_s=3600.0)
    await start_actors("orchestrator", settings=patient)
    cmd = sweep(("model.training.learning_rate", [0.01, 0.005, 0.002]), epochs=1, max_parallel=2)
    await client.submit(cmd)
    queued = [subjects.child_op_id(cmd.op_id, "training", f"v{i}") for i in (0, 1)]
    for op in queued:
        await wait_for_event(client, op, lambda ev, v: v.status == "queued", timeout=60)
    await client.cancel(cmd.op_id, reason="enough")
    view = await wait_terminal(client, cmd.op_id, timeout=30)  # before the fix: `running` until the end
    assert view.status == "cancelled" and view.reason == "enough", (view.status, view.error)
    kids = {k.op_id: k for k in await views(client, view.children)}
    assert [(kids[op].status, kids[op].reason_code) for op in queued] == [("cancelled", "parent")] * 2
    never = subjects.child_op_id(cmd.op_id, "training", "v2")
    assert kids[never].created_at is None  # waiting in the sweep: never created


async def test_a_sweep_with_backtests_ranks_by_sharpe(start_actors, settings, client):
    await store_bars(client)
    await start_actors("orchestrator", "trainer", "trainer", "backtester")
    cmd = sweep(("model.training.learning_rate", [0.01, 0.001]), backtest=True, rank_by="sharpe")
    await client.submit(cmd)
    view = await wait_terminal(client, cmd.op_id, timeout=240)
    assert view.status == "completed", view.error
    kids = await views(client, view.children)
    assert [k.domain for k in kids] == ["training", "training", "backtest", "backtest"]
    board = view.result["leaderboard"]
    for row in board:
        bt = next(k for k in kids if k.op_id == row["backtest_op_id"])
        assert bt.command["model"] == row["model"] and bt.status == "completed"
        assert (row["sharpe"], row["total_return"]) == (bt.result["strategy"]["sharpe"],
                                                        bt.result["strategy"]["total_return"])
    sharpes = [row["sharpe"] for row in board]
    assert sharpes == sorted(sharpes, reverse=True)  # highest first


async def test_an_orchestrator_killed_mid_sweep_is_replaced_and_the_sweep_goes_on(start_actors, settings, client):
    await store_bars(client)
    first, = await start_actors("orchestrator")
    await start_actors("trainer")
    cmd = sweep(("model.training.learning_rate", [0.01, 0.001]), epochs=30, max_parallel=1)
    await client.submit(cmd)
    v0, v1 = (subjects.child_op_id(cmd.op_id, "training", f"v{i}") for i in (0, 1))
    await wait_for_event(client, v0, lambda ev, v: v.status == "running", timeout=60)
    await first.kill()  # dies while variant 0 trains: nobody is there when it ends
    assert (await wait_terminal(client, v0, timeout=180)).status == "completed"
    assert not (await client.view(v1)).created_at  # queued in the sweep: nobody started it
    await start_actors("orchestrator")
    view = await wait_terminal(client, cmd.op_id, timeout=180)
    assert view.status == "completed", view.error
    assert [r["status"] for r in view.result["leaderboard"]] == ["completed", "completed"]
    for op in (v0, v1):  # each planned once: the new orchestrator went on from the log
        assert len([e for e in await client.events(op) if isinstance(e, OperationCreated)]) == 1
