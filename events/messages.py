"""Every message on the wire, declared once as msgspec Structs.

Each message has a `type` tag (msgspec tagged unions make the JSON self-describing) and a schema
version `v`. Events carry `op_id`, `ts` (UTC) and `actor` (the emitting actor's id). Commands carry the
operation id chosen by the client so it can watch `ops.<domain>.<op_id>.>` before anything happens
and so a retried command is deduplicated.

Subjects are derived from the types (events/subjects.py): a command class names its `domain` and
`verb` (`cmd.<domain>.<verb>`), an event class its `name` (`ops.<domain>.<op_id>.<name>`), an IB
request its `verb` (`ib.<verb>`). Adding a domain is one command class added to COMMANDS.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, TypeAlias

import msgspec
from msgspec import Meta

from events import roles
from events.bounds import (
    DEFAULT_BACKTEST_CAPITAL,
    DEFAULT_COMMISSION,
    DEFAULT_SLIPPAGE_BPS,
    DEFAULT_SWEEP_PARALLEL,
    DEFAULT_UNIVERSE_PARALLEL,
    MAX_SWEEP_PARAMS,
    MAX_SWEEP_VARIANTS,
    Capital,
    Commission,
    DummyInterval,
    DummyIterations,
    Epochs,
    Label,
    ModelRef,
    OpIdRef,
    ParamPath,
    Reason,
    Retries,
    RetryInterval,
    ScheduleName,
    ScheduleSpec,
    SlippageBps,
    StrategyText,
    SweepParallel,
    Symbol,
    Symbols,
    Timeframe,
    Timeframes,
    TimeoutSeconds,
    TimeZoneName,
    Token,
    UniverseParallel,
    UniverseSymbols,
)

SCHEMA_VERSION = 2
# A command's priority (events.bounds.PRIORITIES): workers take high before normal before low.
Priority = Literal["high", "normal", "low"]


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
    segment_index: int = 0  # 1-based index of the segment this report is about (0: none)
    segment_count: int = 0
    segments_done: int = 0  # segments finished (fetched, empty or failed)
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
    gpu_memory_used_gb: float | None = None  # on CUDA only: memory allocated by this training now
    gpu_memory_peak_gb: float | None = None  # on CUDA only: its peak so far
    gpu_utilization_pct: float | None = None  # on CUDA only, when the driver (NVML) reports it
    resumed_from_epoch: int | None = None
    # The newest checkpoint the holder stored (CHECKPOINTS `<op_id>/latest`): its epoch and the hex
    # SHA-256 of its bytes, and the one it is storing now (reported before it is stored, so a holder
    # killed in between leaves a digest on record either way). A resumed attempt takes only a
    # checkpoint with one of these digests (issue 18, F5).
    checkpoint_epoch: int = 0
    checkpoint_sha256: Label = ""
    checkpoint_pending_sha256: Label = ""


class BacktestContext(msgspec.Struct, tag="backtest", tag_field="kind", kw_only=True):
    """A backtest's progress, per chunk of bars: how far it is, and the figures so far."""

    model: str = ""  # the model ref, strategy/KEY_vN
    symbol: str = ""  # the series being run now
    bars_done: int = 0  # of all symbols' bars in the range
    bars_total: int = 0
    date: datetime | None = None  # the last bar run (its start, UTC)
    equity: float = 0.0  # of the series being run, marked at that bar's close
    drawdown: float = 0.0  # its drawdown now (<= 0), and the worst so far
    max_drawdown: float = 0.0
    trades: int = 0  # closed trades so far, all symbols


class WorkflowContext(msgspec.Struct, tag="workflow", tag_field="kind", kw_only=True):
    """A parent operation's progress: which child is running and how many are done."""

    step: str = ""  # "data" or "training"
    children_done: int = 0
    children_total: int = 0
    child_op_id: str = ""
    child_line: str = ""  # the running child's rendered line


Context: TypeAlias = DummyContext | DataContext | TrainingContext | BacktestContext | WorkflowContext


class ProgressState(msgspec.Struct, kw_only=True):
    """Where an operation is: percentage, message, steps and items done of total, phase, and a typed
    context per domain (the seed's GenericProgressState fields)."""

    percentage: float = 0.0
    message: str = ""
    current_step: int = 0
    total_steps: int = 0
    items_processed: int = 0
    items_total: int = 0
    phase: str = ""
    context: Context | None = None
    # Set while a retryable failure waits for its next attempt (ktrdr.ops.retries): when it starts,
    # and the failure it retries.
    next_attempt_at: datetime | None = None
    retry_reason: Reason = ""


