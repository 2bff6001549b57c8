"""An operation's state is the fold of its events: no table to lose on restart.

`fold` is the one place that decides what an operation looks like; the CLI's live view, `ops replay`,
`ops list`, the web page, the orchestrator and the workers' own checks all go through it, so live and
replayed views are the same. Rules:
- once an operation is terminal no later event changes that;
- progress and terminal events count only from the actor that holds the operation (the worker of
  its latest attempt, from its `started` event) or from an orchestrator; anything else is ignored
  and noted in `errors` (a stranger cannot finish someone else's operation);
- a cancelled or failed operation keeps the last progress it reported.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import msgspec

from events.messages import (
    ActorError,
    AnyEvent,
    CancelOperation,
    CancelRequested,
    Context,
    OperationCancelled,
    OperationCompleted,
    OperationCreated,
    OperationFailed,
    OperationProgress,
    OperationRejected,
    OperationStarted,
    ProgressState,
)

TERMINAL = ("completed", "failed", "cancelled", "rejected")
ORCHESTRATOR_PREFIX = "orchestrator-"
MAX_NOTES = 20


def is_orchestrator(actor: str) -> bool:
    return actor.startswith(ORCHESTRATOR_PREFIX)


class OperationView(msgspec.Struct, kw_only=True):
    op_id: str = ""
    domain: str = ""
    op_type: str = ""
    description: str = ""
    status: str = "unknown"  # queued, running, completed, failed, cancelled, rejected
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None
    percentage: float = 0.0
    message: str = ""
    phase: str = ""
    current_step: int = 0
    total_steps: int = 0
    items_processed: int = 0
    items_total: int = 0
    context: Context | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    error_code: str | None = None
    where: str | None = None
    reason: str | None = None  # why it was cancelled
    reason_code: str | None = None  # user, deadline, shutdown, parent
    worker: str | None = None  # the holder: the actor running its latest attempt
    attempts: int = 0
    cancel_requested: bool = False
    cancel_reason: str | None = None
    cancel_reason_code: str | None = None
    command: dict[str, Any] | None = None
    parent_op_id: str | None = None
    children: list[str] = msgspec.field(default_factory=list)
    deadline: datetime | None = None
    pool: str | None = None
    events: int = 0
    errors: list[str] = msgspec.field(default_factory=list)
    last_progress_seq: int = 0  # of the holder: a progress event sent again after a failover is older

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def elapsed_s(self) -> float | None:
        if self.started_at is None and self.created_at is None:
            return None
        start = self.started_at or self.created_at
        end = self.finished_at or self.updated_at
        return (end - start).total_seconds() if start and end else None


def _note(view: OperationView, text: str) -> None:
    if len(view.errors) < MAX_NOTES:
        view.errors.append(text)


def _believed(view: OperationView, actor: str) -> bool:
    """Progress and verdicts count from the holder, an orchestrator, or (before anyone holds the
    operation, e.g. events stored by an older version) anyone."""
    return view.worker is None or actor == view.worker or is_orchestrator(actor)


def apply_progress(view: OperationView, p: ProgressState) -> None:
    view.percentage = p.percentage
    view.message = p.message
    view.phase = p.phase
    view.current_step, view.total_steps = p.current_step, p.total_steps
    view.items_processed, view.items_total = p.items_processed, p.items_total
    if p.context is not None:
        view.context = p.context


def fold(view: OperationView, ev: AnyEvent) -> OperationView:  # type: ignore[valid-type]
    """Apply one event to a view (in place) and return it.

    It runs once per event of every replay (a million for a long training), so it is written for
    speed: exact-type set lookups instead of isinstance over a union, the holder rule inlined."""
    view.events += 1
    if not view.op_id:
        view.op_id = ev.op_id
    if view.status in _TERMINAL_SET:
        return view  # terminal is final: later events change nothing
    kind = type(ev)
    if kind in _HELD and view.worker is not None and ev.actor != view.worker \
            and not ev.actor.startswith(ORCHESTRATOR_PREFIX):  # _believed(view, ev.actor), inlined
        _note(view, f"ignored {kind.__name__} from {ev.actor or '?'}, which does not hold the operation")
        return view
    view.updated_at = ev.ts
    _FOLDS[kind](view, ev)
    return view


def _progress(view: OperationView, ev: OperationProgress) -> None:
    if ev.seq and ev.actor == view.worker:
        if ev.seq < view.last_progress_seq:
            return  # stored late (sent again after a leader election): the view does not go back
        view.last_progress_seq = ev.seq
    if view.status != "running" and view.status in ("unknown", "queued") and not is_orchestrator(ev.actor):
        view.status = "running"
    apply_progress(view, ev.progress)


def _created(view: OperationView, ev: OperationCreated) -> None:
    view.domain, view.op_type, view.description = ev.domain, ev.op_type, ev.description
    view.created_at = ev.ts
    view.command = msgspec.to_builtins(ev.command)
    view.parent_op_id = ev.parent_op_id
    view.children = list(ev.children)
    view.deadline = getattr(ev.command, "deadline", None)
    view.pool = getattr(ev.command, "pool", None)
    if view.status == "unknown":
        view.status = "queued"


def _started(view: OperationView, ev: OperationStarted) -> None:
    if ev.attempt < view.attempts:
        _note(view, f"ignored a start of attempt {ev.attempt} from {ev.actor}: attempt {view.attempts} runs")
        return
    view.status = "running"
    view.started_at = view.started_at or ev.ts
    view.worker = ev.worker or ev.actor
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
}


def fold_all(events: Iterable[AnyEvent], view: OperationView | None = None) -> OperationView:  # type: ignore[valid-type]
    view = view or OperationView()
    for ev in events:
        fold(view, ev)
    return view
