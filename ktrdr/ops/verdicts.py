"""One constructor per verdict: every event that ends an operation, or asks for it to end, is built
here and nowhere else, so its words, codes and `where` are the same whoever gives it.

Pure: each function takes what the verdict is about and returns the event (or the cancel request);
publishing it is the caller's business.
"""

from __future__ import annotations

from typing import Any

from events.bounds import MAX_REASON, RETRYABLE_CODES
from events.messages import (
    CancelReason,
    CancelRequested,
    Event,
    OperationCancelled,
    OperationCompleted,
    OperationFailed,
    OperationRejected,
)
from ktrdr.ops.view import KnownErrorCode, OperationView

QUEUED_WHERE = "queued, before any worker started it"
MAX_FIELD = 200


# ---------------------------------------------------------------------------------------- cancelled
def cancelled_before_start(op_id: str, reason: str, code: CancelReason) -> OperationCancelled:
    """A cancel that reached the operation while it was still queued (the orchestrator's, or the
    worker's check before it starts): nothing ran."""
    return OperationCancelled(op_id=op_id, where=QUEUED_WHERE, reason=reason or "cancel requested",
                              reason_code=code, message="Operation cancelled before it started")


def cancelled_while_waiting(view: OperationView, reason: str, code: CancelReason) -> OperationCancelled:
    """A cancel that reached the operation between two attempts (its worker handed it back: a
    retryable failure waiting for the next attempt, or a worker stopping): attempt `view.attempts`
    had ended, the next one never starts."""
    return OperationCancelled(op_id=view.op_id, where=f"between attempts, after attempt {view.attempts}",
                              reason=reason or "cancel requested", reason_code=code,
                              message=f"Operation cancelled before attempt {view.attempts + 1} started")


def recorded_cancel(view: OperationView) -> OperationCancelled:
    """The cancel the view has recorded (`cancel_requested`), honoured before the operation started."""
    return cancelled_before_start(view.op_id, view.cancel_reason or "cancel requested",
                                  view.cancel_reason_code or "user")


def cancelled_at(op_id: str, where: str, reason: str, code: CancelReason, message: str) -> OperationCancelled:
    """A worker's cancel: its work stopped at `where`."""
    return OperationCancelled(op_id=op_id, where=where, reason=reason, reason_code=code, message=message)


# ---------------------------------------------------------------------------------- cancel requests
def deadline_cancel(op_id: str, allowed_s: float, requested_by: str) -> CancelRequested:
    """The orchestrator's request that ends an operation past its deadline (on its own subject)."""
    return CancelRequested(op_id=op_id, reason=f"deadline of {allowed_s:.0f} s passed", reason_code="deadline",
                           requested_by=requested_by)


def parent_cancel(child_op: str, parent: OperationView, requested_by: str) -> CancelRequested:
    """The orchestrator's request that stops a child because its workflow is ending (cancelled, or a
    sibling failed)."""
    reason = f"parent {parent.op_id} is ending: {parent.cancel_reason or 'a sibling failed'}"[:MAX_REASON]
    return CancelRequested(op_id=child_op, reason=reason, reason_code="parent", requested_by=requested_by)


# ------------------------------------------------------------------------------------------- failed
def worker_lost(op_id: str, worker: str | None, silent_s: float, role: str, *, replica_alive: bool,
                orphan_timeout_s: float) -> OperationFailed:
    """The worker running the operation went silent: nobody can take it over (no live replica), or
    no replica did within the orphan timeout."""
    if not replica_alive:
        reason = (f"worker {worker or '?'} stopped heartbeating {silent_s:.0f} s ago and no {role} actor "
                  f"is alive to take the operation over; start one and run the operation again")
    else:
        reason = (f"worker {worker or '?'} stopped heartbeating {silent_s:.0f} s ago and no {role} "
                  f"picked the operation up again within {orphan_timeout_s:g} s")
    return OperationFailed(op_id=op_id, error=reason, error_code="worker_lost")


def no_worker(op_id: str, role: str, pool: str, orphan_timeout_s: float, waited_s: float) -> OperationFailed:
    """Queued too long with nobody alive in its pool."""
    return OperationFailed(
        op_id=op_id, error=f"no {role} in pool {pool} came up within {orphan_timeout_s:g} s "
                           f"(waited {waited_s:.0f} s); start one (KTRDR_POOLS={pool}) and run it again",
        error_code="no_worker")


def cannot_resume(op_id: str, problem: object) -> OperationFailed:
    """A workflow whose plan cannot be made again from its stored command (after a restart)."""
    return OperationFailed(op_id=op_id, error=f"cannot resume the workflow: {problem}", error_code="internal")


def refused(op_id: str, role: str, problem: object) -> OperationFailed:
    """A worker's own check of the recorded command failed."""
    return OperationFailed(op_id=op_id, error=f"refused by {role}: {problem}", error_code="validation")


def failed(op_id: str, error: str, code: str) -> OperationFailed:
    """The work raised a KtrdrError: its message and code, as they are, and whether a retry policy
    retries such a failure (ktrdr.ops.retries: this one is final, its attempts spent or none left)."""
    return OperationFailed(op_id=op_id, error=error, error_code=code, retryable=code in RETRYABLE_CODES)


def internal_error(op_id: str, role: str, exc: BaseException) -> OperationFailed:
    return OperationFailed(op_id=op_id, error=f"internal error in {role}: {type(exc).__name__}: {exc}",
                           error_code="internal")


# ----------------------------------------------------------------------------------------- rejected
def rejected(op_id: str, reason: str, code: KnownErrorCode | str, field: str | None = None) -> OperationRejected:
    """A command refused at intake; a long reason is cut (a 1 MB field must not become a 1 MB event)."""
    if len(reason) > MAX_REASON:
        reason = reason[:MAX_REASON] + " ..."
    return OperationRejected(op_id=op_id, reason=reason, error_code=code, field=(field or "")[:MAX_FIELD] or None)


# ---------------------------------------------------------------------------------------- completed
def completed(op_id: str, result: dict[str, Any] | None, message: str = "") -> OperationCompleted:
    return OperationCompleted(op_id=op_id, result=result or {}, message=message)


# ---------------------------------------------------------------------------------------- workflows
def _label(view: OperationView) -> str:
    return f"{view.op_id} ({view.description})" if view.description else view.op_id


def workflow_completed(parent_id: str, result: dict[str, Any] | None, operations: int) -> OperationCompleted:
    return completed(parent_id, result, f"Workflow completed: {operations} operations")


def child_ended(parent: OperationView, child: OperationView) -> Event:
    """A child that did not complete ends its parent the same way, with the child's reason."""
    if child.status == "cancelled":
        return OperationCancelled(
            op_id=parent.op_id, where=f"child {_label(child)}", reason=child.reason or "a child was cancelled",
            reason_code="user" if child.reason_code in (None, "parent") else child.reason_code,  # type: ignore[arg-type]
            message=f"Workflow cancelled: child {_label(child)} was cancelled"
                    f"{' at ' + child.where if child.where else ''}")
    return OperationFailed(op_id=parent.op_id, error=f"child {_label(child)} {child.status}: {child.error}",
                           error_code=child.error_code or "child_failed", where=f"child {child.op_id}")


def workflow_cancelled(parent: OperationView, where: str) -> OperationCancelled:
    """A workflow cancelled as asked, once none of its children runs any more."""
    return OperationCancelled(
        op_id=parent.op_id, where=where, reason=parent.cancel_reason or "cancel requested",
        reason_code=parent.cancel_reason_code or "user", message=f"Workflow cancelled at {where}")
