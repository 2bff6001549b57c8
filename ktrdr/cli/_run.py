"""Running a command's coroutine with the CLI's exit codes, and the client it talks through, with no
typer in them: the lean path of the hot verbs (ktrdr.cli._lean) runs on these alone, and the typer
commands (ktrdr.cli._common.run_async) wrap the same functions, so both print the same lines."""

from __future__ import annotations

import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from ktrdr.config import settings

if TYPE_CHECKING:
    from ktrdr.client import Client


def echo(message: str, err: bool = False) -> None:
    """One line on stdout (or stderr), flushed, as typer.echo prints it."""
    stream = sys.stderr if err else sys.stdout
    stream.write(message + "\n")
    stream.flush()


def run_coro(coro: Coroutine[Any, Any, int | None]) -> int:
    """Run a command's coroutine and return its exit code; the errors a user can cause become one
    line on stderr (2: bad input, 1: a failed operation, or a server that cannot be reached or refused
    our credentials or TLS handshake: ktrdr.transport.connection.ConnectRefused), never a traceback."""
    import asyncio

    from ktrdr.errors import KtrdrError, ValidationError

    try:
        code = asyncio.run(coro)
    except ValidationError as exc:
        echo(f"error: {exc}", err=True)
        return 2
    except KtrdrError as exc:
        from ktrdr import disk

        echo(f"error: {disk.explain(exc, settings()) or exc}", err=True)
        return 1
    except BrokenPipeError:
        # Our stdout was closed (`ktrdr ops list | head -1`): stop quietly, as a Unix tool killed by
        # SIGPIPE does, rather than blame NATS; nats-py handles its own sockets' errors itself.
        _silence_stdout()
        return 141
    except (OSError, TimeoutError) as exc:
        echo(f"error: {_failure(exc)}", err=True)
        return 1
    except Exception as exc:  # the server's own refusal, when it says its store is full
        from ktrdr import disk

        full = disk.explain(exc, settings())
        if full is None:
            raise
        echo(f"error: {full}", err=True)
        return 1
    return code or 0


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


def client(**kwargs: Any) -> Client:
    """A client of NATS_URL, or of the embedded stack (started when it is not running; the client
    then waits until the stack serves before it is used)."""
    from ktrdr.client import Client

    s = settings()
    if s.nats_url:
        return Client(s, **kwargs)
    from ktrdr import embedded

    # Wait for the stack only when this call starts it: judged as current_url judges it (a recorded
    # URL that answers may be another program on that port, and then the stack is started anew).
    running = embedded.running_url(s) is not None
    url = embedded.current_url(s)
    return Client(s, url=url, ready_roles=None if running else embedded.local_roles(s), **kwargs)


def op_id_problem(op_id: str) -> str | None:
    """Why `op_id` is not an operation id (the line the CLI prints), or None when it is one."""
    from events.subjects import is_op_id

    if is_op_id(op_id):
        return None
    shown = op_id if len(op_id) <= 60 else op_id[:60] + "..."
    return f"{shown!r} is not an operation id (like data-20261128T174900123456-3f9a1c; see `ktrdr ops list`)"