# --------------------------------------------------------------------------------------------------
# Commands (cmd.<domain>.<verb>) — imperative names
# --------------------------------------------------------------------------------------------------
class Command(Message, kw_only=True):
    domain: ClassVar[str] = ""
    verb: ClassVar[str] = ""
    role: ClassVar[str] = ""  # the actor role that does this domain's work
    # A command the orchestrator runs itself as a workflow of its domain's operations (a sweep): it
    # has its own subject (cmd.<domain>.<verb>) but no work item, worker, pool or bucket of its own.
    workflow_only: ClassVar[bool] = False
    # The pools its workers serve (work.<domain>.<pool>), and the object buckets its role reads and
    # writes besides its work and its events: events/permissions.py grants exactly these.
    pools: ClassVar[tuple[str, ...]] = ("any",)
    reads: ClassVar[tuple[str, ...]] = ()
    writes: ClassVar[tuple[str, ...]] = ()

    op_id: str
    ts: datetime = msgspec.field(default_factory=utcnow)
    requested_by: Label = roles.CLI
    pool: Token = "any"  # which pool of workers takes it: work.<domain>.<pool>
    # The deadline, as a duration: the orchestrator cancels the operation (reason "deadline") this many
    # seconds after it accepts the command, on its own clock (issue 18, F13: a client's clock is not
    # trusted). `deadline` is the time it fixed, in the command its `created` carries; from an older
    # client that sent only `deadline`, the duration it meant (deadline - ts, both on its clock).
    timeout_s: TimeoutSeconds | None = None
    deadline: datetime | None = None
    parent_op_id: str | None = None  # set by the orchestrator on a workflow's children only
    # The schedule (sched.def.<name>) whose firing started it: set by the orchestrator when it turns
    # a firing into an operation (a client's command with it set is refused), None otherwise.
    schedule_name: ScheduleName | None = None
    # The failed or cancelled operation this one retries (`ktrdr ops retry`): a client names it, the
    # orchestrator checks it may be retried and then runs the command stored in ITS created event,
    # whatever else the client sent (so what it runs cannot be forged through a retry).
    retry_of: OpIdRef | None = None
    # Its retry policy (ktrdr.ops.retries): None, its domain's default (events.bounds.DEFAULT_RETRIES,
    # RETRY_MAX_INTERVAL_S).
    retries: Retries | None = None
    retry_max_interval_s: RetryInterval | None = None
    # Its priority (issue 22, item 4). None: its kind's default, fixed by the orchestrator when it
    # accepts it (ktrdr.ops.intake.fix_priority: low for a sweep and a schedule's firing, else normal);
    # a workflow's children take their parent's.
    priority: Priority | None = None


class RunDummy(Command, tag="RunDummy", kw_only=True):
    domain: ClassVar[str] = "dummy"
    verb: ClassVar[str] = "run"
    role: ClassVar[str] = roles.DUMMY
    pools: ClassVar[tuple[str, ...]] = ("any", "cpu", "gpu")

    iterations: DummyIterations = 100
    interval_s: DummyInterval = 2.0


class LoadData(Command, tag="LoadData", kw_only=True):
    domain: ClassVar[str] = "data"
    verb: ClassVar[str] = "load"
    role: ClassVar[str] = roles.JOB_MANAGER
    writes: ClassVar[tuple[str, ...]] = ("BARS",)

    symbol: Symbol
    timeframe: Timeframe = Timeframe.H1
    mode: Literal["local", "tail", "backfill", "full"] = "tail"
    start: datetime | None = None
    end: datetime | None = None
    # A universe: two or more symbols make this one parent operation (a workflow the orchestrator
    # runs) with one data child per symbol, at most `max_parallel` of them loading at once; `symbol`
    # is then the first of them.
    symbols: UniverseSymbols = msgspec.field(default_factory=list)
    max_parallel: UniverseParallel = DEFAULT_UNIVERSE_PARALLEL


