"""The operation as readers see it: one typed view, its status and its reason codes.

An `OperationView` is what folding an operation's events yields (ktrdr.ops.fold); the CLI, the web
page, the orchestrator and the workers all read operations through it. Its status and cancel reasons
are closed sets (`Literal`s); error codes are open (every KtrdrError names its own) but the known
ones are listed here, so a client can branch on them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

import msgspec

from events import roles
from events.messages import CancelReason, Context, ProgressState

Status = Literal["unknown", "queued", "running", "completed", "failed", "cancelled", "rejected"]
TerminalStatus = Literal["completed", "failed", "cancelled", "rejected"]
TERMINAL: tuple[TerminalStatus, ...] = get_args(TerminalStatus)

# The error codes an operation can end with today: KtrdrError.code values (ktrdr/errors.py) and the
# verdicts of ktrdr.ops.verdicts. Open-ended on the wire (a new error class brings its own), so the
# view keeps `str`; constructors that produce one of these say which.
KnownErrorCode = Literal[
    "error", "validation", "invalid_strategy", "data", "cancelled", "ib", "unknown_symbol", "no_data", "pacing",
    "disconnected", "internal", "malformed", "worker_lost", "no_worker", "child_failed", "disk_full",
    "nats_unavailable",
]
KNOWN_ERROR_CODES: tuple[str, ...] = get_args(KnownErrorCode)

ORCHESTRATOR_PREFIX = roles.actor_id_prefix(roles.ORCHESTRATOR)
MAX_NOTES = 20


def is_orchestrator(actor: str) -> bool:
    return actor.startswith(ORCHESTRATOR_PREFIX)


class OperationView(msgspec.Struct, kw_only=True, dict=True):
    """(dict=True: a reader keeps the holder proof's chain state on the view, ktrdr.ops.reader; an
    attribute outside the declared fields is never encoded.)"""

    op_id: str = ""
    domain: str = ""
    op_type: str = ""
    description: str = ""
    status: Status = "unknown"
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
    error_code: str | None = None  # one of KNOWN_ERROR_CODES for everything KTRDR itself raises
    where: str | None = None
    reason: str | None = None  # why it was cancelled
    reason_code: CancelReason | None = None
    worker: str | None = None  # the holder: the actor running its latest attempt
    worker_key: str | None = None  # its public key (from the grant): its events count only signed by it
    attempts: int = 0
    cancel_requested: bool = False
    cancel_reason: str | None = None
    cancel_reason_code: CancelReason | None = None
    command: dict[str, Any] | None = None
    parent_op_id: str | None = None
    schedule_name: str | None = None  # the schedule whose firing made it (`ktrdr schedule`)
    retry_of: str | None = None  # the failed or cancelled operation it retries (`ktrdr ops retry`)
    retried_by: str | None = None  # the operation that retries it
    next_attempt_at: datetime | None = None  # a retryable failure's next attempt (ktrdr.ops.retries), while it waits
    children: list[str] = msgspec.field(default_factory=list)
    deadline: datetime | None = None
    pool: str | None = None
    priority: str | None = None  # high, normal or low (ktrdr.ops.intake.fix_priority); None: normal
    events: int = 0
    errors: list[str] = msgspec.field(default_factory=list)
    # The (attempt, seq) of the holder's newest progress applied: progress is ordered by it, so a
    # progress sent again late is ignored and a new attempt's (numbered by its own worker) is not.
    progress_attempt: int = 0
    last_progress_seq: int = 0
    dropped: int = 0  # messages on its subjects that were not its events (a body disagreeing with its subject)
    epoch: int = 0  # the newest orchestrator leader epoch that acted on it (older ones' events are ignored)
    unproven: int = 0  # held events no signature of the holder's key vouched for (forged, or a stranger's)

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


def apply_progress(view: OperationView, p: ProgressState) -> None:
    view.percentage = p.percentage
    view.message = p.message
    view.phase = p.phase
    view.current_step, view.total_steps = p.current_step, p.total_steps
    view.items_processed, view.items_total = p.items_processed, p.items_total
    view.next_attempt_at = p.next_attempt_at
    if p.context is not None:
        view.context = p.context
