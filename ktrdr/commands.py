"""Validation of commands before any work starts: the orchestrator's gate, repeated by the worker that
pulls the work (so a work item that skipped the orchestrator is refused there too).

Every field that crossed a process boundary is checked once here, with explicit bounds; each check
raises CommandError naming the field and the bound, quoting at most a short prefix of the bad value
(a 1 MB symbol must not become a 1 MB rejection). Domain modules do the real parsing (timeframes,
symbols, strategy files), so the CLI, the orchestrator and the workers agree on what is valid.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from events import subjects
from events.messages import Command, LoadData, RunDummy, StartTraining
from ktrdr.errors import StrategyError, ValidationError

MAX_DUMMY_ITERATIONS = 10_000
MAX_DUMMY_INTERVAL_S = 60.0
MAX_DUMMY_DURATION_S = 24 * 3600.0
MAX_EPOCHS = 100_000
MAX_STRATEGY_BYTES = 256 * 1024
MAX_SYMBOLS = 50
MAX_TIMEFRAMES = 8
MAX_DEADLINE = timedelta(days=30)
MAX_TEXT = 512  # strategy_path, requested_by: labels, never paths
# AAPL, BRK.B, EUR.USD, EUR/USD: letters and digits with at most one separator, never "..".
_SYMBOL = re.compile(r"^[A-Za-z0-9]{1,12}([./][A-Za-z0-9]{1,8})?$")


class CommandError(ValidationError):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


def short(value: object, limit: int = 40) -> str:
    """repr of a value, cut to `limit` characters: bad input is quoted, not echoed whole."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def describe(cmd: Command) -> tuple[str, str]:
    """(op_type, one-line description) for OperationCreated and `ops list`."""
    if isinstance(cmd, RunDummy):
        return "dummy", f"dummy {cmd.iterations} x {cmd.interval_s:g} s"
    if isinstance(cmd, LoadData):
        return "data_load", f"load {cmd.symbol} {cmd.timeframe} ({cmd.mode})"
    assert isinstance(cmd, StartTraining)
    name = cmd.strategy_path.rsplit("/", 1)[-1] or "strategy"
    return "training", f"train {name}" + (f" on {', '.join(cmd.symbols)}" if cmd.symbols else "")


def check_symbol(value: object, field: str = "symbol") -> str:
    from ktrdr.data.calendar import normalize_symbol

    if not isinstance(value, str) or not _SYMBOL.match(value):
        raise CommandError(field, f"{short(value)} is not a symbol (letters and digits, e.g. AAPL, BRK.B or EUR.USD)")
    try:
        return normalize_symbol(value)
    except ValidationError as exc:
        raise CommandError(field, str(exc)) from exc


def check_timeframe(value: object, field: str = "timeframe") -> str:
    from ktrdr.data.timeframes import parse_timeframe

    if not isinstance(value, str) or len(value) > 12:
        raise CommandError(field, f"{short(value)} is not a timeframe")
    try:
        return parse_timeframe(value).name
    except ValidationError as exc:
        raise CommandError(field, str(exc)) from exc


def validate(cmd: Command, now: datetime | None = None) -> None:
    """Raise CommandError for the first field out of bounds. Pure and bounded in time: the strategy
    text is size-checked before it is parsed, and the parser refuses YAML aliases."""
    now = now or datetime.now(UTC)
    _check_common(cmd, now)
    if isinstance(cmd, RunDummy):
        _check_dummy(cmd)
    elif isinstance(cmd, LoadData):
        check_symbol(cmd.symbol)
        check_timeframe(cmd.timeframe)
        _check_range(cmd.start, cmd.end, now)
    elif isinstance(cmd, StartTraining):
        _check_training(cmd, now)


def _check_common(cmd: Command, now: datetime) -> None:
    if not subjects.is_op_id(cmd.op_id) or subjects.domain_of(cmd.op_id) != cmd.domain:
        raise CommandError("op_id", f"{short(cmd.op_id)} is not a {cmd.domain} operation id")
    if not subjects.is_token(cmd.pool):
        raise CommandError("pool", f"{short(cmd.pool)} is not a pool name (lower-case letters, digits, - and _)")
    if len(cmd.requested_by) > MAX_TEXT:
        raise CommandError("requested_by", f"longer than {MAX_TEXT} characters")
    if cmd.deadline is not None:
        if cmd.deadline.tzinfo is None:
            raise CommandError("deadline", "must carry a timezone (UTC)")
        if cmd.deadline - cmd.ts > MAX_DEADLINE:
            raise CommandError("deadline", f"more than {MAX_DEADLINE.days} days after the command")
    if cmd.parent_op_id is not None and not subjects.is_op_id(cmd.parent_op_id):
        raise CommandError("parent_op_id", f"{short(cmd.parent_op_id)} is not an operation id")


