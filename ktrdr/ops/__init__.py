"""The operation's typed home: pure code that says what an operation is and what happens to it.

- view: `OperationView` with its `Status` and reason codes;
- fold: the one fold of events into a view (`fold`, `fold_all`);
- verdicts: one constructor per verdict (cancelled before it started, worker lost, no worker, ...);
- workflows: the workflow decisions (plan, advance, the parent's throttled progress);
- supervision: the supervision decisions (deadline, silent worker, empty pool, reconnect grace);
- intake: what a command on arrival, a duplicate, or a cancel of a queued operation means;
- reader (imported as ktrdr.ops.reader: it reads OPS over NATS): views rebuilt from the stored events.
Actors apply what these decide; nothing here talks to NATS except the reader.
"""

from __future__ import annotations

from ktrdr.ops.fold import fold, fold_all
from ktrdr.ops.view import (
    KNOWN_ERROR_CODES,
    ORCHESTRATOR_PREFIX,
    TERMINAL,
    KnownErrorCode,
    OperationView,
    Status,
    TerminalStatus,
    apply_progress,
    is_orchestrator,
)

__all__ = [
    "KNOWN_ERROR_CODES",
    "ORCHESTRATOR_PREFIX",
    "TERMINAL",
    "KnownErrorCode",
    "OperationView",
    "Status",
    "TerminalStatus",
    "apply_progress",
    "fold",
    "fold_all",
    "is_orchestrator",
]
