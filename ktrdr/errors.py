"""The one exception hierarchy. Every message says what went wrong and, where it can, what to do.

`code` is a stable machine-readable string carried into `OperationFailed.error_code`, so clients can
branch on it without parsing text.
"""

from __future__ import annotations


class KtrdrError(Exception):
    """Base of every error KTRDR raises on purpose."""

    code = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ValidationError(KtrdrError):
    """Bad input from a user: a command, a file, a date. Exit code 2 in the CLI."""

    code = "validation"


class StrategyError(ValidationError):
    """An invalid strategy file; the message names the file, the field path and the problem."""

    code = "invalid_strategy"

    def __init__(self, file: str, path: str, problem: str) -> None:
        super().__init__(f"{file}: {path}: {problem}")
        self.file = file
        self.path = path
        self.problem = problem


class DataError(KtrdrError):
    """Stored or fetched data is unusable."""

    code = "data"


class DiskFullError(KtrdrError):
    """A write failed because a disk is full: the message names the disk (ktrdr.disk builds it)."""

    code = "disk_full"

    def __init__(self, message: str, *, path: str = "", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.path = path


class OperationCancelledError(KtrdrError):
    """Raised by CancellationToken.raise_if_cancelled(); `where` says where the work stopped."""

    code = "cancelled"

    def __init__(self, where: str = "", reason: str = "cancel requested", reason_code: str = "user") -> None:
        super().__init__(f"cancelled{' at ' + where if where else ''}: {reason}")
        self.where = where
        self.reason = reason
        self.reason_code = reason_code


# --- IB errors: typed, so callers never parse strings --------------------------------------------
class IbError(KtrdrError):
    code = "ib"

    def __init__(self, message: str, *, ib_code: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.ib_code = ib_code


class UnknownSymbolError(IbError):
    code = "unknown_symbol"


class NoDataError(IbError):
    code = "no_data"


class PacingError(IbError):
    code = "pacing"


class DisconnectedError(IbError):
    code = "disconnected"


class NatsUnavailableError(KtrdrError):
    """A step of the work could not reach NATS: a JetStream request timed out or found no responder,
    or the connection was closed or reconnecting (ktrdr.transport.connection.unavailable). Retryable:
    the server (or the cluster's quorum) is expected back."""

    code = "nats_unavailable"
