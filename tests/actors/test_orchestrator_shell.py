"""The orchestrator's handling of the echo of OPS events, without a server: its own lifecycle events
were folded when their publish returned and are not folded again; everyone else's are; progress is
decoded only for a workflow's child (the hot path)."""

from __future__ import annotations

from pathlib import Path

from actors.orchestrator import Orchestrator
from events import subjects
from events.codec import encode
from events.messages import (
    CancelRequested,
    OperationCreated,
    OperationProgress,
    OperationStarted,
    ProgressState,
    RunDummy,
)
from ktrdr.ops import OperationView, fold
from tests.conftest import make_settings

OP = "dummy-20261201T120000000000-abcdef"


def orchestrator(tmp_path: Path) -> Orchestrator:
    orch = Orchestrator(make_settings(tmp_path, "nats://127.0.0.1:1"))
    orch._buffer = None  # as after its start: events are applied as they come
    return orch


async def echo(orch: Orchestrator, ev: object) -> None:
    await orch._apply(subjects.event(ev), encode(ev))  # type: ignore[arg-type]


async def test_its_own_lifecycle_events_are_folded_once_and_others_events_are_folded(tmp_path):
    orch = orchestrator(tmp_path)
    created = OperationCreated(op_id=OP, domain="dummy", op_type="dummy", command=RunDummy(op_id=OP), actor=orch.id)
    view = fold(OperationView(op_id=OP), created)  # as publish_own folds it once stored
    orch._track(view)
    await echo(orch, created)
    await echo(orch, CancelRequested(op_id=OP, reason="x", actor=orch.id))
    assert view.events == 1 and not view.cancel_requested  # both ours: the echo adds nothing
    await echo(orch, OperationStarted(op_id=OP, worker="dummy-w1", actor="dummy-w1"))
    assert view.events == 2 and view.status == "running"


async def test_an_unknown_operation_is_tracked_from_another_orchestrators_creation_only(tmp_path):
    orch = orchestrator(tmp_path)
    ours = OperationCreated(op_id=OP, domain="dummy", op_type="dummy", command=RunDummy(op_id=OP), actor=orch.id)
    await echo(orch, ours)  # e.g. a creation it forgot after it failed midway: the redelivery creates it
    assert OP not in orch.live
    await echo(orch, OperationStarted(op_id=OP, worker="w", actor="w"))  # not a creation: not tracked
    assert OP not in orch.live
    theirs = OperationCreated(op_id=OP, domain="dummy", op_type="dummy", command=RunDummy(op_id=OP),
                              actor="orchestrator-other-1-abcd")
    await echo(orch, theirs)
    assert orch.live[OP].view.status == "queued"


async def test_progress_of_an_operation_that_is_no_workflows_child_is_not_decoded(tmp_path):
    orch = orchestrator(tmp_path)
    view = orch._track(OperationView(op_id=OP, status="running")).view
    orch.live[OP].last_seen = 0.0
    await orch._apply(subjects.event(OperationProgress(op_id=OP, progress=ProgressState())), b"not even json")
    assert orch.live[OP].last_seen > 0.0 and view.events == 0  # a sign of life, nothing to fold
