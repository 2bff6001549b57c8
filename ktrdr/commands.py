"""Validation of commands before any work starts: the orchestrator's gate, repeated by the worker that
pulls the work (so a work item that skipped the orchestrator is refused there too).

Each field's own bounds are the message type's (events/bounds.py, checked at decode: `validate` puts a
command made in Python through the same decoder); the checks here span fields or need the domain (the
strategy's size in bytes and its parse, an older client's deadline after its command, the op id's domain). Each check
raises CommandError naming the field and the bound, quoting at most a short prefix of the bad value
(a 1 MB symbol must not become a 1 MB rejection). Domain modules do the real parsing (timeframes,
symbols, strategy files), so the CLI, the orchestrator and the workers agree on what is valid.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from events import codec, subjects
from events.bounds import MAX_DEADLINE, MAX_DUMMY_DURATION_S, MAX_STRATEGY_BYTES, Timeframe
from events.codec import short
from events.messages import Command, LoadData, RunBacktest, RunDummy, RunSweep, StartTraining
from ktrdr.errors import StrategyError, ValidationError

__all__ = ["CommandError", "check_symbol", "check_timeframe", "describe", "short", "sweep_variants", "training_inputs",
           "validate", "variant_training"]


class CommandError(ValidationError):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


def describe(cmd: Command) -> tuple[str, str]:
    """(op_type, one-line description) for OperationCreated and `ops list`."""
    if isinstance(cmd, RunDummy):
        return "dummy", f"dummy {cmd.iterations} x {cmd.interval_s:g} s"
    if isinstance(cmd, LoadData):
        return "data_load", f"load {cmd.symbol} {cmd.timeframe} ({cmd.mode})"
    if isinstance(cmd, RunBacktest):
        return "backtest", f"backtest {cmd.model}" + (f" on {', '.join(cmd.symbols)}" if cmd.symbols else "")
    if isinstance(cmd, RunSweep):
        from ktrdr.training.sweep import grid_size

        name = cmd.strategy_path.rsplit("/", 1)[-1] or "strategy"
        return "training_sweep", (f"sweep {name}: {grid_size(cmd.params)} variants, {cmd.max_parallel} at a time"
                                  + (", backtested" if cmd.backtest else ""))
    assert isinstance(cmd, StartTraining)
    name = cmd.strategy_path.rsplit("/", 1)[-1] or "strategy"
    return "training", f"train {name}" + (f" on {', '.join(cmd.symbols)}" if cmd.symbols else "")


def check_symbol(value: object, field: str = "symbol") -> str:
    """The symbol as the data layer names it (ktrdr.data.symbols.normalize_symbol), the error naming `field`."""
    from ktrdr.data.symbols import normalize_symbol

    try:
        return normalize_symbol(value)
    except ValidationError as exc:
        raise CommandError(field, str(exc)) from exc


def check_symbols(values: list[str], field: str = "symbols") -> list[str]:
    """A universe's symbols, each normalized, in order, duplicates once; 1 to MAX_UNIVERSE_SYMBOLS."""
    from events.bounds import MAX_UNIVERSE_SYMBOLS

    out = list(dict.fromkeys(check_symbol(v, f"{field}[{i}]") for i, v in enumerate(values)))
    if not out:
        raise CommandError(field, "no symbol given")
    if len(out) > MAX_UNIVERSE_SYMBOLS:
        raise CommandError(field, f"{len(out)} symbols: at most {MAX_UNIVERSE_SYMBOLS}")
    return out


