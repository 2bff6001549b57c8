"""Every message on the wire, declared once as msgspec Structs.

Each message has a `type` tag (msgspec tagged unions make the JSON self-describing) and a schema
version `v`. Events carry `op_id`, `ts` (UTC) and `actor` (the emitting actor's id). Commands carry the
operation id chosen by the client so it can watch `ops.<domain>.<op_id>.>` before anything happens
and so a retried command is deduplicated.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

SCHEMA_VERSION = 1


def utcnow() -> datetime:
    return datetime.now(UTC)


class Message(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=False):
    v: int = SCHEMA_VERSION


# --------------------------------------------------------------------------------------------------
# Typed progress contexts (GenericProgressState's "context", per domain)
# --------------------------------------------------------------------------------------------------
class DummyContext(msgspec.Struct, tag="dummy", tag_field="kind", kw_only=True):
    iteration: int = 0
    iterations: int = 0


class DataContext(msgspec.Struct, tag="data", tag_field="kind", kw_only=True):
    symbol: str = ""
    timeframe: str = ""
    mode: str = ""
    segment_index: int = 0  # 1-based index of the segment being / just fetched
    segment_count: int = 0
    bars_fetched: int = 0
    source: str = ""  # "ib" or "sim": simulated data is marked everywhere it appears
    waiting_s: float = 0.0  # >0 while waiting on IB pacing: visible state, not silence
    state: str = ""  # e.g. "fetching", "waiting for IB pacing", "merging"


class TrainingContext(msgspec.Struct, tag="training", tag_field="kind", kw_only=True):
    model_type: str = "mlp"
    strategy: str = ""
    symbols: list[str] = msgspec.field(default_factory=list)
    timeframes: list[str] = msgspec.field(default_factory=list)
    epoch: int = 0  # 1-based current epoch, 0 before training
    total_epochs: int = 0
    batch: int = 0  # 1-based batch within the epoch, 0 at epoch level
    total_batches: int = 0
    metrics: dict[str, float] = msgspec.field(default_factory=dict)
    device: str = ""
    gpu_name: str | None = None
    gpu_memory_gb: float | None = None
    resumed_from_epoch: int | None = None


Context = DummyContext | DataContext | TrainingContext


class ProgressState(msgspec.Struct, kw_only=True):
    """The seed's GenericProgressState fields."""

    percentage: float = 0.0
    message: str = ""
    current_step: int = 0
    total_steps: int = 0
    items_processed: int = 0
    items_total: int = 0
    phase: str = ""
    context: Context | None = None


# --------------------------------------------------------------------------------------------------
# Commands (cmd.<domain>.<verb>) — imperative names
# --------------------------------------------------------------------------------------------------
class Command(Message, kw_only=True):
    op_id: str
    ts: datetime = msgspec.field(default_factory=utcnow)
    requested_by: str = "cli"


class RunDummy(Command, tag="RunDummy", kw_only=True):
    iterations: int = 100
    interval_s: float = 2.0


class LoadData(Command, tag="LoadData", kw_only=True):
    symbol: str
    timeframe: str = "1h"
    mode: Literal["local", "tail", "backfill", "full"] = "tail"
    start: datetime | None = None
    end: datetime | None = None


class StartTraining(Command, tag="StartTraining", kw_only=True):
    strategy_path: str = ""
    strategy_yaml: str = ""  # the file's text, so a remote trainer needs no shared filesystem
    symbols: list[str] = msgspec.field(default_factory=list)
    timeframes: list[str] = msgspec.field(default_factory=list)
    start: datetime | None = None
    end: datetime | None = None
    epochs: int | None = None
    load_data: bool = True  # load missing bars through a data operation first


class CancelOperation(Message, tag="CancelOperation", kw_only=True):
    """Published on ops.<domain>.<op_id>.cancel; every actor subscribes."""

    op_id: str
    ts: datetime = msgspec.field(default_factory=utcnow)
    reason: str = "cancel requested"
    requested_by: str = "cli"


AnyCommand = RunDummy | LoadData | StartTraining


# --------------------------------------------------------------------------------------------------
# Work items (work.<domain>) — what the orchestrator routes to workers
# --------------------------------------------------------------------------------------------------
class WorkItem(Message, tag="WorkItem", kw_only=True):
    op_id: str
    domain: str
    command: AnyCommand
    ts: datetime = msgspec.field(default_factory=utcnow)


# --------------------------------------------------------------------------------------------------
# Operation lifecycle events (ops.<domain>.<op_id>.<event>) — past tense
# --------------------------------------------------------------------------------------------------
class Event(Message, kw_only=True):
    op_id: str
    ts: datetime = msgspec.field(default_factory=utcnow)
    actor: str = ""
    seq: int = 0  # per-actor-per-operation sequence, part of the Nats-Msg-Id


