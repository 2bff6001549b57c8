"""The reader's fold of stored messages into views (its on_msg, fed directly here; the read from a
real OPS stream is exercised by the orchestrator's restart tests and `ops list`)."""

from __future__ import annotations

from events.codec import encode
from events.messages import OperationCompleted, OperationCreated, OperationStarted, RunDummy
from ktrdr.ops.reader import ViewCollector

A = "dummy-20261201T120000000000-aaaaaa"
B = "dummy-20261201T120000000001-bbbbbb"


def test_each_stored_event_is_folded_into_its_operations_view_and_garbage_is_nobodys():
    collect = ViewCollector()
    def created(op_id: str) -> OperationCreated:
        return OperationCreated(op_id=op_id, domain="dummy", op_type="dummy", command=RunDummy(op_id=op_id),
                                actor="orchestrator-1")

    for ev in (created(A), created(B),
               OperationStarted(op_id=A, worker="dummy-1", actor="dummy-1"),
               OperationCompleted(op_id=A, result={"n": 1}, actor="dummy-1")):
        collect("ops.dummy.x.y", encode(ev))
    collect("ops.dummy.x.y", b"not json")
    collect("ops.dummy.x.y", encode(OperationStarted(op_id="not an id", worker="w")))
    assert sorted(collect.views) == [A, B]
    assert collect.views[A].status == "completed" and collect.views[A].result == {"n": 1}
    assert collect.views[B].status == "queued"
