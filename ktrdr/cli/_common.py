"""What every `ktrdr` command shares: running a command's coroutine with the CLI's exit codes, usage
errors as one line, the client of NATS_URL or of the embedded stack, and parsing of dates, deadlines,
pools and operation ids. Imports nothing heavy: the commands' modules import it at start-up.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import typer

from events.bounds import MAX_DEADLINE
from ktrdr.cli._run import client as client  # the commands import it from here
from ktrdr.cli._run import op_id_problem, run_coro

JSON = typer.Option(False, "--json", help="Print data as JSON.")
TIMEOUT = typer.Option(None, "--timeout", help="Cancel the operation (reason: deadline) after this many seconds.")
RETRIES = typer.Option(None, "--retries", help="Attempts after the first on a retryable failure (the IB gateway "
                       "away); default: the domain's (data 4, training 2, backtest 2, dummy 0).")
RETRY_MAX_INTERVAL = typer.Option(None, "--retry-max-interval", help="The longest wait between two attempts, "
                                  "seconds (they start at 1 s and double; default 100).")
PRIORITY = typer.Option(None, "--priority", help="high, normal or low: workers take higher first (default normal; "
                        "a sweep's and a schedule's firings: low).")
NO_WAIT = typer.Option(False, "--no-wait", help="Submit, print the operation id and return.")
MAX_TIMEOUT_S = int(MAX_DEADLINE.total_seconds())  # a command's timeout is at most this long


@dataclass(frozen=True)
class Starting:
    """What every starting verb shares, checked: the Command fields (`timeout_s`, the retry policy,
    `priority`) and whether to watch the operation."""

    fields: dict[str, Any]
    wait: bool


# The shared option set: name -> (type, typer option). starting_options adds them to a verb.
_STARTING: dict[str, tuple[Any, Any]] = {
    "timeout": (float | None, TIMEOUT),
    "retries": (int | None, RETRIES),
    "retry_max_interval": (float | None, RETRY_MAX_INTERVAL),
    "priority": (str | None, PRIORITY),
    "no_wait": (bool, NO_WAIT),
}


def starting_options(fn: Callable[..., None]) -> Callable[..., None]:
    """A starting verb's decorator: adds the shared options (--timeout, --retries,
    --retry-max-interval, --priority, --no-wait) to its signature and hands the verb one checked
    `opts: Starting` instead (typer reads the signature; the verb declares only its own options)."""
    sig = inspect.signature(fn)
    own = [p for name, p in sig.parameters.items() if name != "opts"]
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
             for name, (kind, option) in _STARTING.items()]

    @functools.wraps(fn)
    def verb(*args: Any, **kwargs: Any) -> None:
        shared = {name: kwargs.pop(name) for name in _STARTING}
        fields = {"timeout_s": timeout_from(shared["timeout"]), "priority": priority_from(shared["priority"]),
                  **retry_from(shared["retries"], shared["retry_max_interval"])}
        fn(*args, opts=Starting(fields, wait=not shared["no_wait"]), **kwargs)

    verb.__signature__ = sig.replace(parameters=[*own, *extra])  # type: ignore[attr-defined]
    verb.__annotations__ = {**{k: v for k, v in fn.__annotations__.items() if k != "opts"},
                            **{name: kind for name, (kind, _o) in _STARTING.items()}}
    return verb


def priority_from(priority: str | None) -> str | None:
    """--priority, checked (events.bounds.PRIORITIES); None: the command's default (normal; low for a
    sweep and a schedule's firing, fixed by the orchestrator)."""
    from events.bounds import PRIORITIES

    if priority is not None and priority not in PRIORITIES:
        raise usage(f"--priority {priority[:20]!r}: expected high, normal or low")
    return priority


def run_async(coro: Coroutine[Any, Any, int | None]) -> None:
    """Run a command's coroutine and exit with its code (ktrdr.cli._run.run_coro: the errors a user
    can cause become one line on stderr, never a traceback)."""
    raise typer.Exit(run_coro(coro))


def usage(message: str) -> typer.Exit:
    """Print `error: MESSAGE` and return the exit (code 2) for the caller to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def parse_date(value: str | None, name: str) -> datetime | None:
    """ISO dates or datetimes; naive values are UTC."""
    if value is None:
        return None
    if len(value) > 40:
        raise usage(f"--{name}: not a date (too long)")
    try:
        dt = datetime.fromisoformat(value.strip())
    except ValueError:
        raise usage(f"--{name} {value!r} is not a date (use YYYY-MM-DD or YYYY-MM-DDTHH:MM)") from None
    if dt.year < 1970:
        raise usage(f"--{name} {value!r} is before 1970")
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def check_range(start: datetime | None, end: datetime | None) -> None:
    if start is not None and end is not None and start >= end:
        raise usage(f"--start {start:%Y-%m-%d %H:%M} is not before --end {end:%Y-%m-%d %H:%M}")
    if start is not None and start > datetime.now(UTC):
        raise usage(f"--start {start:%Y-%m-%d} is in the future")


def retry_from(retries: int | None, max_interval: float | None) -> dict[str, Any]:
    """--retries and --retry-max-interval, checked against events.bounds (ktrdr.ops.retries)."""
    from events.bounds import MAX_RETRIES, MAX_RETRY_INTERVAL_S, RETRY_INITIAL_S

    if retries is not None and not 0 <= retries <= MAX_RETRIES:
        raise usage(f"--retries must be between 0 and {MAX_RETRIES}, got {retries}")
    if max_interval is not None and not RETRY_INITIAL_S <= max_interval <= MAX_RETRY_INTERVAL_S:
        raise usage(f"--retry-max-interval must be between {RETRY_INITIAL_S:g} and {MAX_RETRY_INTERVAL_S:g} "
                    f"seconds, got {max_interval:g}")
    return {"retries": retries, "retry_max_interval_s": None if max_interval is None else float(max_interval)}


def timeout_from(timeout: float | None) -> float | None:
    """--timeout, checked: the command carries it as a duration (`timeout_s`) that the orchestrator
    turns into a time on its own clock, so this machine's clock does not matter (issue 18, F13)."""
    if timeout is None:
        return None
    if not 0 < timeout <= MAX_TIMEOUT_S:
        raise usage(f"--timeout must be between 0 and {MAX_TIMEOUT_S} seconds, got {timeout:g}")
    return float(timeout)


def check_pool(pool: str) -> str:
    from events.subjects import is_token

    if not is_token(pool):
        raise usage(f"--on {pool[:40]!r} is not a pool name (lower-case letters, digits, - and _; e.g. gpu)")
    return pool


def check_op_id(op_id: str) -> None:
    problem = op_id_problem(op_id)
    if problem is not None:
        raise usage(problem)
