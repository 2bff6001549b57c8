"""What every `ktrdr` command shares: running a command's coroutine with the CLI's exit codes, usage
errors as one line, the client of NATS_URL or of the embedded stack, and parsing of dates, deadlines,
pools and operation ids. Imports nothing heavy: the commands' modules import it at start-up.
"""

from __future__ import annotations

import sys
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import typer

from events.bounds import MAX_DEADLINE
from ktrdr.config import settings

if TYPE_CHECKING:
    from ktrdr.client import Client

JSON = typer.Option(False, "--json", help="Print data as JSON.")
TIMEOUT = typer.Option(None, "--timeout", help="Cancel the operation (reason: deadline) after this many seconds.")
RETRIES = typer.Option(None, "--retries", help="Attempts after the first on a retryable failure (the IB gateway "
                       "away); default: the domain's (data 4, training 2, backtest 2, dummy 0).")
RETRY_MAX_INTERVAL = typer.Option(None, "--retry-max-interval", help="The longest wait between two attempts, "
                                  "seconds (they start at 1 s and double; default 100).")
MAX_TIMEOUT_S = int(MAX_DEADLINE.total_seconds())  # a command's timeout is at most this long


def run_async(coro: Coroutine[Any, Any, int | None]) -> None:
    """Run a command's coroutine and exit with its code; the errors a user can cause become one line
    on stderr (2: bad input, 1: a failed operation, or a server that cannot be reached or refused our
    credentials or TLS handshake: ktrdr.transport.connection.ConnectRefused), never a traceback."""
    import asyncio

    from ktrdr.errors import KtrdrError, ValidationError

    try:
        code = asyncio.run(coro)
    except ValidationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KtrdrError as exc:
        from ktrdr import disk

        typer.echo(f"error: {disk.explain(exc, settings()) or exc}", err=True)
        raise typer.Exit(1) from None
    except BrokenPipeError:
        # Our stdout was closed (`ktrdr ops list | head -1`): stop quietly, as a Unix tool killed by
        # SIGPIPE does, rather than blame NATS; nats-py handles its own sockets' errors itself.
        _silence_stdout()
        raise typer.Exit(141) from None
    except (OSError, TimeoutError) as exc:
        typer.echo(f"error: {_failure(exc)}", err=True)
        raise typer.Exit(1) from None
    except Exception as exc:  # the server's own refusal, when it says its store is full
        from ktrdr import disk

        full = disk.explain(exc, settings())
        if full is None:
            raise
        typer.echo(f"error: {full}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code or 0)


def _failure(exc: OSError) -> str:
    """The line for an OSError: a full disk names the disk (ours, or the server's store when the
    supervisor saw it stop writing); "cannot reach NATS" only when no server accepts connections."""
    from ktrdr import disk, embedded

    s = settings()
    full = disk.explain(exc, s)
    if full is not None:
        return str(full)
    if isinstance(exc, TimeoutError) and embedded.url_alive(s.nats_url or embedded.recorded_url(s)):
        return (f"NATS did not answer in time ({exc or type(exc).__name__}) though the server accepts connections; "
                "see `ktrdr status`")
    return f"cannot reach NATS ({exc or type(exc).__name__}); is the server running? try `ktrdr status`"


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's flush at exit does not fail again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def usage(message: str) -> typer.Exit:
    """Print `error: MESSAGE` and return the exit (code 2) for the caller to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def client(**kwargs: Any) -> Client:
    """A client of NATS_URL, or of the embedded stack (started when it is not running; the client
    then waits until the stack serves before it is used)."""
    from ktrdr import embedded
    from ktrdr.client import Client

    s = settings()
    if s.nats_url:
        return Client(s, **kwargs)
    # Wait for the stack only when this call starts it: judged as current_url judges it (a recorded
    # URL that answers may be another program on that port, and then the stack is started anew).
    running = embedded.running_url(s) is not None
    url = embedded.current_url(s)
    return Client(s, url=url, ready_roles=None if running else embedded.local_roles(s), **kwargs)


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
    from events.subjects import is_op_id

    if not is_op_id(op_id):
        shown = op_id if len(op_id) <= 60 else op_id[:60] + "..."
        raise usage(f"{shown!r} is not an operation id (like data-20261128T174900123456-3f9a1c; see `ktrdr ops list`)")
