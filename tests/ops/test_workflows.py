"""Workflow decisions as pure functions: the plan of a training workflow, each step of advance()
from the parent's and the children's views, and the parent's throttled progress. No server."""

from __future__ import annotations

from datetime import UTC, datetime

from events import subjects
from events.messages import (
    LoadData,
    OperationCancelled,
    OperationCompleted,
    OperationFailed,
    ProgressState,
    RunBacktest,
    StartTraining,
)
from ktrdr.ops import OperationView, workflows
from ktrdr.ops.workflows import PARENT_PROGRESS_EVERY_S, Workflow, advance, plan_training

PARENT = "training-20261201T120000000000-abcdef"


def training(**kw: object) -> StartTraining:
    return StartTraining(op_id=PARENT, strategy_path="strategies/x.yaml", strategy_yaml="name: x",
                         symbols=["AAPL", "MSFT"], timeframes=["1h"], epochs=2, pool="gpu", **kw)  # type: ignore[arg-type]


def parent(**fields: object) -> OperationView:
    return OperationView(op_id=PARENT, domain="training", status="running", **fields)  # type: ignore[arg-type]


def child(cmd: object, status: str = "running", **fields: object) -> OperationView:
    return OperationView(op_id=cmd.op_id, domain=cmd.domain, status=status,  # type: ignore[attr-defined,arg-type]
                         parent_op_id=PARENT, **fields)  # type: ignore[arg-type]


def test_a_training_plans_one_data_child_per_symbol_and_timeframe_then_the_training():
    plan = plan_training(training(), ["AAPL", "MSFT"], ["1h", "4h"])
    data, train = plan[:-1], plan[-1]
    assert [(c.symbol, c.timeframe, c.mode) for c in data] == [  # type: ignore[attr-defined]
        ("AAPL", "1h", "full"), ("AAPL", "4h", "full"), ("MSFT", "1h", "full"), ("MSFT", "4h", "full")]
    assert all(isinstance(c, LoadData) and c.parent_op_id == PARENT for c in data)
    assert isinstance(train, StartTraining) and train.data_mode == "none" and train.pool == "gpu"
    again = plan_training(training(), ["AAPL", "MSFT"], ["1h", "4h"])  # e.g. by an orchestrator that restarted
    assert [c.op_id for c in again] == [c.op_id for c in plan]  # ids derive from the parent's
    assert all(subjects.is_op_id(c.op_id) for c in plan)


def test_only_a_top_level_training_with_a_data_step_is_a_workflow():
    assert workflows.is_workflow(training())
    assert not workflows.is_workflow(training(data_mode="none"))
    assert not workflows.is_workflow(training(parent_op_id="training-20261201T120000000000-000000"))
    assert not workflows.is_workflow(LoadData(op_id="data-20261201T120000000000-abcdef", symbol="AAPL"))


TRAINED = {"test_metrics": {"test_accuracy": 0.5}, "artifacts": {"name": "x/AAPL-MSFT_1h_v3"},
           "data_summary": {"per_symbol": {"AAPL": {"test_first": "2024-03-04T14:30:00+00:00"},
                                           "MSFT": {"test_first": "2024-03-05T14:30:00+00:00"}}}}


def test_with_backtest_the_training_is_followed_by_a_backtest_of_its_model_on_the_test_period():
    cmd = training(backtest=True, end=datetime(2024, 6, 1, tzinfo=UTC))
    plan = plan_training(cmd, ["AAPL", "MSFT"], ["1h"])
    assert [c.domain for c in plan] == ["data", "data", "training", "backtest"]
    assert workflows.is_workflow(training(backtest=True, data_mode="none"))  # train, then backtest
    assert [c.domain for c in plan_training(training(backtest=True, data_mode="none"), ["AAPL"], ["1h"])] == [
        "training", "backtest"]
    kids = {c.op_id: child(c, "completed") for c in plan[:2]}
    kids[plan[2].op_id] = child(plan[2], percentage=50.0)
    d = advance(parent(), plan, kids, {}, set())
    assert d.create == [] and d.progress is not None and d.progress.percentage == 50.0  # 10 + 80 x 0.5
    kids[plan[2].op_id] = child(plan[2], "completed", result=TRAINED)
    d = advance(parent(), plan, kids, {}, set())
    assert d.finish is None and len(d.create) == 1
    bt = d.create[0]
    assert isinstance(bt, RunBacktest) and bt.op_id == plan[3].op_id and bt.parent_op_id == PARENT
    assert bt.model == "x/AAPL-MSFT_1h_v3" and bt.symbols == ["AAPL", "MSFT"]
    assert bt.start == datetime(2024, 3, 5, 14, 30, tzinfo=UTC)  # both symbols in their test part
    assert bt.end == cmd.end
    kids[bt.op_id] = child(bt, percentage=50.0)
    d = advance(parent(), plan, kids, {}, set())
    assert d.progress is not None and d.progress.percentage == 95.0 and d.progress.phase == "backtest"
    kids[bt.op_id] = child(bt, "completed", result={"strategy": {"sharpe": 1.5}})
    d = advance(parent(), plan, kids, {}, set())
    assert isinstance(d.finish, OperationCompleted) and d.finish.message == "Workflow completed: 4 operations"
    assert d.finish.result == {**TRAINED, "backtest": {"op_id": bt.op_id, "strategy": {"sharpe": 1.5}}}


