"""The frame protocol between TrainingProcess (the parent) and the training child, defined once.

Down the socket (the parent's `Connection.send`, one pickle: the child trusts its parent) go
`JobMessage` and `ExitMessage`. Up the socket go frames: one tag byte, then a body. The tags and every
body's layout live here and nowhere else:

- READY: `Ready` (msgpack) once the child has imported torch;
- PROGRESS: the send time (a little-endian double of time.time(), comparable across processes), then
  the `ProgressState` (msgpack);
- CHECKPOINT: the epoch (little-endian int64), then the checkpoint bytes;
- DONE: the `TrainingOutcome` (msgpack);
- ERROR: an `ErrorFrame` (msgpack), carrying everything the parent needs to raise the error the
  child raised: its kind, message, hint and `code` (OperationFailed.error_code), and for a cancel
  where it stopped, its reason and reason_code.

The cancel word (shared memory, not the socket) holds the sequence number of the job to cancel, in
the same int64 layout as an epoch. Nothing here imports torch: the parent never does.
"""

from __future__ import annotations

import mmap
import struct
import time
from typing import Any, Literal

import msgspec

from events.messages import CancelReason, ProgressState
from ktrdr.errors import DataError, KtrdrError, OperationCancelledError, StrategyError, ValidationError
from ktrdr.training.job import CancelFlag, TrainingJob, TrainingOutcome

# Frame tags (child -> parent): the first byte of every frame.
READY, PROGRESS, CHECKPOINT, DONE, ERROR = b"R", b"P", b"C", b"D", b"E"
TAGS = frozenset((READY, PROGRESS, CHECKPOINT, DONE, ERROR))

STAMP = struct.Struct("<d")  # a progress frame's send time
INT64 = struct.Struct("<q")  # a checkpoint's epoch; the cancel word's job sequence number
CANCEL_WORD_SIZE = INT64.size

ErrorKind = Literal["cancelled", "strategy", "data", "validation", "error"]


class Ready(msgspec.Struct, frozen=True, kw_only=True):
    """The child's first frame: it has imported the training stack and serves jobs now."""

    pid: int
    threads: int
    import_s: float


class ErrorFrame(msgspec.Struct, frozen=True, kw_only=True):
    """What ended a job in the child. `kind` picks the exception class the parent raises; `code` is
    the child's exception's own code (a DataError subclass keeps its `checkpoint_refused`)."""

    kind: ErrorKind = "error"
    message: str = "training failed"
    code: str = KtrdrError.code
    hint: str | None = None
    # a cancel: where the work stopped, and why
    where: str = ""
    reason: str = ""
    reason_code: CancelReason = "user"
    # a strategy error: the file, the field path and the problem
    file: str = ""
    path: str = ""
    problem: str = ""


class JobMessage(msgspec.Struct, frozen=True, array_like=True):
    """One job for the child (parent -> child): its sequence number (the one the cancel word names),
    the TrainingJob as msgpack, the bars and the checkpoint to resume from."""

    seq: int
    job: bytes
    bars: dict[str, dict[str, Any]]
    resume: bytes | None = None
    trace: str | None = None  # the W3C traceparent of the worker's run span (ktrdr/tracing.py), while on

    @staticmethod
    def of(seq: int, job: TrainingJob, bars: dict[str, dict[str, Any]], resume: bytes | None,
           trace: str | None = None) -> JobMessage:
        return JobMessage(seq, msgspec.msgpack.encode(job), bars, resume, trace)

    def training_job(self) -> TrainingJob:
        return msgspec.msgpack.decode(self.job, type=TrainingJob)


class ExitMessage(msgspec.Struct, frozen=True):
    """Ask the child to exit (parent -> child)."""


_ENCODER = msgspec.msgpack.Encoder()
_PROGRESS = msgspec.msgpack.Decoder(ProgressState)
_OUTCOME = msgspec.msgpack.Decoder(TrainingOutcome)
_ERROR = msgspec.msgpack.Decoder(ErrorFrame)
_READY = msgspec.msgpack.Decoder(Ready)


