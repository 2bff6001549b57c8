"""One constructor per verdict: the events that end (or ask to end) an operation, their words and
codes, and how the fold takes them. No server."""

from __future__ import annotations

import inspect

import msgspec

from events.codec import decode_event, encode
from events.messages import CancelOperation, OperationCreated, OperationStarted, RunDummy
from ktrdr import errors
from ktrdr.ops import KNOWN_ERROR_CODES, TERMINAL, OperationView, fold_all, verdicts
from ktrdr.ops.view import Status

OP = "dummy-20261201T120000000000-abcdef"
ORCH = "orchestrator-host-1-abcd"


def created() -> OperationCreated:
    return OperationCreated(op_id=OP, domain="dummy", op_type="dummy", command=RunDummy(op_id=OP), actor=ORCH)


def test_cancelled_before_start_is_the_same_event_whoever_gives_it():
    view = fold_all([created(), CancelOperation(op_id=OP, reason="ctrl-c", reason_code="user")])
    recorded = verdicts.recorded_cancel(view)
    direct = verdicts.cancelled_before_start(OP, "ctrl-c", "user")
    assert msgspec.structs.asdict(recorded) | {"ts": None} == msgspec.structs.asdict(direct) | {"ts": None}
    assert recorded.where == verdicts.QUEUED_WHERE and recorded.where.startswith("queued")
    assert recorded.message == "Operation cancelled before it started"
    ended = fold_all([created(), recorded])
    assert ended.status == "cancelled" and ended.reason == "ctrl-c" and ended.reason_code == "user"


def test_a_recorded_cancel_without_words_still_says_why():
    view = fold_all([created()])
    view.cancel_requested = True
    cancel = verdicts.recorded_cancel(view)
    assert cancel.reason == "cancel requested" and cancel.reason_code == "user"
    assert verdicts.cancelled_before_start(OP, "", "deadline").reason == "cancel requested"


def test_worker_lost_says_who_went_silent_and_what_to_do():
    alone = verdicts.worker_lost(OP, "dummy-w1", 12.4, "dummy", replica_alive=False, orphan_timeout_s=30)
    assert alone.error_code == "worker_lost"
    assert alone.error == ("worker dummy-w1 stopped heartbeating 12 s ago and no dummy actor is alive to take "
                           "the operation over; start one and run the operation again")
    orphan = verdicts.worker_lost(OP, None, 31, "trainer", replica_alive=True, orphan_timeout_s=30)
    assert orphan.error == ("worker ? stopped heartbeating 31 s ago and no trainer picked the operation up again "
                            "within 30 s")


def test_no_worker_names_the_pool_to_start():
    failed = verdicts.no_worker(OP, "trainer", "gpu", 30.0, 31.2)
    assert failed.error_code == "no_worker"
    assert failed.error == ("no trainer in pool gpu came up within 30 s (waited 31 s); start one (KTRDR_POOLS=gpu) "
                            "and run it again")


def test_cancel_requests_for_a_deadline_and_for_a_parent():
    deadline = verdicts.deadline_cancel(OP, 60.0, ORCH)
    assert (deadline.reason, deadline.reason_code) == ("deadline of 60 s passed", "deadline")
    assert deadline.requested_by == ORCH
    parent = OperationView(op_id="training-20261201T120000000000-abcdef", cancel_reason="ctrl-c")
    child = verdicts.parent_cancel(OP, parent, ORCH)
    assert child.op_id == OP and child.reason_code == "parent"
    assert child.reason == "parent training-20261201T120000000000-abcdef is ending: ctrl-c"
    assert verdicts.parent_cancel(OP, OperationView(op_id=parent.op_id), ORCH).reason.endswith("a sibling failed")


def test_a_rejection_quotes_at_most_a_bounded_reason_and_field():
    rejected = verdicts.rejected(OP, "x" * 5000, "validation", "f" * 500)
    assert len(rejected.reason) == verdicts.MAX_REASON + 4 and rejected.reason.endswith(" ...")
    assert rejected.field == "f" * verdicts.MAX_FIELD
    assert verdicts.rejected(OP, "bad", "malformed").field is None
    view = fold_all([rejected])
    assert view.status == "rejected" and view.error_code == "validation"


def test_worker_verdicts_keep_their_codes():
    assert verdicts.refused(OP, "dummy", "iterations: too many").error == "refused by dummy: iterations: too many"
    assert verdicts.internal_error(OP, "trainer", KeyError("x")).error == "internal error in trainer: KeyError: 'x'"
    assert verdicts.failed(OP, "no bars", "no_data").error_code == "no_data"
    assert verdicts.completed(OP, None).result == {}


def test_every_verdict_survives_the_wire_and_folds_to_a_terminal_status():
    started = OperationStarted(op_id=OP, worker=ORCH, actor=ORCH)
    for ev in (verdicts.cancelled_before_start(OP, "x", "user"), verdicts.no_worker(OP, "dummy", "any", 1, 2),
               verdicts.worker_lost(OP, "w", 3, "dummy", replica_alive=False, orphan_timeout_s=1),
               verdicts.cannot_resume(OP, "bad yaml"), verdicts.completed(OP, {"n": 1})):
        ev.actor = ORCH
        view = fold_all([created(), started, decode_event(encode(ev))])
        assert view.status in TERMINAL, ev


def test_the_known_error_codes_cover_every_error_class_and_every_verdict():
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, errors.KtrdrError)]
    assert {c.code for c in classes} <= set(KNOWN_ERROR_CODES)
    made = {verdicts.worker_lost(OP, "w", 1, "r", replica_alive=True, orphan_timeout_s=1).error_code,
            verdicts.no_worker(OP, "r", "any", 1, 1).error_code, verdicts.cannot_resume(OP, "x").error_code,
            verdicts.refused(OP, "r", "x").error_code, verdicts.internal_error(OP, "r", ValueError()).error_code}
    assert made <= set(KNOWN_ERROR_CODES)


def test_the_status_literal_is_the_set_the_fold_produces():
    from typing import get_args

    assert set(TERMINAL) < set(get_args(Status)) and {"unknown", "queued", "running"} < set(get_args(Status))