class StartTraining(Command, tag="StartTraining", kw_only=True):
    domain: ClassVar[str] = "training"
    verb: ClassVar[str] = "start"
    role: ClassVar[str] = roles.TRAINER
    pools: ClassVar[tuple[str, ...]] = ("any", "cpu", "gpu")
    reads: ClassVar[tuple[str, ...]] = ("BARS",)
    writes: ClassVar[tuple[str, ...]] = ("MODELS", "CHECKPOINTS")

    strategy_path: Label = ""
    strategy_yaml: StrategyText = ""  # the file's text, so a remote trainer needs no shared filesystem
    symbols: Symbols = msgspec.field(default_factory=list)
    timeframes: Timeframes = msgspec.field(default_factory=list)
    start: datetime | None = None
    end: datetime | None = None
    epochs: Epochs | None = None
    # How the workflow gets the bars first: "full" loads what the store lacks from IB, "local" only
    # checks what is stored, "none" plans no data step (one plain training operation).
    data_mode: Literal["full", "local", "none"] = "full"
    # A backtest child on the held-out test period of the model it trains (ktrdr.ops.workflows);
    # with data_mode "none" the workflow is then the training and the backtest.
    backtest: bool = False


class RunBacktest(Command, tag="RunBacktest", kw_only=True):
    """Run a trained model (MODELS) over stored bars (BARS) with costs; the equity curve is stored
    beside the model, `<strategy>/<KEY>_vN/<op_id>.parquet` in MODELS."""

    domain: ClassVar[str] = "backtest"
    verb: ClassVar[str] = "run"
    role: ClassVar[str] = roles.BACKTESTER
    pools: ClassVar[tuple[str, ...]] = ("any", "cpu", "gpu")
    reads: ClassVar[tuple[str, ...]] = ("BARS", "MODELS")
    writes: ClassVar[tuple[str, ...]] = ("MODELS",)

    model: ModelRef
    symbols: Symbols = msgspec.field(default_factory=list)  # empty: the model's own
    start: datetime | None = None
    end: datetime | None = None
    capital: Capital = DEFAULT_BACKTEST_CAPITAL
    commission: Commission = DEFAULT_COMMISSION
    slippage_bps: SlippageBps = DEFAULT_SLIPPAGE_BPS