def parse_symbols_file(data: bytes, name: str = "symbols file") -> list[str]:
    """The symbols of a symbols file: one a line; blank lines and `#` comments skipped. Each line is
    checked on its own; an error names the file and the line (at most MAX_SYMBOLS_FILE_BYTES, UTF-8)."""
    from events.bounds import MAX_SYMBOLS_FILE_BYTES

    if len(data) > MAX_SYMBOLS_FILE_BYTES:
        raise CommandError(name, f"{len(data)} bytes: at most {MAX_SYMBOLS_FILE_BYTES}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CommandError(name, f"not UTF-8 text (byte {exc.start})") from exc
    symbols: list[str] = []
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if line:
            symbols.append(check_symbol(line, f"{name} line {no} ({raw.strip()[:40]!r})"))
    return check_symbols(symbols, name)


def check_timeframe(value: object, field: str = "timeframe") -> Timeframe:
    """The Timeframe `value` names (any spelling people type), the error naming `field`."""
    from ktrdr.data.timeframes import parse_timeframe

    try:
        return parse_timeframe(value)
    except ValidationError as exc:
        raise CommandError(field, str(exc)) from exc


def validate(cmd: Command, now: datetime | None = None) -> None:
    """Raise CommandError for the first field out of bounds. Pure and bounded in time: the strategy
    text is size-checked before it is parsed, and the parser refuses YAML aliases."""
    now = now or datetime.now(UTC)
    try:
        codec.check(cmd)  # the type's own bounds, as the orchestrator's decoder applies them
    except codec.InvalidField as exc:
        raise CommandError(exc.field, exc.problem) from None
    except codec.DecodeError as exc:
        raise CommandError(type(cmd).__name__, str(exc)) from None
    _check_common(cmd, now)
    if isinstance(cmd, RunDummy):
        _check_dummy(cmd)
    elif isinstance(cmd, LoadData):
        check_symbol(cmd.symbol)
        _check_range(cmd.start, cmd.end, now)
    elif isinstance(cmd, StartTraining):
        _check_training(cmd, now)
    elif isinstance(cmd, RunBacktest):
        _check_backtest(cmd, now)
    elif isinstance(cmd, RunSweep):
        sweep_variants(cmd)
        _check_range(cmd.start, cmd.end, now)


def _check_common(cmd: Command, now: datetime) -> None:
    if not subjects.is_op_id(cmd.op_id) or subjects.domain_of(cmd.op_id) != cmd.domain:
        raise CommandError("op_id", f"{short(cmd.op_id)} is not a {cmd.domain} operation id")
    if cmd.deadline is not None:
        if cmd.deadline.tzinfo is None:
            raise CommandError("deadline", "must carry a timezone (UTC)")
        # An older client's absolute deadline: the duration it means, on its clock. (A workflow's child
        # carries its parent's deadline as the orchestrator fixed it: nothing to check.)
        if cmd.timeout_s is None and cmd.parent_op_id is None:
            if cmd.deadline <= cmd.ts:
                raise CommandError("deadline", "not after the command's ts; send timeout_s (seconds) instead")
            if cmd.deadline - cmd.ts > MAX_DEADLINE:
                raise CommandError("deadline", f"more than {MAX_DEADLINE.days} days after the command")
    if cmd.parent_op_id is not None and not subjects.is_op_id(cmd.parent_op_id):
        raise CommandError("parent_op_id", f"{short(cmd.parent_op_id)} is not an operation id")


def _check_dummy(cmd: RunDummy) -> None:
    if cmd.iterations * cmd.interval_s > MAX_DUMMY_DURATION_S:
        raise CommandError("iterations", f"{cmd.iterations} x {cmd.interval_s:g} s is longer than "
                                         f"{MAX_DUMMY_DURATION_S / 3600:g} h")


def _check_training(cmd: StartTraining, now: datetime) -> None:
    if len(cmd.strategy_yaml.encode()) > MAX_STRATEGY_BYTES:
        raise CommandError("strategy_yaml", f"larger than {MAX_STRATEGY_BYTES // 1024} KiB")
    if not cmd.strategy_yaml.strip():
        raise CommandError("strategy_yaml", "empty strategy; pass the strategy file's text")
    training_inputs(cmd)
    _check_range(cmd.start, cmd.end, now)


def _check_backtest(cmd: RunBacktest, now: datetime) -> None:
    from ktrdr.training.registry import parse_model_ref

    try:
        parse_model_ref(cmd.model)
    except ValidationError as exc:
        raise CommandError("model", str(exc)) from exc
    for i, s in enumerate(cmd.symbols):
        check_symbol(s, f"symbols[{i}]")
    _check_range(cmd.start, cmd.end, now)


def sweep_variants(cmd: RunSweep) -> list[Any]:
    """A sweep's variants (ktrdr.training.sweep.Variant), every path and variant checked, and the
    symbols and timeframes they share checked as a training's."""
    from ktrdr.training.sweep import SweepError, expand

    if len(cmd.strategy_yaml.encode()) > MAX_STRATEGY_BYTES:
        raise CommandError("strategy_yaml", f"larger than {MAX_STRATEGY_BYTES // 1024} KiB")
    if not cmd.strategy_yaml.strip():
        raise CommandError("strategy_yaml", "empty strategy; pass the strategy file's text")
    if cmd.rank_by == "sharpe" and not cmd.backtest:
        raise CommandError("rank_by", "sharpe needs backtest (the Sharpe ratio comes from each model's backtest)")
    try:
        variants = expand(cmd.strategy_yaml, cmd.params, cmd.strategy_path or "<strategy>")
    except SweepError as exc:
        raise CommandError(exc.field, exc.problem) from None
    except StrategyError as exc:
        raise CommandError(f"strategy {exc.path}", f"{exc.problem} (in {exc.file})") from exc
    training_inputs(variant_training(cmd, variants[0].strategy_yaml, cmd.op_id))
    return variants


def variant_training(cmd: RunSweep, strategy_yaml: str, op_id: str, parent: str | None = None) -> StartTraining:
    """The training of one variant of a sweep: the sweep's symbols, range, epochs and pool, the
    variant's strategy text, no data step of its own."""
    return StartTraining(op_id=op_id, strategy_path=cmd.strategy_path, strategy_yaml=strategy_yaml,
                         symbols=list(cmd.symbols), timeframes=list(cmd.timeframes), start=cmd.start, end=cmd.end,
                         epochs=cmd.epochs, pool=cmd.pool, data_mode="none", parent_op_id=parent,
                         deadline=cmd.deadline, requested_by=f"workflow {parent}" if parent else cmd.requested_by,
                         retries=cmd.retries, retry_max_interval_s=cmd.retry_max_interval_s)


def training_inputs(cmd: StartTraining) -> tuple[list[str], list[Timeframe]]:
    """The symbols and timeframes a training needs (the command's, else the strategy's), validated."""
    from ktrdr.training.strategy import parse_strategy

    try:
        strategy = parse_strategy(cmd.strategy_yaml, file=cmd.strategy_path or "<strategy>")
    except StrategyError as exc:
        raise CommandError(f"strategy {exc.path}", f"{exc.problem} (in {exc.file})") from exc
    # The strategy's symbols are normalised by its parser; the command's as a client spelled them.
    symbols = [check_symbol(s, f"symbols[{i}]") for i, s in enumerate(cmd.symbols)] or \
        list(strategy.training_data.symbols)
    own = list(strategy.training_data.timeframes)
    timeframes = [check_timeframe(tf, f"timeframes[{i}]") for i, tf in enumerate(cmd.timeframes)] or own
    if timeframes != own:  # the strategy defines features per timeframe: check_job refuses any other set
        raise CommandError("timeframes", f"{[str(t) for t in timeframes[:8]]} differ from the strategy's "
                                         f"{[str(t) for t in own]}; a training uses its strategy's own (edit its "
                                         f"training_data.timeframes for others)")
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