class OperationCreated(Event, tag="OperationCreated", kw_only=True):
    domain: str
    op_type: str
    command: AnyCommand
    description: str = ""


class OperationRejected(Event, tag="OperationRejected", kw_only=True):
    reason: str
    error_code: str = "validation"
    field: str | None = None


class OperationStarted(Event, tag="OperationStarted", kw_only=True):
    worker: str = ""
    attempt: int = 1
    resumed: bool = False
    message: str = ""


class OperationProgress(Event, tag="OperationProgress", kw_only=True):
    progress: ProgressState


class OperationCompleted(Event, tag="OperationCompleted", kw_only=True):
    result: dict[str, Any] = msgspec.field(default_factory=dict)
    message: str = ""


class OperationFailed(Event, tag="OperationFailed", kw_only=True):
    error: str
    error_code: str = "error"
    where: str = ""


class CancelRequested(Event, tag="CancelRequested", kw_only=True):
    """The orchestrator's acknowledgement that a cancel was recorded for a live operation."""

    reason: str = "cancel requested"
    requested_by: str = ""


class OperationCancelled(Event, tag="OperationCancelled", kw_only=True):
    where: str = ""
    reason: str = "cancel requested"
    message: str = ""


class ActorError(Event, tag="ActorError", kw_only=True):
    """A malformed or unexpected message about a known operation; the actor keeps running."""

    error: str
    subject: str = ""


AnyEvent = (
    OperationCreated
    | OperationRejected
    | OperationStarted
    | OperationProgress
    | OperationCompleted
    | OperationFailed
    | CancelRequested
    | OperationCancelled
    | ActorError
    | CancelOperation
)

TERMINAL_EVENTS = (OperationCompleted, OperationFailed, OperationCancelled, OperationRejected)

# Event name used as the last subject token, e.g. ops.data.<id>.progress
EVENT_SUBJECT_NAMES: dict[type, str] = {
    OperationCreated: "created",
    OperationRejected: "rejected",
    OperationStarted: "started",
    OperationProgress: "progress",
    OperationCompleted: "completed",
    OperationFailed: "failed",
    CancelRequested: "cancel_requested",
    OperationCancelled: "cancelled",
    ActorError: "error",
    CancelOperation: "cancel",
}


# --------------------------------------------------------------------------------------------------
# Presence
# --------------------------------------------------------------------------------------------------
class Heartbeat(Message, tag="Heartbeat", kw_only=True):
    actor: str
    role: str
    domain: str = ""  # the work domain it serves (dummy, data, training), "" for none
    host: str
    pid: int
    started: datetime
    ts: datetime = msgspec.field(default_factory=utcnow)
    busy: list[str] = msgspec.field(default_factory=list)  # op_ids in progress
    interval_s: float = 1.0
    stopping: bool = False


# --------------------------------------------------------------------------------------------------
# IB request/reply (ib.<verb>), queue group "ib"
# --------------------------------------------------------------------------------------------------
class IbContractRequest(Message, tag="IbContractRequest", kw_only=True):
    symbol: str
    op_id: str = ""


class IbHeadRequest(Message, tag="IbHeadRequest", kw_only=True):
    symbol: str
    timeframe: str = "1h"
    op_id: str = ""


class IbBarsRequest(Message, tag="IbBarsRequest", kw_only=True):
    symbol: str
    timeframe: str
    start: datetime
    end: datetime
    op_id: str = ""
    request_id: str = ""


class ContractInfo(msgspec.Struct, kw_only=True):
    symbol: str
    sec_type: str
    exchange: str
    currency: str
    con_id: int
    what_to_show: str
    trading_hours: str = ""
    time_zone: str = ""


class IbReply(Message, tag="IbReply", kw_only=True):
    """ok=False carries a typed error: error_code is one of unknown_symbol, no_data, pacing,
    disconnected, cancelled, ib, validation; ib_code is IB's numeric code when there was one."""

    ok: bool
    error_code: str = ""
    error: str = ""
    ib_code: int | None = None
    contract: ContractInfo | None = None
    head: datetime | None = None
    # Bars as columns (compact JSON): epoch seconds UTC and OHLCV.
    t: list[int] = msgspec.field(default_factory=list)
    o: list[float] = msgspec.field(default_factory=list)
    h: list[float] = msgspec.field(default_factory=list)
    lo: list[float] = msgspec.field(default_factory=list)
    c: list[float] = msgspec.field(default_factory=list)
    vol: list[float] = msgspec.field(default_factory=list)
    source: str = ""  # "ib" or "sim"
    pacing_wait_s: float = 0.0
    # final=False: an interim notice (e.g. "waiting 12 s for IB pacing") before the answer itself.
    final: bool = True
    message: str = ""


COMMANDS: tuple[type, ...] = (RunDummy, LoadData, StartTraining)
EVENTS: tuple[type, ...] = tuple(EVENT_SUBJECT_NAMES)
