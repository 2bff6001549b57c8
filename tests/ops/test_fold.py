"""The fold's progress order (issue 18, F7): progress is ordered by (attempt, seq), so a worker that
takes an operation over, numbering its events from its own sequence, is shown, and a late copy of an
older event is not. Pure: no server."""

from __future__ import annotations

from events.messages import OperationCreated, OperationProgress, OperationStarted, ProgressState, RunDummy
from ktrdr.ops import fold_all

OP = "dummy-20261201T120000000000-abcdef"
ORCH = "orchestrator-host-1-abcd"


def created() -> OperationCreated:
    return OperationCreated(op_id=OP, domain="dummy", op_type="dummy", command=RunDummy(op_id=OP), actor=ORCH)


def started(worker: str, attempt: int) -> OperationStarted:
    return OperationStarted(op_id=OP, worker=worker, actor=worker, attempt=attempt)


def progress(worker: str, attempt: int, seq: int, step: int) -> OperationProgress:
    return OperationProgress(op_id=OP, actor=worker, seq=seq, attempt=attempt,
                             progress=ProgressState(current_step=step, message=f"step {step}"))


def test_a_failover_to_a_worker_that_numbers_from_one_again_is_shown_not_frozen():
    for second in ("dummy-b", "dummy-a"):  # another process, or the same id come back
        events = [created(), started("dummy-a", 1), *(progress("dummy-a", 1, s, s) for s in range(1, 101)),
                  started(second, 2), *(progress(second, 2, s, 1000 + s) for s in range(1, 51))]
        view = fold_all(events)
        assert (view.attempts, view.worker, view.current_step) == (2, second, 1050), second
        assert (view.progress_attempt, view.last_progress_seq) == (2, 50)


def test_an_older_seq_or_an_older_attempt_is_ignored():
    events = [created(), started("dummy-a", 1), progress("dummy-a", 1, 10, 10),
              progress("dummy-a", 1, 5, 5)]  # sent again late (a leader election): older
    assert fold_all(events).current_step == 10
    events += [started("dummy-a", 2), progress("dummy-a", 2, 3, 300), progress("dummy-a", 1, 99, 99)]
    assert fold_all(events).current_step == 300  # attempt 1's seq 99 is older than attempt 2's seq 3


def test_progress_stored_without_an_attempt_counts_for_the_running_one():
    """Events of an older version carry attempt 0: ordered by seq within the attempt that runs."""
    events = [created(), started("dummy-a", 1), progress("dummy-a", 0, 40, 40), started("dummy-b", 2),
              progress("dummy-b", 0, 2, 2), progress("dummy-b", 0, 1, 1)]
    view = fold_all(events)
    assert view.current_step == 2 and view.last_progress_seq == 2


def test_a_verdict_of_an_older_leader_epoch_is_ignored_once_a_newer_one_acted():
    """A leader paused past its lease resumes and fails the operation the new leader handed on: the
    fold keeps the operation running under the new leader's grant (issue 19, fencing)."""
    from events.messages import OrchestratorFailed

    new_orch = "orchestrator-host-2-beef"
    events = [created(), started("dummy-a", 1),
              OperationStarted(op_id=OP, worker="dummy-b", actor=new_orch, attempt=2, epoch=2),
              OrchestratorFailed(op_id=OP, actor=ORCH, error="worker lost", error_code="worker_lost", epoch=1)]
    events[0].epoch = events[1].epoch = 1
    view = fold_all(events)
    assert (view.status, view.worker, view.epoch) == ("running", "dummy-b", 2)
    assert any("leader epoch 1" in e for e in view.errors), view.errors
    # The same verdict from the current epoch counts.
    view = fold_all([*events[:3], OrchestratorFailed(op_id=OP, actor=new_orch, error="worker lost", epoch=2)])
    assert view.status == "failed"