def test_a_training_result_without_a_test_period_fails_the_workflow_instead_of_backtesting_everything():
    plan = plan_training(training(backtest=True, data_mode="none"), ["AAPL"], ["1h"])
    kids = {plan[0].op_id: child(plan[0], "completed", result={"artifacts": {"name": "x/AAPL_1h_v1"}})}
    d = advance(parent(), plan, kids, {}, set())
    assert d.create == [] and isinstance(d.finish, OperationFailed)
    assert "no saved model or no test period" in d.finish.error


def test_a_failed_backtest_fails_the_workflow_with_its_reason():
    plan = plan_training(training(backtest=True, data_mode="none"), ["AAPL"], ["1h"])
    kids = {plan[0].op_id: child(plan[0], "completed", result=TRAINED),
            plan[1].op_id: child(plan[1], "failed", error="no 1h bars", error_code="data")}
    d = advance(parent(), plan, kids, {}, set())
    assert isinstance(d.finish, OperationFailed) and d.finish.error_code == "data"


def test_data_children_come_first_and_the_training_once_all_of_them_completed():
    plan = plan_training(training(), ["AAPL", "MSFT"], ["1h"])
    d = advance(parent(), plan, {}, {}, set())
    assert d.create == plan[:2] and d.finish is None
    kids = {plan[0].op_id: child(plan[0], "completed"), plan[1].op_id: child(plan[1])}
    assert advance(parent(), plan, kids, {}, set()).create == []
    kids[plan[1].op_id] = child(plan[1], "completed")
    assert advance(parent(), plan, kids, {}, set()).create == [plan[2]]


def test_the_workflow_completes_with_the_trainings_result():
    plan = plan_training(training(), ["AAPL"], ["1h"])
    kids = {plan[0].op_id: child(plan[0], "completed"), plan[1].op_id: child(plan[1], "completed", result={"acc": 1})}
    d = advance(parent(), plan, kids, {}, set())
    assert isinstance(d.finish, OperationCompleted) and d.finish.result == {"acc": 1}
    assert d.finish.message == "Workflow completed: 2 operations"


def test_a_cancelled_parent_cancels_its_live_children_once_then_ends_when_none_runs():
    plan = plan_training(training(), ["AAPL", "MSFT"], ["1h"])
    cancelled = parent(cancel_requested=True, cancel_reason="test", cancel_reason_code="user")
    kids = {plan[0].op_id: child(plan[0]), plan[1].op_id: child(plan[1], "queued")}
    wf = Workflow(plan, children=kids)
    d = workflows.step(wf, cancelled, lambda _op: None)
    assert d.cancel == [plan[0].op_id, plan[1].op_id] and d.finish is None and d.create == []
    assert workflows.step(wf, cancelled, lambda _op: None).cancel == []  # told once
    kids[plan[0].op_id] = child(plan[0], "cancelled", reason_code="parent", where="segment 2/5")
    kids[plan[1].op_id] = child(plan[1], "cancelled", reason_code="parent")
    d = workflows.step(wf, cancelled, lambda _op: None)
    assert isinstance(d.finish, OperationCancelled)
    assert d.finish.reason == "test" and d.finish.reason_code == "user"
    assert d.finish.where == "data child: segment 2/5"


def test_a_failed_child_fails_the_parent_with_its_reason_and_stops_the_others():
    plan = plan_training(training(), ["AAPL", "ZZZZ"], ["1h"])
    kids = {plan[0].op_id: child(plan[0]), plan[1].op_id: child(plan[1], "failed", error="unknown symbol ZZZZ",
                                                                 error_code="unknown_symbol", description="load ZZZZ")}
    d = advance(parent(), plan, kids, {}, set())
    assert d.cancel == [plan[0].op_id]
    assert isinstance(d.finish, OperationFailed) and d.finish.error_code == "unknown_symbol"
    assert d.finish.error == f"child {plan[1].op_id} (load ZZZZ) failed: unknown symbol ZZZZ"


