"""The parent<->child frame protocol (ktrdr/training/frames.py) without a child: every frame reads
back what was written, and an error frame rebuilds the exception the child raised with nothing
dropped (its class, code, hint, and for a cancel where, reason and reason_code)."""

from __future__ import annotations

import pickle

import pytest

from events.messages import ProgressState, TrainingContext
from ktrdr.cancellation import CancellationToken
from ktrdr.errors import DataError, KtrdrError, OperationCancelledError, StrategyError, ValidationError
from ktrdr.training import frames
from ktrdr.training.checkpoint import CheckpointRefused
from ktrdr.training.job import TrainingJob, TrainingOutcome


def roundtrip_error(exc: BaseException, cancel: CancellationToken | None = None) -> KtrdrError:
    tag, body = frames.split(frames.error_frame(exc))
    assert tag == frames.ERROR
    return frames.error_from(frames.read_error(body), cancel)


def test_progress_checkpoint_done_and_ready_frames_read_back() -> None:
    state = ProgressState(percentage=12.5, message="epoch 1", context=TrainingContext(epoch=1, batch=3))
    tag, body = frames.split(frames.progress_frame(state, sent=1234.5))
    assert tag == frames.PROGRESS and frames.read_progress(body) == (1234.5, state)
    tag, body = frames.split(frames.checkpoint_frame(7, b"\x00weights"))
    assert tag == frames.CHECKPOINT and frames.read_checkpoint(body) == (7, b"\x00weights")
    outcome = TrainingOutcome(result={"a": 1}, artifacts={"model.pt": b"pt"})
    tag, body = frames.split(frames.done_frame(outcome))
    assert tag == frames.DONE and frames.read_outcome(body) == outcome
    tag, body = frames.split(frames.ready_frame(42, 1, 0.5))
    assert tag == frames.READY and frames.read_ready(body) == frames.Ready(pid=42, threads=1, import_s=0.5)
    assert {frames.PROGRESS, frames.CHECKPOINT, frames.DONE, frames.READY, frames.ERROR} == frames.TAGS


def test_a_job_message_survives_the_pickle_it_travels_as() -> None:
    job = TrainingJob(op_id="op-x", strategy_yaml="name: x")
    msg = pickle.loads(pickle.dumps(frames.JobMessage.of(3, job, {"AAPL": {"1h": [1, 2]}}, b"ckpt")))
    assert msg.seq == 3 and msg.training_job() == job and msg.bars == {"AAPL": {"1h": [1, 2]}}
    assert msg.resume == b"ckpt"
    assert isinstance(pickle.loads(pickle.dumps(frames.ExitMessage())), frames.ExitMessage)


def test_the_cancel_word_names_the_job_it_cancels() -> None:
    word = bytearray(frames.CANCEL_WORD_SIZE)
    assert frames.cancelled_seq(word) == 0
    word[:] = frames.cancel_word_value(9)
    assert frames.cancelled_seq(word) == 9


def test_a_cancel_keeps_where_reason_and_reason_code() -> None:
    err = roundtrip_error(OperationCancelledError("epoch 2, batch 3", "deadline of 5 s passed", "deadline"))
    assert isinstance(err, OperationCancelledError)
    assert (err.where, err.reason, err.reason_code) == ("epoch 2, batch 3", "deadline of 5 s passed", "deadline")


def test_the_parents_token_says_why_a_cancel_came() -> None:
    """The child's flag knows only that a cancel came ("cancel requested", "user"): the parent's
    tripped token has the real reason."""
    token = CancellationToken()
    token.cancel("parent cancelled", code="parent")
    err = roundtrip_error(OperationCancelledError("epoch 1, batch 1", "cancel requested"), token)
    assert isinstance(err, OperationCancelledError)
    assert (err.where, err.reason, err.reason_code) == ("epoch 1, batch 1", "parent cancelled", "parent")


@pytest.mark.parametrize("exc, cls, code", [
    (DataError("no 1h bars for MSFT", hint="load the data first"), DataError, "data"),
    (ValidationError("epochs must be between 1 and 100000"), ValidationError, "validation"),
    (CheckpointRefused("checkpoint refused: bad zip"), DataError, "checkpoint_refused"),
    (KtrdrError("something else", hint="try again"), KtrdrError, "error"),
])
def test_an_error_keeps_its_class_code_message_and_hint(exc: KtrdrError, cls: type[KtrdrError], code: str) -> None:
    err = roundtrip_error(exc)
    assert type(err) is cls and err.code == code and err.message == exc.message and err.hint == exc.hint


def test_a_strategy_error_keeps_file_path_and_problem() -> None:
    err = roundtrip_error(StrategyError("small.yaml", "model.training.optimizer", "unknown value 'lbfgs'"))
    assert isinstance(err, StrategyError) and err.code == "invalid_strategy"
    assert (err.file, err.path, err.problem) == ("small.yaml", "model.training.optimizer", "unknown value 'lbfgs'")


def test_an_unexpected_exception_says_its_type() -> None:
    err = roundtrip_error(ZeroDivisionError("division by zero"))
    assert type(err) is KtrdrError and err.code == "error"
    assert err.message == "training failed: ZeroDivisionError: division by zero"