# -- child side: building frames ------------------------------------------------------------------
def ready_frame(pid: int, threads: int, import_s: float) -> bytes:
    return READY + _ENCODER.encode(Ready(pid=pid, threads=threads, import_s=import_s))


def progress_frame(state: ProgressState, sent: float | None = None) -> bytes:
    return PROGRESS + STAMP.pack(time.time() if sent is None else sent) + _ENCODER.encode(state)


def checkpoint_frame(epoch: int, data: bytes) -> bytes:
    return CHECKPOINT + INT64.pack(epoch) + data


def done_frame(outcome: TrainingOutcome) -> bytes:
    return DONE + _ENCODER.encode(outcome)


def error_of(exc: BaseException) -> ErrorFrame:
    """The ErrorFrame for an exception raised in the child; an unexpected one says its type."""
    if isinstance(exc, OperationCancelledError):
        return ErrorFrame(kind="cancelled", message=exc.message, code=exc.code, hint=exc.hint, where=exc.where,
                          reason=exc.reason, reason_code=exc.reason_code)  # type: ignore[arg-type]
    if isinstance(exc, StrategyError):
        return ErrorFrame(kind="strategy", message=exc.message, code=exc.code, hint=exc.hint, file=exc.file,
                          path=exc.path, problem=exc.problem)
    if isinstance(exc, KtrdrError):
        kind: ErrorKind = "data" if isinstance(exc, DataError) else \
            "validation" if isinstance(exc, ValidationError) else "error"
        return ErrorFrame(kind=kind, message=exc.message, code=exc.code, hint=exc.hint)
    return ErrorFrame(message=f"training failed: {type(exc).__name__}: {exc}"[:2000])


def error_frame(exc: BaseException) -> bytes:
    return ERROR + _ENCODER.encode(error_of(exc))


# -- parent side: reading frames ------------------------------------------------------------------
def split(frame: bytes) -> tuple[bytes, memoryview]:
    """(tag, body) of a frame, without copying the body."""
    return frame[:1], memoryview(frame)[1:]


def read_ready(body: memoryview) -> Ready:
    return _READY.decode(body)


def read_progress(body: memoryview) -> tuple[float, ProgressState]:
    """(send time, state) of a PROGRESS body."""
    (sent,) = STAMP.unpack_from(body)
    return sent, _PROGRESS.decode(body[STAMP.size :])


def read_checkpoint(body: memoryview) -> tuple[int, bytes]:
    (epoch,) = INT64.unpack_from(body)
    return epoch, bytes(body[INT64.size :])


def read_outcome(body: memoryview) -> TrainingOutcome:
    return _OUTCOME.decode(body)


def read_error(body: memoryview) -> ErrorFrame:
    return _ERROR.decode(body)


_KINDS: dict[str, type[KtrdrError]] = {"data": DataError, "validation": ValidationError, "error": KtrdrError}


def error_from(frame: ErrorFrame, cancel: CancelFlag | None = None) -> KtrdrError:
    """The exception to raise in the parent for the child's ErrorFrame, with nothing dropped.

    For a cancel, the parent's token (when it is cancelled) gives the reason and reason_code: the
    child's flag only knows that a cancel came, not who asked or why."""
    if frame.kind == "cancelled":
        reason, code = frame.reason or "cancel requested", frame.reason_code
        if cancel is not None and cancel.is_cancelled:
            reason = cancel.reason or reason
            code = getattr(cancel, "reason_code", code)
        return OperationCancelledError(frame.where, reason, code)
    if frame.kind == "strategy":
        err: KtrdrError = StrategyError(frame.file, frame.path, frame.problem)
    else:
        err = _KINDS[frame.kind](frame.message, hint=frame.hint)
    if frame.code != type(err).code:
        err.code = frame.code  # a subclass the parent does not rebuild keeps its own code
    return err


def cancel_word_value(seq: int) -> bytes:
    """The cancel word's bytes that cancel job `seq`."""
    return INT64.pack(seq)


def cancelled_seq(word: bytes | memoryview | mmap.mmap) -> int:
    """The job sequence number the cancel word names (0: none yet)."""
    return int(INT64.unpack_from(word)[0])
