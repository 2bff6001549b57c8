"""An event means only what its subject proves (issue 18, F1/F3): `decode_event_on` takes the domain,
op id and event name from the subject and refuses a body that disagrees; a cancel subject carries
only a bounded CancelOperation whose reason code is never a worker's own hand-back reason. No server."""

from __future__ import annotations

import json

import pytest

from events import subjects
from events.codec import DecodeError, InvalidField, Misfiled, decode_event_on, encode
from events.messages import (
    CancelOperation,
    OperationCompleted,
    OperationCreated,
    OperationProgress,
    OperationStarted,
    ProgressState,
    RunDummy,
)

OP = "dummy-20261201T120000000000-abcdef"
TRAINING = "training-20261201T120000000000-abcdef"
DATA = "data-20261201T120000000000-abcdef"


def test_an_event_on_its_own_subject_is_decoded():
    for ev in (OperationStarted(op_id=OP, worker="dummy-1"), CancelOperation(op_id=OP),
               OperationProgress(op_id=OP, progress=ProgressState(percentage=5)),
               OperationCreated(op_id=OP, domain="dummy", op_type="dummy", command=RunDummy(op_id=OP))):
        assert decode_event_on(subjects.event(ev), encode(ev)) == ev


def test_a_completion_published_on_a_cancel_subject_is_misfiled():
    """F1: a CLI key may publish on ops.*.*.cancel; what it publishes there is never a verdict."""
    forged = OperationCompleted(op_id=OP, actor="orchestrator-evil", result={"forged": True})
    with pytest.raises(Misfiled, match="carries only CancelOperation"):
        decode_event_on(subjects.cancel(OP), encode(forged))


def test_an_event_naming_another_operation_than_its_subject_is_misfiled():
    """F3: a job-manager key may publish on ops.data.>; a body naming a training op there is nobody's."""
    forged = OperationCompleted(op_id=TRAINING, actor="orchestrator-evil", result={"model_path": "MODELS/evil"})
    with pytest.raises(Misfiled, match="an event of"):
        decode_event_on(subjects.ops(DATA, "completed"), encode(forged))
    with pytest.raises(Misfiled, match="names no event"):  # a training id on a data subject
        decode_event_on(f"ops.data.{TRAINING}.completed", encode(forged))


@pytest.mark.parametrize("subject", [
    "ops.dummy.x.y", f"ops.dummy.{OP}", f"ops.dummy.{OP}.completed.more", f"cmd.dummy.{OP}.completed",
    f"ops.nope.{OP}.completed", f"ops.dummy.{OP}.nope", f"ops.data.{OP}.completed",
])
def test_a_subject_that_names_no_event_of_an_operation_is_misfiled(subject):
    with pytest.raises(Misfiled):
        decode_event_on(subject, encode(OperationCompleted(op_id=OP)))


def test_a_creation_must_be_of_its_subjects_domain():
    ev = OperationCreated(op_id=OP, domain="data", op_type="dummy", command=RunDummy(op_id=OP))
    with pytest.raises(Misfiled, match="creation"):
        decode_event_on(subjects.event(ev), encode(ev))


def test_garbage_on_an_event_subject_is_a_decode_error():
    with pytest.raises(DecodeError):
        decode_event_on(subjects.cancel(OP), b"not json")


@pytest.mark.parametrize("code", ["shutdown", "lease_lost", "deadline", "parent"])
def test_a_cancel_on_the_wire_never_carries_a_hand_back_reason(code):
    """F10: `shutdown`/`lease_lost` are a worker's own reasons; `deadline`/`parent` the orchestrator's,
    which it publishes as CancelRequested on its own subject: on a cancel subject only `user` decodes."""
    body = json.dumps({"type": "CancelOperation", "op_id": OP, "reason_code": code}).encode()
    with pytest.raises(InvalidField) as err:
        decode_event_on(subjects.cancel(OP), body)
    assert err.value.field == "reason_code" and err.value.problem.startswith(f"{code!r} is not one of")
    assert err.value.problem == f"{code!r} is not one of user"


@pytest.mark.parametrize(("field", "value"), [("reason", "x" * 2001), ("requested_by", "x" * 513),
                                              ("actor", "x" * 513)])
def test_a_cancel_is_bounded(field, value):
    body = json.dumps({"type": "CancelOperation", "op_id": OP, field: value}).encode()
    with pytest.raises(InvalidField) as err:
        decode_event_on(subjects.cancel(OP), body)
    assert err.value.field == field