def _check_dummy(cmd: RunDummy) -> None:
    if not 1 <= cmd.iterations <= MAX_DUMMY_ITERATIONS:
        raise CommandError("iterations", f"must be between 1 and {MAX_DUMMY_ITERATIONS}, got {short(cmd.iterations)}")
    if not 0 <= cmd.interval_s <= MAX_DUMMY_INTERVAL_S:
        raise CommandError("interval_s", f"must be between 0 and {MAX_DUMMY_INTERVAL_S:g} seconds, got "
                                         f"{short(cmd.interval_s)}")
    if cmd.iterations * cmd.interval_s > MAX_DUMMY_DURATION_S:
        raise CommandError("iterations", f"{cmd.iterations} x {cmd.interval_s:g} s is longer than "
                                         f"{MAX_DUMMY_DURATION_S / 3600:g} h")


def _check_training(cmd: StartTraining, now: datetime) -> None:
    if len(cmd.strategy_yaml.encode()) > MAX_STRATEGY_BYTES:
        raise CommandError("strategy_yaml", f"larger than {MAX_STRATEGY_BYTES // 1024} KiB")
    if not cmd.strategy_yaml.strip():
        raise CommandError("strategy_yaml", "empty strategy; pass the strategy file's text")
    if len(cmd.strategy_path) > MAX_TEXT:
        raise CommandError("strategy_path", f"longer than {MAX_TEXT} characters")
    if len(cmd.symbols) > MAX_SYMBOLS:
        raise CommandError("symbols", f"at most {MAX_SYMBOLS} symbols, got {len(cmd.symbols)}")
    for i, sym in enumerate(cmd.symbols):
        check_symbol(sym, f"symbols[{i}]")
    if len(cmd.timeframes) > MAX_TIMEFRAMES:
        raise CommandError("timeframes", f"at most {MAX_TIMEFRAMES} timeframes, got {len(cmd.timeframes)}")
    for i, tf in enumerate(cmd.timeframes):
        check_timeframe(tf, f"timeframes[{i}]")
    if cmd.epochs is not None and not 1 <= cmd.epochs <= MAX_EPOCHS:
        raise CommandError("epochs", f"must be between 1 and {MAX_EPOCHS}, got {short(cmd.epochs)}")
    training_inputs(cmd)
    _check_range(cmd.start, cmd.end, now)


def training_inputs(cmd: StartTraining) -> tuple[list[str], list[str]]:
    """The symbols and timeframes a training needs (the command's, else the strategy's), validated."""
    from ktrdr.training.strategy import parse_strategy

    try:
        strategy = parse_strategy(cmd.strategy_yaml, file=cmd.strategy_path or "<strategy>")
    except StrategyError as exc:
        raise CommandError(f"strategy {exc.path}", f"{exc.problem} (in {exc.file})") from exc
    symbols = [check_symbol(s, f"symbols[{i}]") for i, s in enumerate(cmd.symbols)] or \
        [check_symbol(s, "strategy training_data.symbols") for s in strategy.training_data.symbols]
    own = list(strategy.training_data.timeframes)
    timeframes = [check_timeframe(tf) for tf in cmd.timeframes] or own
    if timeframes != own:  # the strategy defines features per timeframe: check_job refuses any other set
        raise CommandError("timeframes", f"{timeframes[:8]} differ from the strategy's {own}; a training uses "
                                         f"its strategy's own (edit its training_data.timeframes for others)")
    return symbols, timeframes


def _check_range(start: datetime | None, end: datetime | None, now: datetime) -> None:
    if start is not None and start.tzinfo is None:
        raise CommandError("start", "must carry a timezone (UTC)")
    if end is not None and end.tzinfo is None:
        raise CommandError("end", "must carry a timezone (UTC)")
    if start is not None and end is not None and start >= end:
        raise CommandError("start", f"{start:%Y-%m-%d %H:%M} is not before end {end:%Y-%m-%d %H:%M}")
    if start is not None and start > now:
        raise CommandError("start", f"{start:%Y-%m-%d} is in the future")
    if end is not None and end > now + timedelta(days=1):
        raise CommandError("end", f"{end:%Y-%m-%d} is in the future")
    if start is not None and start.year < 1970:
        raise CommandError("start", f"{start:%Y-%m-%d} is before 1970")
