"""A sweep as pure decisions: the grid's variants (each path checked against the strategy's schema,
each variant parsed), the plan (data once, one training per variant with the variant's text, optional
backtests), at most max_parallel trainings created at once, a failed variant a row of the leaderboard,
the leaderboard sorted by rank_by, a cancel reaching running trainings while queued ones are never
created. No server."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from events import subjects
from events.codec import encode
from events.messages import (
    LoadData,
    OperationCancelled,
    OperationCompleted,
    OperationFailed,
    RunBacktest,
    RunSweep,
    StartTraining,
    SweepParam,
)
from ktrdr.commands import CommandError, training_inputs, validate
from ktrdr.ops import OperationView, workflows
from ktrdr.training.strategy import parse_strategy
from ktrdr.training.sweep import grid

PARENT = "training-20261201T120000000000-abcdef"
STRATEGY = Path(__file__).parents[2] / "strategies" / "mlp_rsi_aapl.yaml"


def sweep(*params: tuple[str, list[object]], **kw: object) -> RunSweep:
    args: dict[str, object] = {"op_id": PARENT, "strategy_path": str(STRATEGY), "strategy_yaml": STRATEGY.read_text(),
                               "params": [SweepParam(path=p, values=v) for p, v in params], "max_parallel": 2}
    args.update(kw)
    return RunSweep(**args)  # type: ignore[arg-type]


GRID = (("model.training.learning_rate", [0.01, 0.001]), ("model.architecture.hidden_layers", [[8], [16, 8]]))


def parent(cmd: RunSweep, **fields: object) -> OperationView:
    return OperationView(op_id=PARENT, domain="training", status="running",  # type: ignore[arg-type]
                         command=msgspec.json.decode(encode(cmd)), **fields)


def done(c: object, val_loss: float, acc: float = 0.5) -> OperationView:
    return OperationView(op_id=c.op_id, domain="training", status="completed", parent_op_id=PARENT,  # type: ignore[attr-defined]
                         result={"validation_metrics": {"val_loss": val_loss}, "test_metrics": {"test_accuracy": acc},
                                 "artifacts": {"name": f"mlp_rsi_aapl/AAPL_1h_v{round(val_loss * 100)}"},
                                 "data_summary": {"per_symbol": {"AAPL": {"test_first": "2024-03-01T00:00:00+00:00"}}}})


def view(c: object, status: str = "running", **fields: object) -> OperationView:
    return OperationView(op_id=c.op_id, domain=c.domain, status=status, parent_op_id=PARENT, **fields)  # type: ignore[attr-defined,arg-type]


def test_the_grid_is_the_product_of_the_params_first_slowest_and_each_variant_carries_its_text():
    cmd = sweep(*GRID, data_mode="local")
    assert workflows.is_workflow(cmd) and workflows.describe(cmd, "d")[0] == "training_sweep"
    plan = workflows.plan(cmd, training_inputs)
    assert [type(c) for c in plan] == [LoadData] + [StartTraining] * 4  # the data once for all variants
    trains = plan[1:]
    assert grid(cmd.params) == [{"model.training.learning_rate": lr, "model.architecture.hidden_layers": hl}
                                for lr in (0.01, 0.001) for hl in ([8], [16, 8])]
    for c, values in zip(trains, grid(cmd.params), strict=True):
        assert isinstance(c, StartTraining) and c.parent_op_id == PARENT and c.data_mode == "none"
        s = parse_strategy(c.strategy_yaml)
        assert s.model.training.learning_rate == values["model.training.learning_rate"]
        assert s.model.architecture.hidden_layers == values["model.architecture.hidden_layers"]
        assert s.indicators == parse_strategy(cmd.strategy_yaml).indicators  # the rest as the file says
    assert [c.op_id for c in trains] == [subjects.child_op_id(PARENT, "training", f"v{i}") for i in range(4)]
    assert [c.op_id for c in workflows.plan(cmd, training_inputs)] == [c.op_id for c in plan]  # a restart: the same
    with_bt = workflows.plan(sweep(*GRID, data_mode="none", backtest=True), training_inputs)
    assert [type(c) for c in with_bt] == [StartTraining] * 4 + [RunBacktest] * 4


@pytest.mark.parametrize(("params", "says"), [
    ((("model.training.learnin_rate", [0.1]),), "no field 'learnin_rate' in model.training"),
    ((("model.training.learning_rate.x", [0.1]),), "model.training.learning_rate is a number"),
    ((("indicators.7.period", [3]),), "indicators is a list of 4: no item 7"),
    ((("nope", [3]),), "no field 'nope' in the strategy"),
    ((("model.training.learning_rate", [0.1, -1]),), "variant 1 (model.training.learning_rate=-1)"),
    ((("model.training.batch_size", list(range(1, 20))), ("model.training.epochs", list(range(1, 20)))),
     "19 x 19 = 361 variants: at most 256"),
    ((("model.training.epochs", [1]), ("model.training.epochs", [2])), "given twice"),
    ((("training_data.history_required", [10, 20]),), "share their data"),
])
def test_a_bad_grid_is_refused_before_anything_runs(params, says):
    with pytest.raises(CommandError) as exc:
        validate(sweep(*params))
    assert says in str(exc.value)


def test_a_field_the_schema_has_but_the_file_does_not_set_may_be_swept():
    cmd = sweep(("model.training.early_stopping.min_delta", [0.0, 0.01]), ("decisions.confidence_threshold", [0.5]))
    validate(cmd)
    trains = [c for c in workflows.plan(cmd, training_inputs) if isinstance(c, StartTraining)]
    got = [parse_strategy(c.strategy_yaml) for c in trains]
    assert [s.model.training.early_stopping.min_delta for s in got] == [0.0, 0.01]  # type: ignore[union-attr]
    assert [s.decisions.confidence_threshold for s in got] == [0.5, 0.5]


def test_sharpe_ranks_only_a_backtested_sweep():
    with pytest.raises(CommandError, match="sharpe needs backtest"):
        validate(sweep(*GRID, rank_by="sharpe"))
    validate(sweep(*GRID, rank_by="sharpe", backtest=True))


def test_data_first_then_at_most_k_trainings_and_a_failed_variant_is_a_row():
    cmd = sweep(*GRID, data_mode="full")
    plan = workflows.plan(cmd, training_inputs)
    data, trains = plan[0], plan[1:]
    d = workflows.advance(parent(cmd), plan, {}, {}, set())
    assert [c.op_id for c in d.create] == [data.op_id]  # no training before its data
    kids = {data.op_id: view(data)}
    assert workflows.advance(parent(cmd), plan, kids, {}, set()).create == []
    kids[data.op_id] = view(data, "completed")
    d = workflows.advance(parent(cmd), plan, kids, {}, set())
    assert [c.op_id for c in d.create] == [c.op_id for c in trains[:2]]  # K = 2
    kids |= {c.op_id: view(c) for c in trains[:2]}
    assert workflows.advance(parent(cmd), plan, kids, {}, set()).create == []
    kids[trains[0].op_id] = view(trains[0], "failed", error="boom", error_code="data")
    d = workflows.advance(parent(cmd), plan, kids, {}, set())
    assert [c.op_id for c in d.create] == [trains[2].op_id] and d.finish is None  # the sweep goes on
    kids[trains[1].op_id] = done(trains[1], 0.9)
    kids[trains[2].op_id] = done(trains[2], 0.7, acc=0.4)
    d = workflows.advance(parent(cmd), plan, kids, {}, set())
    assert [c.op_id for c in d.create] == [trains[3].op_id]
    kids[trains[3].op_id] = view(trains[3], "cancelled", reason="not this one", reason_code="user")
    d = workflows.advance(parent(cmd), plan, kids, {}, set())
    assert isinstance(d.finish, OperationCompleted)
    board = d.finish.result
    assert (board["variants"], board["completed"], board["failed"], board["rank_by"]) == (4, 2, 2, "val_loss")
    assert [(r["variant"], r["status"]) for r in board["leaderboard"]] == [
        (2, "completed"), (1, "completed"), (0, "failed"), (3, "cancelled")]  # lowest val_loss first
    assert board["leaderboard"][2]["error"] == "boom" and board["best"]["variant"] == 2
    assert board["leaderboard"][0]["params"] == grid(cmd.params)[2]
    by_acc = workflows.leaderboard(parent(sweep(*GRID, rank_by="test_accuracy")), plan, kids)
    assert [r["variant"] for r in by_acc["leaderboard"]][:2] == [1, 2]  # highest accuracy first


def test_a_failed_data_child_fails_the_sweep_and_all_variants_failing_fails_it():
    cmd = sweep(*GRID, data_mode="full")
    plan = workflows.plan(cmd, training_inputs)
    d = workflows.advance(parent(cmd), plan, {plan[0].op_id: view(plan[0], "failed", error="no such symbol")}, {},
                          set())
    assert isinstance(d.finish, OperationFailed) and "no such symbol" in d.finish.error
    kids = {plan[0].op_id: view(plan[0], "completed")} | {c.op_id: view(c, "failed", error="x") for c in plan[1:]}
    d = workflows.advance(parent(cmd), plan, kids, {}, set())
    assert isinstance(d.finish, OperationFailed) and d.finish.error.startswith("every variant failed")


def test_each_trained_model_is_backtested_on_its_test_period():
    cmd = sweep(*GRID, data_mode="none", backtest=True, rank_by="sharpe")
    plan = workflows.plan(cmd, training_inputs)
    trains, tests = plan[:4], plan[4:]
    kids = {c.op_id: view(c) for c in trains}
    kids[trains[1].op_id] = done(trains[1], 0.5)
    d = workflows.advance(parent(cmd), plan, kids, {}, set())
    [bt] = d.create
    assert isinstance(bt, RunBacktest) and bt.op_id == tests[1].op_id and bt.model == "mlp_rsi_aapl/AAPL_1h_v50"
    kids = {c.op_id: done(c, 0.5 + i / 10) for i, c in enumerate(trains)}
    kids |= {c.op_id: view(c, "completed", result={"strategy": {"sharpe": s, "total_return": s / 10}})
             for c, s in zip(tests, (0.1, 1.5, -0.3, 0.9), strict=True)}
    d = workflows.advance(parent(cmd), plan, kids, {}, set())
    assert isinstance(d.finish, OperationCompleted)
    assert [r["variant"] for r in d.finish.result["leaderboard"]] == [1, 3, 0, 2]  # highest Sharpe first
    assert d.finish.result["leaderboard"][0]["total_return"] == 0.15


def test_a_cancel_reaches_running_trainings_and_queued_ones_are_never_created():
    cmd = sweep(*GRID, data_mode="none")
    plan = workflows.plan(cmd, training_inputs)
    kids = {c.op_id: view(c) for c in plan[:2]}
    cancelling = parent(cmd, cancel_requested=True, cancel_reason="enough", cancel_reason_code="user")
    d = workflows.advance(cancelling, plan, kids, {}, set())
    assert d.cancel == [c.op_id for c in plan[:2]] and not d.create and d.finish is None
    kids = {c.op_id: view(c, "cancelled", reason_code="parent") for c in plan[:2]}
    d = workflows.advance(cancelling, plan, kids, {}, set(d.cancel))
    assert isinstance(d.finish, OperationCancelled) and not d.create


def test_ops_list_puts_a_workflows_children_in_creation_order():
    from datetime import UTC, datetime, timedelta

    from ktrdr.cli._listing import tree_order

    plan = workflows.plan(sweep(*GRID, data_mode="local"), training_inputs)
    t0 = datetime(2026, 12, 1, 12, tzinfo=UTC)
    kids = [OperationView(op_id=c.op_id, status="completed", parent_op_id=PARENT, created_at=t0 + timedelta(seconds=i))
            for i, c in enumerate(plan)]
    listed = [OperationView(op_id=PARENT, status="completed"), *sorted(kids, key=lambda v: v.op_id, reverse=True)]
    # the ids share the parent's time token: by id they would come in their digests' order
    assert [v.op_id for _, v in tree_order(listed)] == [PARENT, *(c.op_id for c in plan)]