class SweepParam(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One axis of a sweep's grid: a strategy field and the values it takes (each checked by the
    strategy's own parser once put in; ktrdr.training.sweep)."""

    path: ParamPath
    values: Annotated[list[Any], Meta(min_length=1, max_length=MAX_SWEEP_VARIANTS)]


RankBy = Literal["val_loss", "test_accuracy", "sharpe"]


class RunSweep(Command, tag="RunSweep", kw_only=True):
    """Many trainings of one strategy as one workflow (cmd.training.sweep): the grid is the product of
    `params`; the data children run once for all variants, then one training child per variant (its
    strategy text the variant's), at most `max_parallel` at once, and with `backtest` one backtest of
    each trained model on its held-out test period. The result is a leaderboard sorted by `rank_by`."""

    domain: ClassVar[str] = "training"
    verb: ClassVar[str] = "sweep"
    role: ClassVar[str] = roles.TRAINER
    workflow_only: ClassVar[bool] = True

    strategy_path: Label = ""
    strategy_yaml: StrategyText = ""
    params: Annotated[list[SweepParam], Meta(min_length=1, max_length=MAX_SWEEP_PARAMS)]
    symbols: Symbols = msgspec.field(default_factory=list)
    timeframes: Timeframes = msgspec.field(default_factory=list)
    start: datetime | None = None
    end: datetime | None = None
    epochs: Epochs | None = None
    data_mode: Literal["full", "local", "none"] = "full"
    max_parallel: SweepParallel = DEFAULT_SWEEP_PARALLEL
    backtest: bool = False
    rank_by: RankBy = "val_loss"


# Adding a domain: a Command subclass above, added to both lines here (tests/events checks they
# agree). Subjects, the decoder's union, the role that serves it, its pools and buckets (permissions)
# and the list of domains derive from them. A workflow-only command (RunSweep) adds a verb to its
# domain: its own subject, run by the orchestrator, nothing for workers.
COMMANDS: tuple[type[Command], ...] = (RunDummy, LoadData, StartTraining, RunBacktest, RunSweep)
AnyCommand: TypeAlias = RunDummy | LoadData | StartTraining | RunBacktest | RunSweep
WORK_COMMANDS: tuple[type[Command], ...] = tuple(c for c in COMMANDS if not c.workflow_only)
DOMAINS: tuple[str, ...] = tuple(c.domain for c in WORK_COMMANDS)
COMMAND_FOR_DOMAIN: dict[str, type[Command]] = {c.domain: c for c in WORK_COMMANDS}
COMMAND_FOR_SUBJECT: dict[tuple[str, str], type[Command]] = {(c.domain, c.verb): c for c in COMMANDS}
ROLE_FOR_DOMAIN: dict[str, str] = {c.domain: c.role for c in WORK_COMMANDS}

# Why an operation's work stops. `shutdown` and `lease_lost` are a worker's own, internal reasons:
# the work is handed back for another attempt, not ended (ktrdr.cancellation.HAND_BACK).
CancelReason = Literal["user", "deadline", "shutdown", "parent", "lease_lost"]
# What a CancelOperation on the wire may say: `user`, and nothing else. Anyone allowed to publish on a
# cancel subject may ask to stop an operation; nobody can make its worker hand it back (that was a
# loop forever: issue 18, F10) or pass for the orchestrator: its own `deadline` and `parent` cancels
# are CancelRequested events, on a subject only its role may publish on (every worker subscribes).
WireCancelReason = Literal["user"]


class CancelOperation(Message, tag="CancelOperation", kw_only=True):
    """Published on ops.<domain>.<op_id>.cancel (and stored there); every actor subscribes. It is the
    only message a cancel subject carries (anything else there is dropped by every reader)."""

    name: ClassVar[str] = "cancel"
    lifecycle: ClassVar[bool] = True
    terminal: ClassVar[bool] = False

    op_id: str
    ts: datetime = msgspec.field(default_factory=utcnow)
    reason: Reason = "cancel requested"
    reason_code: WireCancelReason = "user"
    requested_by: Label = roles.CLI
    actor: Label = ""  # not an event of the operation's workers; kept for a uniform event shape


# --------------------------------------------------------------------------------------------------
# Schedules (issue 22): nats-server's own message schedules fire them (ktrdr/schedules.py)
# --------------------------------------------------------------------------------------------------
OverlapPolicy = Literal["skip", "buffer-one", "allow"]


class Schedule(Message, tag="Schedule", kw_only=True):
    """A schedule's definition: the body of its message on sched.def.<name>, which carries the server's
    `Nats-Schedule` headers while it is active, and so the body of every firing the server stores on
    sched.fire.<name>. `command` is the starting command each firing runs (its op_id is a template: the
    orchestrator gives each firing its own). A paused or removed schedule's message has no schedule
    headers: the server does not fire it."""

    name: ScheduleName
    spec: ScheduleSpec  # `@every 15m` or a 6-field cron, as the server parses it
    tz: TimeZoneName | None = None  # an IANA zone for a cron (the server's Nats-Schedule-Time-Zone)
    overlap: OverlapPolicy = "skip"
    paused: bool = False
    removed: bool = False
    command: AnyCommand
    ts: datetime = msgspec.field(default_factory=utcnow)
    requested_by: Label = roles.CLI


# What became of one firing: an operation started (`started`, with its op id), not started because the
# previous one still runs (`skipped`), held until it ends (`buffered`), or an older firing a newer one
# of the same schedule made moot (`missed`: the orchestrator was away over several).
FiringOutcome = Literal["started", "skipped", "buffered", "missed"]


class ScheduleFired(Message, tag="ScheduleFired", kw_only=True):
    """The orchestrator's record of one firing, on sched.hist.<name> (what `schedule show` lists)."""

    name: ScheduleName
    fired_at: datetime  # when the server stored the firing
    seq: int = 0  # its sequence in SCHEDULES
    outcome: FiringOutcome
    op_id: str | None = None
    catch_up: bool = False  # fired late: the stack was down over one or more of its times
    manual: bool = False  # `ktrdr schedule trigger`
    # When the server said it fires next (Nats-Schedule-Next): a later firing much after it is a catch-up.
    next_at: datetime | None = None
    note: Reason = ""
    ts: datetime = msgspec.field(default_factory=utcnow)


# --------------------------------------------------------------------------------------------------
# Work items (work.<domain>.<pool>) — what the orchestrator routes to workers
# --------------------------------------------------------------------------------------------------
class WorkItem(Message, tag="WorkItem", kw_only=True):
    op_id: str
    domain: str
    command: AnyCommand
    ts: datetime = msgspec.field(default_factory=utcnow)


# --------------------------------------------------------------------------------------------------
# Operation lifecycle events (ops.<domain>.<op_id>.<name>) — past tense
# --------------------------------------------------------------------------------------------------
class Event(Message, kw_only=True):
    name: ClassVar[str] = ""  # the last subject token
    lifecycle: ClassVar[bool] = True  # read when rebuilding state (everything but progress)
    terminal: ClassVar[bool] = False  # exactly one of these ends an operation

    op_id: str
    ts: datetime = msgspec.field(default_factory=utcnow)
    actor: str = ""
    seq: int = 0  # per-actor sequence, part of the Nats-Msg-Id


class OperationCreated(Event, tag="OperationCreated", kw_only=True):
    name: ClassVar[str] = "created"

    domain: str
    op_type: str
    command: AnyCommand
    description: str = ""
    parent_op_id: str | None = None
    children: list[str] = msgspec.field(default_factory=list)  # a workflow's planned child operations
    schedule_name: ScheduleName | None = None  # the schedule whose firing made it (Command.schedule_name)
    retry_of: OpIdRef | None = None  # the operation it retries (Command.retry_of)
    # The leader epoch of the orchestrator that published it (actors/_orch_leader.py): the fold ignores
    # an orchestrator event of an older epoch once one of a newer epoch acted on the operation. 0: none.
    epoch: int = 0


class OperationRejected(Event, tag="OperationRejected", kw_only=True):
    name: ClassVar[str] = "rejected"
    terminal: ClassVar[bool] = True

    reason: str
    error_code: str = "validation"
    field: str | None = None
    epoch: int = 0  # the publishing orchestrator's leader epoch (see OperationCreated.epoch)


class OperationStarted(Event, tag="OperationStarted", kw_only=True):
    name: ClassVar[str] = "started"

    worker: str = ""
    attempt: int = 1
    resumed: bool = False
    message: str = ""
    # The holder's public key (events/proof.py): the orchestrator grants the lease and publishes this
    # event itself, and the fold counts the attempt's progress and verdicts only when signed by it.
    key: str = ""
    epoch: int = 0  # the publishing orchestrator's leader epoch (see OperationCreated.epoch)


class OperationProgress(Event, tag="OperationProgress", kw_only=True):
    name: ClassVar[str] = "progress"
    lifecycle: ClassVar[bool] = False

    progress: ProgressState
    # The holder's attempt (OperationStarted.attempt) it reports on: the fold orders progress by
    # (attempt, seq), since a worker that takes over numbers its events from its own sequence
    # (issue 18, F7). 0: not said (stored by an older version), read as the running attempt.
    attempt: int = 0


class OperationCompleted(Event, tag="OperationCompleted", kw_only=True):
    name: ClassVar[str] = "completed"
    terminal: ClassVar[bool] = True

    result: dict[str, Any] = msgspec.field(default_factory=dict)
    message: str = ""


class OperationFailed(Event, tag="OperationFailed", kw_only=True):
    name: ClassVar[str] = "failed"
    terminal: ClassVar[bool] = True

    error: str
    error_code: str = "error"
    where: str = ""
    retryable: bool = False  # a failure a retry policy retries (its attempts ran out, or it had none)


class CancelRequested(Event, tag="CancelRequested", kw_only=True):
    """The orchestrator's record that a live operation is to stop: a user's cancel it honoured, or its
    own (`deadline`, `parent`). Published on ops.<domain>.<op_id>.cancel_requested, which only the
    orchestrator may publish on; every worker and the ib actor subscribe to it as to cancels."""

    name: ClassVar[str] = "cancel_requested"

    reason: str = "cancel requested"
    reason_code: CancelReason = "user"
    requested_by: str = ""
    epoch: int = 0  # the publishing orchestrator's leader epoch (see OperationCreated.epoch)


class OperationCancelled(Event, tag="OperationCancelled", kw_only=True):
    name: ClassVar[str] = "cancelled"
    terminal: ClassVar[bool] = True

    where: str = ""
    reason: str = "cancel requested"
    reason_code: CancelReason = "user"
    message: str = ""


class ActorError(Event, tag="ActorError", kw_only=True):
    """A malformed or unexpected message about a known operation; the actor keeps running."""

    name: ClassVar[str] = "error"

    error: str
    subject: str = ""


# The orchestrator's own progress and verdicts (a workflow's parent, a queued note, worker lost, no
# worker, cancelled before start, ...) travel on subject tokens only the orchestrator may publish on,
# so NATS itself proves who sent them; a worker's (the holder's) carry the holder proof instead.
class OrchestratorProgress(OperationProgress, tag="OrchestratorProgress", kw_only=True):
    name: ClassVar[str] = "orch_progress"
    epoch: int = 0  # the publishing orchestrator's leader epoch (see OperationCreated.epoch)


class OrchestratorCompleted(OperationCompleted, tag="OrchestratorCompleted", kw_only=True):
    name: ClassVar[str] = "orch_completed"
    epoch: int = 0  # the publishing orchestrator's leader epoch (see OperationCreated.epoch)


class OrchestratorFailed(OperationFailed, tag="OrchestratorFailed", kw_only=True):
    name: ClassVar[str] = "orch_failed"
    epoch: int = 0  # the publishing orchestrator's leader epoch (see OperationCreated.epoch)


class OrchestratorCancelled(OperationCancelled, tag="OrchestratorCancelled", kw_only=True):
    name: ClassVar[str] = "orch_cancelled"
    epoch: int = 0  # the publishing orchestrator's leader epoch (see OperationCreated.epoch)


class OrchestratorError(ActorError, tag="OrchestratorError", kw_only=True):
    name: ClassVar[str] = "orch_error"
    epoch: int = 0  # the publishing orchestrator's leader epoch (see OperationCreated.epoch)


class OperationRetried(Event, tag="OperationRetried", kw_only=True):
    """On an ended (failed or cancelled) operation: `ktrdr ops retry` made `retried_by` from its
    command. The one event folded after a terminal one (it changes no status)."""

    name: ClassVar[str] = "retried"

    retried_by: OpIdRef
    epoch: int = 0  # the publishing orchestrator's leader epoch (see OperationCreated.epoch)


EVENTS: tuple[type[Event] | type[CancelOperation], ...] = (
    OperationCreated,
    OperationRejected,
    OperationStarted,
    OperationProgress,
    OperationCompleted,
    OperationFailed,
    CancelRequested,
    OperationCancelled,
    ActorError,
    CancelOperation,
    OrchestratorProgress,
    OrchestratorCompleted,
    OrchestratorFailed,
    OrchestratorCancelled,
    OrchestratorError,
    OperationRetried,
)
AnyEvent: TypeAlias = (OperationCreated | OperationRejected | OperationStarted | OperationProgress
                       | OperationCompleted | OperationFailed | CancelRequested | OperationCancelled | ActorError
                       | CancelOperation | OrchestratorProgress | OrchestratorCompleted | OrchestratorFailed
                       | OrchestratorCancelled | OrchestratorError | OperationRetried)
# The events a worker publishes about an operation it holds (and only those: its role may publish
# nothing else on ops subjects), each carrying the holder proof.
HELD_EVENTS: tuple[type[Event], ...] = (OperationProgress, OperationCompleted, OperationFailed, OperationCancelled,
                                        ActorError)
HELD_NAMES: tuple[str, ...] = tuple(e.name for e in HELD_EVENTS)
# A worker's event -> the orchestrator's own version of it (same fields, its own subject token).
ORCHESTRATOR_EVENT: dict[type[Event], type[Event]] = {
    OperationProgress: OrchestratorProgress, OperationCompleted: OrchestratorCompleted,
    OperationFailed: OrchestratorFailed, OperationCancelled: OrchestratorCancelled, ActorError: OrchestratorError,
}
TERMINAL_EVENTS: tuple[type[Event] | type[CancelOperation], ...] = tuple(e for e in EVENTS if e.terminal)
EVENT_NAMES: tuple[str, ...] = tuple(e.name for e in EVENTS)
LIFECYCLE_NAMES: tuple[str, ...] = tuple(e.name for e in EVENTS if e.lifecycle)
TERMINAL_NAMES: tuple[str, ...] = tuple(e.name for e in TERMINAL_EVENTS)


# --------------------------------------------------------------------------------------------------
# Presence
# --------------------------------------------------------------------------------------------------
class Heartbeat(Message, tag="Heartbeat", kw_only=True):
    actor: str
    role: str
    domain: str = ""  # the work domain it serves (dummy, data, training), "" for none
    pools: list[str] = msgspec.field(default_factory=list)  # the pools it takes work from
    host: str
    pid: int
    started: datetime
    ts: datetime = msgspec.field(default_factory=utcnow)
    busy: list[str] = msgspec.field(default_factory=list)  # op_ids in progress
    interval_s: float = 1.0
    stopping: bool = False
    rss_mb: float = 0.0  # resident memory now
    peak_rss_mb: float = 0.0  # the process's peak resident memory
    state: str = ""  # what a service says of its own link, e.g. the ib actor's gateway connection
    metrics_url: str = ""  # where its process serves Prometheus metrics ("" when off)


class Lease(Message, tag="Lease", kw_only=True):
    """Who runs an operation now (KV LEASES, key <op_id>), written by the orchestrator alone (a
    worker asks it: LeaseRequest). The holder renews it on every heartbeat; the orchestrator grants
    it to another worker only after seeing the same revision for a whole lease time on its own clock,
    and a holder whose renewal is refused has lost it and stops without a terminal event."""

    holder: str
    attempt: int = 1
    ts: datetime = msgspec.field(default_factory=utcnow)
    key: str = ""  # the holder's public key: renewals and releases must be signed by it


class Leader(Message, tag="Leader", kw_only=True):
    """Which orchestrator is active (KV LEASES, key events.subjects.LEADER_KEY), taken and renewed with
    compare-and-set like an operation's Lease. `epoch` grows by one with every new holder and is never
    reset (the key is never deleted: a leader that steps down writes an empty holder), so the epochs its
    events carry order the leaders."""

    holder: str = ""
    epoch: int = 0
    ts: datetime = msgspec.field(default_factory=utcnow)


LeaseVerb = Literal["claim", "renew", "release"]


class LeaseRequest(Message, tag="LeaseRequest", kw_only=True):
    """A worker asking the orchestrator (core request/reply on lease.<domain>.<verb>) to grant, renew
    or release an operation's lease. Signed by the key it names (events.proof.statement); a renewal or
    release must name the key the lease holds."""

    op_id: Annotated[str, msgspec.Meta(max_length=64)]
    actor: Label
    key: Annotated[str, msgspec.Meta(max_length=64)]
    attempt: int = 0  # renew / release: the attempt held
    done: bool = False  # release: the operation ended (the lease goes) or handed back (kept, no holder)
    sig: Annotated[str, msgspec.Meta(max_length=128)] = ""


class LeaseReply(Message, tag="LeaseReply", kw_only=True):
    """ok: granted (claim: with its attempt), renewed or released. Not ok: `holder` holds it (come back
    after `retry_in`), or it is not yours (`lost`), or the request was refused (`error`)."""

    ok: bool
    attempt: int = 0
    holder: str = ""
    retry_in: float = 0.0
    lost: bool = False
    error: str = ""


class SeriesLease(Message, tag="SeriesLease", kw_only=True):
    """Who writes a stored bar series now (KV SERIES, key `series.<SYMBOL>.<TF>`): one writer per
    series. Taken and renewed with compare-and-set like an operation's Lease; a second load of the same
    series waits and names `op_id` ("waiting for <op> loading the same series")."""

    holder: str  # actor or client id
    op_id: str = ""  # the operation loading it ("" for `ktrdr data import`)
    ts: datetime = msgspec.field(default_factory=utcnow)


# --------------------------------------------------------------------------------------------------
# IB request/reply (ib.<verb>), queue group "ib"
# --------------------------------------------------------------------------------------------------
class IbRequest(Message, kw_only=True):
    verb: ClassVar[str] = ""

    op_id: str = ""


class IbContractRequest(IbRequest, tag="IbContractRequest", kw_only=True):
    verb: ClassVar[str] = "contract"

    symbol: Symbol


class IbHeadRequest(IbRequest, tag="IbHeadRequest", kw_only=True):
    verb: ClassVar[str] = "head"

    symbol: Symbol
    timeframe: Timeframe = Timeframe.H1


class IbBarsRequest(IbRequest, tag="IbBarsRequest", kw_only=True):
    verb: ClassVar[str] = "bars"

    symbol: Symbol
    timeframe: Timeframe
    start: datetime
    end: datetime
    request_id: str = ""


IB_REQUESTS: tuple[type[IbRequest], ...] = (IbContractRequest, IbHeadRequest, IbBarsRequest)
AnyIbRequest: TypeAlias = IbContractRequest | IbHeadRequest | IbBarsRequest


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


# --------------------------------------------------------------------------------------------------
# IB pacing history (KV PACING, key subjects.pacing_key(host, port, client_id)): the requests an ib
# actor sent inside IB's longest pacing window, so a restarted actor waits where the old one would.
# --------------------------------------------------------------------------------------------------
PACING_HISTORY_MAX = 1000  # IB allows 60 per 10 minutes; anything near this bound is not a history


class PacingStamp(msgspec.Struct, array_like=True):
    """One request: when it was sent (wall clock, epoch seconds UTC) and what IB compares for pacing."""

    at: Annotated[float, msgspec.Meta(ge=0, le=1e11)]
    contract: Annotated[str, msgspec.Meta(max_length=64)]
    exchange: Annotated[str, msgspec.Meta(max_length=32)]
    what_to_show: Annotated[str, msgspec.Meta(max_length=32)]
    params: Annotated[str, msgspec.Meta(max_length=256)]


class PacingHistory(Message, tag="PacingHistory", kw_only=True):
    gateway: Annotated[str, msgspec.Meta(max_length=300)] = ""  # host:port/client id, for people
    saved: datetime = msgspec.field(default_factory=utcnow)
    requests: Annotated[list[PacingStamp], msgspec.Meta(max_length=PACING_HISTORY_MAX)] = msgspec.field(
        default_factory=list)


# --------------------------------------------------------------------------------------------------
# The operations index (ktrdr.ops.index): one summary per operation, what `ops list` filters and pages
# --------------------------------------------------------------------------------------------------
OpSummaryStatus = Literal["unknown", "queued", "running", "completed", "failed", "cancelled", "rejected"]


class OpSummary(msgspec.Struct, kw_only=True, frozen=True):
    """An operation as listing needs it, folded from its lifecycle events; `seq` is the OPS stream
    sequence of the last lifecycle event folded in (0 when unknown), so a fold never goes backwards."""

    op_id: Annotated[str, msgspec.Meta(max_length=64)]
    op_type: Label = ""
    pool: Annotated[str, msgspec.Meta(max_length=64)] = ""
    priority: Literal["", "high", "normal", "low"] = ""  # "": normal (made before priorities)
    status: OpSummaryStatus = "unknown"
    reason_code: Annotated[str, msgspec.Meta(max_length=64)] = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    ended_at: datetime | None = None
    symbols: Symbols = msgspec.field(default_factory=list)
    parent: Annotated[str, msgspec.Meta(max_length=64)] = ""
    attempts: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 0
    epoch: Annotated[int, msgspec.Meta(ge=0)] = 0
    seq: Annotated[int, msgspec.Meta(ge=0)] = 0
    # What a list row shows of an ENDED operation (`ops list`, its --json, the page's list), so that
    # its row needs no read of OPS. `row` False: written by an indexer from before these fields (or
    # the operation had not ended): the reader reads that operation's events from OPS, as before.
    # Texts are cut to their bound when summarized (ktrdr.ops.index.summarize), never rejected.
    row: bool = False
    domain: Label = ""
    description: Reason = ""
    error: Reason = ""
    reason: Reason = ""  # why it was cancelled
    where: Reason = ""
    message: Reason = ""  # the last progress (or verdict) message
    phase: Label = ""
    percentage: Annotated[float, msgspec.Meta(ge=0.0, le=100.0)] = 0.0  # how far it got
    context: Context | None = None  # the last progress's typed context (bounded by its own Meta)
    line: Reason = ""  # the renderer's final line (a completed one's headline comes from its result)
    worker: Label = ""
    started_at: datetime | None = None
    strategy: Label = ""  # a training's or backtest's strategy (free-text search finds it)
    schedule: Label = ""  # the schedule whose firing made it (free-text search finds it)


class IndexMark(Message, tag="IndexMark", kw_only=True):
    """The index's watermark (key meta.applied): every lifecycle event stored in OPS up to `seq` is
    folded into its summary; the orchestrator that wrote it and when."""

    seq: Annotated[int, msgspec.Meta(ge=0)] = 0
    epoch: Annotated[int, msgspec.Meta(ge=0)] = 0
    actor: Annotated[str, msgspec.Meta(max_length=200)] = ""
    at: datetime = msgspec.field(default_factory=utcnow)


class ReindexOperations(Message, tag="ReindexOperations", kw_only=True):
    """`ktrdr ops reindex`: rebuild the index from OPS (sent to subjects.REINDEX)."""

    requested_by: Annotated[str, msgspec.Meta(max_length=200)] = ""


class OperationsReindexed(Message, tag="OperationsReindexed", kw_only=True):
    """The active orchestrator's answer to ReindexOperations: what it read and wrote."""

    operations: Annotated[int, msgspec.Meta(ge=0)] = 0  # summaries written (one per stored operation)
    live: Annotated[int, msgspec.Meta(ge=0)] = 0  # of which not ended
    removed: Annotated[int, msgspec.Meta(ge=0)] = 0  # summaries of operations no longer in OPS, removed
    events: Annotated[int, msgspec.Meta(ge=0)] = 0  # lifecycle events read
    seq: Annotated[int, msgspec.Meta(ge=0)] = 0  # the watermark it left
    error: Annotated[str, msgspec.Meta(max_length=2000)] = ""
