"""Validation of commands before any work starts (the orchestrator's gate).

Each check raises ValidationError with `field` set to the offending field path, and a message a
person can act on. Domain modules do the real parsing (timeframes, symbols, strategy files), so the
CLI, the orchestrator and the workers agree on what is valid.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from events.messages import AnyCommand, LoadData, RunDummy, StartTraining
from ktrdr.errors import StrategyError, ValidationError


class CommandError(ValidationError):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


def describe(cmd: AnyCommand) -> tuple[str, str]:
    """(op_type, one-line description) for OperationCreated and `ops list`."""
    if isinstance(cmd, RunDummy):
        return "dummy", f"dummy {cmd.iterations} x {cmd.interval_s:g} s"
    if isinstance(cmd, LoadData):
        return "data_load", f"load {cmd.symbol} {cmd.timeframe} ({cmd.mode})"
    name = cmd.strategy_path.rsplit("/", 1)[-1] or "strategy"
    return "training", f"train {name}" + (f" on {', '.join(cmd.symbols)}" if cmd.symbols else "")


def validate(cmd: AnyCommand, now: datetime | None = None) -> None:
    now = now or datetime.now(UTC)
    if isinstance(cmd, RunDummy):
        if cmd.iterations < 1 or cmd.iterations > 1_000_000:
            raise CommandError("iterations", f"must be between 1 and 1000000, got {cmd.iterations}")
        if cmd.interval_s < 0 or cmd.interval_s > 3600:
            raise CommandError("interval_s", f"must be between 0 and 3600 seconds, got {cmd.interval_s}")
    elif isinstance(cmd, LoadData):
        from ktrdr.data.calendar import normalize_symbol
        from ktrdr.data.timeframes import parse_timeframe

        try:
            normalize_symbol(cmd.symbol)
        except ValidationError as exc:
            raise CommandError("symbol", str(exc)) from exc
        try:
            parse_timeframe(cmd.timeframe)
        except ValidationError as exc:
            raise CommandError("timeframe", str(exc)) from exc
        _check_range(cmd.start, cmd.end, now)
    elif isinstance(cmd, StartTraining):
        from ktrdr.data.timeframes import parse_timeframe
        from ktrdr.training.strategy import parse_strategy

        if not cmd.strategy_yaml.strip():
            raise CommandError("strategy_yaml", "empty strategy; pass the strategy file's text")
        try:
            parse_strategy(cmd.strategy_yaml, file=cmd.strategy_path or "<strategy>")
        except StrategyError as exc:
            raise CommandError(f"strategy {exc.path}", f"{exc.problem} (in {exc.file})") from exc
        for i, tf in enumerate(cmd.timeframes):
            try:
                parse_timeframe(tf)
            except ValidationError as exc:
                raise CommandError(f"timeframes[{i}]", str(exc)) from exc
        if cmd.epochs is not None and not 1 <= cmd.epochs <= 100_000:
            raise CommandError("epochs", f"must be between 1 and 100000, got {cmd.epochs}")
        _check_range(cmd.start, cmd.end, now)


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
