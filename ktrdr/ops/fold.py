"""The fold: an operation's state is the fold of its events, so there is no table to lose on restart.

`fold` is the one place that decides what an operation looks like; the CLI's live view, `ops replay`,
`ops list`, the web page, the orchestrator and the workers' own checks all go through it, so live and
replayed views are the same. Rules:
- once an operation is terminal no later event changes that;
- progress and terminal events count only from the actor that holds the operation (the worker of
  its latest attempt, from its `started` event) or from an orchestrator; anything else is ignored
  and noted in `errors` (a stranger cannot finish someone else's operation). What proves it is not
  this fold but the reader in front of it (ktrdr.ops.reader.admit): a worker's event counts only
  under a signature of the key its grant names, the orchestrator's come on its own subject tokens;
- the holder's progress is ordered by (attempt, seq): a late copy is ignored, a new attempt's is not;
- a cancelled or failed operation keeps the last progress it reported;
- an orchestrator's event counts only from the newest leader epoch that acted on the operation: once
  an event of epoch N is folded, an orchestrator event of an older epoch (a leader that was paused or
  cut off while a standby took over, actors/_orch_leader.py) is ignored and noted.
Events come from ktrdr.ops.reader / events.codec.decode_event_on: only what its subject proves.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from events.messages import (
    ActorError,
    AnyEvent,
    CancelOperation,
    CancelRequested,
    OperationCancelled,
    OperationCompleted,
    OperationCreated,
    OperationFailed,
    OperationProgress,
    OperationRejected,
    OperationRetried,
    OperationStarted,
    OrchestratorCancelled,
    OrchestratorCompleted,
    OrchestratorError,
    OrchestratorFailed,
    OrchestratorProgress,
)
from ktrdr.ops.view import MAX_NOTES, ORCHESTRATOR_PREFIX, TERMINAL, OperationView, apply_progress, is_orchestrator


def _note(view: OperationView, text: str) -> None:
    if len(view.errors) < MAX_NOTES:
        view.errors.append(text)


def _believed(view: OperationView, actor: str) -> bool:
    """Progress and verdicts count from the holder, an orchestrator, or (before anyone holds the
    operation, e.g. events stored by an older version) anyone."""
    return view.worker is None or actor == view.worker or is_orchestrator(actor)


def fold(view: OperationView, ev: AnyEvent) -> OperationView:
    """Apply one event to a view (in place) and return it.

    It runs once per event of every replay (a million for a long training), so it is written for
    speed: exact-type set lookups instead of isinstance over a union, the holder rule inlined."""
    view.events += 1
    if not view.op_id:
        view.op_id = ev.op_id
    kind = type(ev)
    if kind is OperationRetried:  # it comes after the operation ended, and changes no status
        if is_orchestrator(ev.actor) and view.retried_by is None:
            view.retried_by = ev.retried_by  # type: ignore[union-attr]
        return view
    if view.status in _TERMINAL_SET:
        return view  # terminal is final: later events change nothing
    if kind in _HELD and view.worker is not None and ev.actor != view.worker \
            and not ev.actor.startswith(ORCHESTRATOR_PREFIX):  # _believed(view, ev.actor), inlined
        _note(view, f"ignored {kind.__name__} from {ev.actor or '?'}, which does not hold the operation")
        return view
    if kind in _EPOCHED:
        epoch: int = ev.epoch  # type: ignore[union-attr]
        if epoch < view.epoch:
            _note(view, f"ignored {kind.__name__} from {ev.actor or '?'} of leader epoch {epoch}: "
                        f"an orchestrator of epoch {view.epoch} took over")
            return view
        view.epoch = epoch
    view.updated_at = ev.ts
    _FOLDS[kind](view, ev)
    return view


def _progress(view: OperationView, ev: OperationProgress) -> None:
    if ev.seq and ev.actor == view.worker:
        # Ordered by (attempt, seq): a progress sent again late (after a leader election) is older and
        # the view does not go back; a newer attempt's counts whatever its worker's seq (issue 18, F7).
        attempt = ev.attempt or view.progress_attempt  # 0: stored by an older version, the running attempt
        if attempt < view.progress_attempt or (attempt == view.progress_attempt and ev.seq < view.last_progress_seq):
            return
        view.progress_attempt, view.last_progress_seq = attempt, ev.seq
    if view.status != "running" and view.status in ("unknown", "queued") and not is_orchestrator(ev.actor):
        view.status = "running"
    apply_progress(view, ev.progress)


def _created(view: OperationView, ev: OperationCreated) -> None:
    view.domain, view.op_type, view.description = ev.domain, ev.op_type, ev.description
    view.created_at = ev.ts
    view.command = msgspec.to_builtins(ev.command)
    view.parent_op_id = ev.parent_op_id
    view.schedule_name = ev.schedule_name
    view.retry_of = ev.retry_of
    view.children = list(ev.children)
    view.deadline = getattr(ev.command, "deadline", None)
    view.pool = getattr(ev.command, "pool", None)
    view.priority = getattr(ev.command, "priority", None)
    if view.status == "unknown":
        view.status = "queued"


def _started(view: OperationView, ev: OperationStarted) -> None:
    if ev.attempt < view.attempts:
        _note(view, f"ignored a start of attempt {ev.attempt} from {ev.actor}: attempt {view.attempts} runs")
        return
    view.status = "running"
    view.next_attempt_at = None  # the attempt a retry waited for has started
    view.started_at = view.started_at or ev.ts
    view.worker = ev.worker or ev.actor
    view.worker_key = ev.key or None
    if ev.attempt > view.progress_attempt:  # a new attempt: its worker's progress starts a new order
        view.progress_attempt, view.last_progress_seq = ev.attempt, 0
    view.attempts = ev.attempt
    if ev.message:
        view.message = ev.message


def _cancel(view: OperationView, ev: CancelRequested | CancelOperation) -> None:
    if not view.cancel_requested:
        view.cancel_requested = True
        view.cancel_reason, view.cancel_reason_code = ev.reason, ev.reason_code


def _error(view: OperationView, ev: ActorError) -> None:
    _note(view, ev.error)


def _completed(view: OperationView, ev: OperationCompleted) -> None:
    view.status, view.finished_at, view.result = "completed", ev.ts, ev.result
    view.percentage = 100.0
    if ev.message:
        view.message = ev.message


def _failed(view: OperationView, ev: OperationFailed) -> None:
    view.status, view.finished_at = "failed", ev.ts
    view.error, view.error_code, view.where = ev.error, ev.error_code, ev.where or None


def _cancelled(view: OperationView, ev: OperationCancelled) -> None:
    view.status, view.finished_at, view.where = "cancelled", ev.ts, ev.where or None
    view.reason, view.reason_code = ev.reason, ev.reason_code
    view.message = ev.message or view.message


def _rejected(view: OperationView, ev: OperationRejected) -> None:
    view.status, view.finished_at = "rejected", ev.ts
    view.error, view.error_code = ev.reason, ev.error_code


_TERMINAL_SET = frozenset(TERMINAL)
# The events that count only from the holder or an orchestrator (see _believed).
_HELD = frozenset({OperationProgress, OperationCompleted, OperationFailed, OperationCancelled, ActorError})

# The events only an orchestrator publishes: each carries its leader epoch.
_EPOCHED = frozenset({OperationCreated, OperationStarted, OperationRejected, CancelRequested, OrchestratorProgress,
                      OrchestratorCompleted, OrchestratorFailed, OrchestratorCancelled, OrchestratorError})

_FOLDS: dict[type, Any] = {
    OperationProgress: _progress,
    OperationCreated: _created,
    OperationStarted: _started,
    CancelRequested: _cancel,
    CancelOperation: _cancel,
    ActorError: _error,
    OperationCompleted: _completed,
    OperationFailed: _failed,
    OperationCancelled: _cancelled,
    OperationRejected: _rejected,
    OrchestratorProgress: _progress,
    OrchestratorCompleted: _completed,
    OrchestratorFailed: _failed,
    OrchestratorCancelled: _cancelled,
    OrchestratorError: _error,
}


def fold_all(events: Iterable[AnyEvent], view: OperationView | None = None) -> OperationView:
    view = view or OperationView()
    for ev in events:
        fold(view, ev)
    return view
