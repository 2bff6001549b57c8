"""The reader's fold of stored messages into views (its on_msg, fed directly here; the read from a
real OPS stream is exercised by the orchestrator's restart tests, `ops list` and tests/security).
Each message is filed under the operation its subject names, never the one its body names."""

from __future__ import annotations

from events import subjects
from events.codec import encode
from events.messages import (
    CancelOperation,
    OperationCompleted,
    OperationCreated,
    OperationStarted,
    RunDummy,
    StartTraining,
)
from ktrdr.ops import OperationView
from ktrdr.ops.reader import ViewCollector, fold_message

A = "dummy-20261201T120000000000-aaaaaa"
B = "dummy-20261201T120000000001-bbbbbb"
TRAINING = "training-20261201T120000000002-cccccc"
DATA = "data-20261201T120000000003-dddddd"
ORCH = "orchestrator-1"


def created(op_id: str) -> OperationCreated:
    return OperationCreated(op_id=op_id, domain="dummy", op_type="dummy", command=RunDummy(op_id=op_id), actor=ORCH)


def test_each_stored_event_is_folded_into_its_operations_view_and_garbage_is_nobodys():
    collect = ViewCollector()
    for ev in (created(A), created(B),
               OperationStarted(op_id=A, worker="dummy-1", actor="dummy-1"),
               OperationCompleted(op_id=A, result={"n": 1}, actor="dummy-1")):
        collect(subjects.event(ev), encode(ev))
    collect(subjects.ops(A, "completed"), b"not json")
    collect("ops.dummy.x.y", encode(OperationStarted(op_id="not an id", worker="w")))
    assert sorted(collect.views) == [A, B]
    assert collect.views[A].status == "completed" and collect.views[A].result == {"n": 1}
    assert collect.views[B].status == "queued"
    assert collect.dropped == 2


def test_a_body_naming_another_operation_is_filed_under_nobody():
    """F3: a job-manager key publishes on ops.data.<any id>.completed a completion of a training op."""
    collect = ViewCollector()
    training = OperationCreated(op_id=TRAINING, domain="training", op_type="training", actor=ORCH,
                                command=StartTraining(op_id=TRAINING, data_mode="none"))
    collect(subjects.event(training), encode(training))
    forged = OperationCompleted(op_id=TRAINING, actor="orchestrator-evil", result={"model_path": "MODELS/evil"})
    collect(subjects.ops(DATA, "completed"), encode(forged))
    collect(f"ops.data.{TRAINING}.completed", encode(forged))  # its id, on a data subject
    collect(subjects.cancel(TRAINING), encode(forged))  # F1: a completion on its cancel subject
    view = collect.views[TRAINING]
    assert view.status == "queued" and view.result is None
    assert sorted(collect.views) == [TRAINING] and collect.dropped == 3
    assert view.dropped == 2 and "names no event of a 'data' operation" in view.errors[0]


def test_fold_message_counts_what_it_drops_and_notes_the_first():
    view = OperationView(op_id=A)
    fold_message(view, subjects.event(created(A)), encode(created(A)))
    forged = OperationCompleted(op_id=A, actor="orchestrator-evil")
    for _ in range(30):
        assert fold_message(view, subjects.cancel(A), encode(forged)) == ()
    assert fold_message(view, subjects.cancel(A), encode(CancelOperation(op_id=A))) != ()
    assert view.status == "queued" and view.cancel_requested and view.dropped == 30
    assert len(view.errors) == 1 and "OperationCompleted" in view.errors[0]  # bounded: one note, a count
