"""A universe (a data load of several symbols) as pure decisions: one data child per symbol, at most
max_parallel created at once, failed symbols recorded without failing the others, cancel reaching
running children while the queued ones are never created. No server."""

from __future__ import annotations

import msgspec
import pytest

from events.bounds import DEFAULT_UNIVERSE_PARALLEL, MAX_UNIVERSE_PARALLEL, MAX_UNIVERSE_SYMBOLS
from events.codec import encode
from events.messages import LoadData, OperationCancelled, OperationCompleted, OperationFailed, StartTraining
from ktrdr.ops import OperationView, workflows

PARENT = "data-20261201T120000000000-abcdef"
SYMBOLS = ["AAPL", "MSFT", "EURUSD", "SPY", "GBPUSD"]


def universe(**kw: object) -> LoadData:
    args: dict[str, object] = {"op_id": PARENT, "symbol": SYMBOLS[0], "symbols": SYMBOLS, "timeframe": "1h",
                               "mode": "full", "max_parallel": 2}
    args.update(kw)
    return LoadData(**args)  # type: ignore[arg-type]


def parent(cmd: LoadData, **fields: object) -> OperationView:
    command = msgspec.json.decode(encode(cmd))
    return OperationView(op_id=PARENT, domain="data", status="running", command=command, **fields)  # type: ignore[arg-type]


def child(cmd: object, status: str = "running", **fields: object) -> OperationView:
    return OperationView(op_id=cmd.op_id, domain="data", status=status, parent_op_id=PARENT,  # type: ignore[attr-defined,arg-type]
                         **fields)  # type: ignore[arg-type]


def test_a_load_of_several_symbols_is_a_workflow_with_one_data_child_per_symbol():
    cmd = universe(symbols=[*SYMBOLS, "AAPL"], pool="east")
    assert workflows.is_workflow(cmd) and not workflows.is_workflow(universe(symbols=[]))
    plan = workflows.plan_universe(cmd)
    assert [c.symbol for c in plan] == SYMBOLS  # type: ignore[attr-defined]  # duplicates once
    assert all(isinstance(c, LoadData) and c.parent_op_id == PARENT and c.pool == "east" and c.mode == "full"
               and not c.symbols for c in plan)
    assert workflows.describe(cmd, "")[0] == "data_universe"


def test_a_training_and_a_universe_launch_their_data_children_through_the_same_code():
    train = StartTraining(op_id="training-20261201T120000000000-abcdef", symbols=["AAPL", "MSFT"],
                          timeframes=["1h"], strategy_yaml="name: x")
    t_data = workflows.plan_training(train, ["AAPL", "MSFT"], ["1h"])[:-1]
    u_data = workflows.data_children(train.op_id, ["AAPL", "MSFT"], ["1h"], "full", train, None, None)  # type: ignore[list-item]
    assert [c.op_id for c in t_data] == [c.op_id for c in u_data]


def test_at_most_max_parallel_children_run_and_the_rest_wait_queued():
    cmd = universe()
    plan = workflows.plan_universe(cmd)
    d = workflows.advance(parent(cmd), plan, {}, {}, set())
    assert [c.op_id for c in d.create] == [c.op_id for c in plan[:2]]
    running = {c.op_id: child(c) for c in plan[:2]}
    assert workflows.advance(parent(cmd), plan, running, {}, set()).create == []
    running[plan[0].op_id] = child(plan[0], "completed", result={"bars_total": 100})
    d = workflows.advance(parent(cmd), plan, running, {}, set())
    assert [c.op_id for c in d.create] == [plan[2].op_id]  # one ended: one more starts
    assert d.progress is not None and d.progress.message.startswith("1/5 symbols done (0 failed)")
    assert "2 queued" in d.progress.message and "100 bars" in d.progress.message


def test_the_default_parallelism_is_written_down_in_the_bounds():
    assert LoadData(op_id=PARENT, symbol="AAPL").max_parallel == DEFAULT_UNIVERSE_PARALLEL == 4


def test_a_failed_symbol_is_recorded_on_a_completed_parent_without_failing_the_others():
    cmd = universe(max_parallel=5)
    plan = workflows.plan_universe(cmd)
    kids = {c.op_id: child(c, "completed", result={"bars_total": 10}) for c in plan}
    kids[plan[1].op_id] = child(plan[1], "failed", error="unknown symbol MSFT", error_code="unknown_symbol")
    d = workflows.advance(parent(cmd), plan, kids, {}, set())
    assert isinstance(d.finish, OperationCompleted) and d.cancel == []
    assert d.finish.result["failed"] == {"MSFT": "failed: unknown symbol MSFT"}
    assert d.finish.result["completed"] == ["AAPL", "EURUSD", "SPY", "GBPUSD"]
    assert d.finish.result["bars"] == 40 and "1 failed (MSFT)" in d.finish.message


def test_a_universe_where_every_symbol_failed_fails_naming_each():
    cmd = universe(symbols=["AAPL", "MSFT"])
    plan = workflows.plan_universe(cmd)
    kids = {c.op_id: child(c, "failed", error="no", error_code="unknown_symbol") for c in plan}
    d = workflows.advance(parent(cmd), plan, kids, {}, set())
    assert isinstance(d.finish, OperationFailed) and "AAPL" in d.finish.error and "MSFT" in d.finish.error


def test_cancelling_the_universe_cancels_running_children_and_never_starts_queued_ones():
    cmd = universe()
    plan = workflows.plan_universe(cmd)
    kids = {c.op_id: child(c) for c in plan[:2]}
    p = parent(cmd, cancel_requested=True)
    d = workflows.advance(p, plan, kids, {}, set())
    assert d.cancel == [c.op_id for c in plan[:2]] and d.create == [] and d.finish is None
    kids = {c.op_id: child(c, "cancelled") for c in plan[:2]}
    d = workflows.advance(p, plan, kids, {}, set(d.cancel))
    assert isinstance(d.finish, OperationCancelled) and d.create == []


@pytest.mark.parametrize("bad", [{"symbols": ["AAPL", "../etc"]}, {"max_parallel": 0},
                                 {"max_parallel": MAX_UNIVERSE_PARALLEL + 1},
                                 {"symbols": ["AAPL"] * (MAX_UNIVERSE_SYMBOLS + 1)}])
def test_a_universe_command_out_of_bounds_is_refused_at_the_boundary(bad):
    raw = msgspec.json.decode(encode(universe()))
    raw.update(bad)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(msgspec.json.encode(raw), type=LoadData)


def test_the_universe_eta_is_the_requests_left_times_the_pacing_interval():
    from events.messages import DataContext

    cmd = universe()
    plan = workflows.plan_universe(cmd)
    kids = {plan[0].op_id: child(plan[0], "completed", context=DataContext(symbol="AAPL", segment_count=24,
                                                                          segments_done=24)),
            plan[1].op_id: child(plan[1], context=DataContext(symbol="MSFT", segment_count=24, segments_done=4)),
            plan[2].op_id: child(plan[2])}  # started, no plan yet: counts as the mean (24)
    assert workflows.requests_left(plan, kids) == 20 + 24 + 24 * 2  # two still queued
    d = workflows.advance(parent(cmd), plan, kids, {}, set(), pacing_interval_s=0.5)
    assert d.progress is not None and "ETA 46 s at IB's pacing bound (92 requests left)" in d.progress.message
