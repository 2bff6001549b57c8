"""An operation's state is the fold of its events: no table to lose on restart.

`fold` is the one place that decides what an operation looks like; the CLI's live view, `ops replay`,
`ops list` and the actors' own checks all go through it, so live and replayed views are the same.
Once an operation is terminal no later event changes that.
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
)

TERMINAL = ("completed", "failed", "cancelled", "rejected")


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
    worker: str | None = None
    attempts: int = 0
    cancel_requested: bool = False
    command: dict[str, Any] | None = None
    events: int = 0
    errors: list[str] = msgspec.field(default_factory=list)

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


def fold(view: OperationView, ev: AnyEvent) -> OperationView:
    """Apply one event to a view (in place) and return it."""
    view.events += 1
    if not view.op_id:
        view.op_id = ev.op_id
    if view.terminal:
        return view  # terminal is final: later events change nothing
    view.updated_at = ev.ts
    if isinstance(ev, OperationProgress):
        p = ev.progress
        if view.status in ("unknown", "queued"):
            view.status = "running"
        view.percentage = p.percentage
        view.message = p.message
        view.phase = p.phase
        view.current_step, view.total_steps = p.current_step, p.total_steps
        view.items_processed, view.items_total = p.items_processed, p.items_total
        if p.context is not None:
            view.context = p.context
    elif isinstance(ev, OperationCreated):
        view.domain, view.op_type, view.description = ev.domain, ev.op_type, ev.description
        view.created_at = ev.ts
        view.command = msgspec.to_builtins(ev.command)
        if view.status == "unknown":
            view.status = "queued"
    elif isinstance(ev, OperationStarted):
        view.status = "running"
        view.started_at = view.started_at or ev.ts
        view.worker = ev.worker
        view.attempts = max(view.attempts, ev.attempt)
        if ev.message:
            view.message = ev.message
    elif isinstance(ev, CancelRequested | CancelOperation):
        view.cancel_requested = True
    elif isinstance(ev, ActorError):
        view.errors.append(ev.error)
    elif isinstance(ev, OperationCompleted):
        view.status, view.finished_at, view.result = "completed", ev.ts, ev.result
        view.percentage = 100.0
        if ev.message:
            view.message = ev.message
    elif isinstance(ev, OperationFailed):
        view.status, view.finished_at = "failed", ev.ts
        view.error, view.error_code, view.where = ev.error, ev.error_code, ev.where or None
    elif isinstance(ev, OperationCancelled):
        view.status, view.finished_at, view.where = "cancelled", ev.ts, ev.where or None
        view.message = ev.message or view.message
    elif isinstance(ev, OperationRejected):
        view.status, view.finished_at = "rejected", ev.ts
        view.error, view.error_code = ev.reason, ev.error_code
    return view


def fold_all(events: Iterable[AnyEvent], view: OperationView | None = None) -> OperationView:
    view = view or OperationView()
    for ev in events:
        fold(view, ev)
    return view