def test_a_child_cancelled_by_someone_else_cancels_the_parent_as_the_user():
    plan = plan_training(training(), ["AAPL"], ["1h"])
    kids = {plan[0].op_id: child(plan[0], "cancelled", reason="ctrl-c", reason_code="parent")}
    d = advance(parent(), plan, kids, {}, set())
    assert isinstance(d.finish, OperationCancelled) and d.finish.reason_code == "user"
    assert d.finish.reason == "ctrl-c"


def test_progress_mirrors_the_running_child_in_the_data_share_then_the_training():
    plan = plan_training(training(), ["AAPL", "MSFT"], ["1h"])
    kids = {plan[0].op_id: child(plan[0], "completed"), plan[1].op_id: child(plan[1], percentage=50.0)}
    d = advance(parent(), plan, kids, {plan[1].op_id: "Loading MSFT 1h"}, set())
    assert d.progress is not None and d.progress.percentage == 7.5 and d.progress.phase == "data"
    assert d.progress.message == "Loading MSFT 1h" and d.progress.context.child_op_id == plan[1].op_id  # type: ignore[union-attr]
    kids[plan[1].op_id] = child(plan[1], "completed")
    kids[plan[2].op_id] = child(plan[2], percentage=50.0)
    d = advance(parent(), plan, kids, {}, set())
    assert d.progress is not None and d.progress.percentage == 55.0 and d.progress.phase == "training"
    assert d.progress.message == "training: 2/3 operations done"


def test_step_reads_the_live_views_and_created_keeps_a_child_that_already_ended():
    plan = plan_training(training(), ["AAPL"], ["1h"])
    wf = Workflow(plan, children={plan[0].op_id: child(plan[0], "queued")})
    live = child(plan[0], percentage=40.0)
    workflows.step(wf, parent(), {plan[0].op_id: live}.get)
    assert wf.children[plan[0].op_id] is live
    ended = child(plan[1], "rejected")
    wf.children[plan[1].op_id] = ended  # recorded when it ended, during its own creation
    workflows.created(wf, plan[1].op_id, None)
    assert wf.children[plan[1].op_id] is ended
    workflows.created(wf, "training-20261201T120000000000-000001", None)
    assert wf.children["training-20261201T120000000000-000001"].status == "queued"


def test_child_moved_keeps_the_childs_last_line():
    plan = plan_training(training(), ["AAPL"], ["1h"])
    wf = Workflow(plan)
    workflows.child_moved(wf, child(plan[0]), None)
    assert plan[0].op_id in wf.children and wf.lines == {}
    workflows.child_moved(wf, child(plan[0]), "Loading AAPL 1h")
    assert wf.lines == {plan[0].op_id: "Loading AAPL 1h"}


# --------------------------------------------------------------------------- the parent's progress
def p(pct: float, phase: str = "data", message: str = "") -> ProgressState:
    return ProgressState(percentage=pct, phase=phase, message=message or f"{pct}")


def test_the_parents_progress_is_said_at_most_every_interval_and_the_newest_held_is_flushed():
    wf = Workflow([])
    assert workflows.throttle(wf, p(1), 100.0) == (p(1), None)  # the first goes out at once
    said, flush_in = workflows.throttle(wf, p(2), 100.05)
    assert said is None and flush_in is not None and abs(flush_in - (PARENT_PROGRESS_EVERY_S - 0.05)) < 1e-9
    assert workflows.throttle(wf, p(3), 100.1) == (None, None)  # a flush is due already: held, newest wins
    assert workflows.flush(wf, 100.2) == p(3)
    assert workflows.flush(wf, 100.3) is None  # nothing held any more
    assert workflows.throttle(wf, p(4), 100.5) == (p(4), None)  # the interval passed


def test_a_step_change_is_said_at_once_and_drops_what_was_held():
    wf = Workflow([])
    workflows.throttle(wf, p(5), 10.0)
    workflows.throttle(wf, p(6), 10.01)
    assert workflows.throttle(wf, p(10, "training"), 10.02) == (p(10, "training"), None)
    assert wf.held is None and not wf.flush_pending and workflows.flush(wf, 10.3) is None


def test_the_same_progress_again_is_not_said_again():
    wf = Workflow([])
    workflows.throttle(wf, p(5), 10.0)
    assert workflows.throttle(wf, p(5), 11.0) == (None, None)
