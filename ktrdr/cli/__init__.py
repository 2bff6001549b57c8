"""The `ktrdr` command line. Commands publish to NATS and render progress; nothing here does the
work. Heavy modules (torch, pandas, rich, nats) are imported inside the commands that need them, so
`ktrdr --help` and `ktrdr ops list` start fast. Every error a user can cause is one line on stderr
and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import typer

from events.bounds import MAX_DEADLINE
from ktrdr.config import settings

if TYPE_CHECKING:
    from ktrdr.client import Client

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="KTRDR on NATS: load IB bars and train strategies as event-sourced operations.")
ops_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                      help="Operations: list, show, watch, replay, cancel, tail, plot.")
events_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="The wire vocabulary.")
data_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                       help="Market data: load from IB, show, range, import, export, plot.")
strategies_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Strategy files.")
models_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Trained models.")
app.add_typer(ops_app, name="ops")
app.add_typer(events_app, name="events")
app.add_typer(data_app, name="data")
app.add_typer(strategies_app, name="strategies")
app.add_typer(models_app, name="models")

JSON = typer.Option(False, "--json", help="Print data as JSON.")
TIMEOUT = typer.Option(None, "--timeout", help="Cancel the operation (reason: deadline) after this many seconds.")
MAX_TIMEOUT_S = int(MAX_DEADLINE.total_seconds())  # a command's deadline is at most this far ahead


def _run(coro: Coroutine[Any, Any, int | None]) -> None:
    import asyncio

    from ktrdr.errors import KtrdrError, ValidationError

    try:
        code = asyncio.run(coro)
    except ValidationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KtrdrError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except BrokenPipeError:
        # Our stdout was closed (`ktrdr ops list | head -1`): stop quietly, as a Unix tool killed by
        # SIGPIPE does, rather than blame NATS; nats-py handles its own sockets' errors itself.
        _silence_stdout()
        raise typer.Exit(141) from None
    except (OSError, TimeoutError) as exc:
        typer.echo(f"error: cannot reach NATS ({exc or type(exc).__name__}); is the server running? try "
                   f"`ktrdr status`", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code or 0)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's flush at exit does not fail again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _usage(message: str) -> typer.Exit:
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
    running = embedded.url_alive(embedded.recorded_url(s))
    url = embedded.current_url(s)
    return Client(s, url=url, ready_roles=None if running else embedded.local_roles(s), **kwargs)


def parse_date(value: str | None, name: str) -> datetime | None:
    """ISO dates or datetimes; naive values are UTC."""
    if value is None:
        return None
    if len(value) > 40:
        raise _usage(f"--{name}: not a date (too long)")
    try:
        dt = datetime.fromisoformat(value.strip())
    except ValueError:
        raise _usage(f"--{name} {value!r} is not a date (use YYYY-MM-DD or YYYY-MM-DDTHH:MM)") from None
    if dt.year < 1970:
        raise _usage(f"--{name} {value!r} is before 1970")
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def check_range(start: datetime | None, end: datetime | None) -> None:
    if start is not None and end is not None and start >= end:
        raise _usage(f"--start {start:%Y-%m-%d %H:%M} is not before --end {end:%Y-%m-%d %H:%M}")
    if start is not None and start > datetime.now(UTC):
        raise _usage(f"--start {start:%Y-%m-%d} is in the future")


def deadline_from(timeout: float | None) -> datetime | None:
    if timeout is None:
        return None
    if not 0 < timeout <= MAX_TIMEOUT_S:
        raise _usage(f"--timeout must be between 0 and {MAX_TIMEOUT_S} seconds, got {timeout:g}")
    return datetime.now(UTC) + timedelta(seconds=timeout)


def check_pool(pool: str) -> str:
    from events.subjects import is_token

    if not is_token(pool):
        raise _usage(f"--on {pool[:40]!r} is not a pool name (lower-case letters, digits, - and _; e.g. gpu)")
    return pool


def _check_op_id(op_id: str) -> None:
    from events.subjects import is_op_id

    if not is_op_id(op_id):
        shown = op_id if len(op_id) <= 60 else op_id[:60] + "..."
        raise _usage(f"{shown!r} is not an operation id (like data-20261128T174900123456-3f9a1c; see `ktrdr ops list`)")


# ------------------------------------------------------------------------------------------ stack
@app.command()
def up(wait: float = typer.Option(30.0, help="Seconds to wait for every local actor to announce itself."),
       listen: str | None = typer.Option(None, "--listen", help="Address the server listens on (default "
                                         "127.0.0.1; anything else turns TLS on), e.g. 0.0.0.0."),
       cluster: int | None = typer.Option(None, "--cluster", help="Run N local nats-servers as a cluster "
                                          "(streams and buckets at 3 replicas), e.g. 3.")) -> None:
    """Start the embedded stack (nats-server, actors, simulated IB gateway, web page) and wait until it
    serves: the streams exist and every local actor has announced itself."""
    from ktrdr import embedded
    from ktrdr.errors import KtrdrError

    s = settings()
    if cluster is not None and not 1 <= cluster <= 9:
        raise _usage(f"--cluster {cluster}: a local cluster has 1 to 9 nodes")
    if listen is not None and (not listen or len(listen) > 253 or any(c.isspace() or c in "/\\" for c in listen)):
        raise _usage(f"--listen {listen[:60]!r} is not an address")
    try:
        url = embedded.up(s, listen=listen, nodes=cluster)
    except KtrdrError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    _run(_wait_ready(url, embedded.local_roles(s), wait))


async def _wait_ready(url: str, roles: list[str], wait: float) -> int:
    from ktrdr.client import Client, NotReadyError

    s = settings()
    try:
        async with Client(s, url=url, ready_roles=roles, ready_timeout=wait):
            pass
    except NotReadyError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 1
    typer.echo(f"ktrdr stack up: NATS {url}; actors {', '.join(roles)}; logs in {s.log_dir}")
    return 0


@app.command()
def down() -> None:
    """Stop the embedded stack. Stored operations and data stay under KTRDR_HOME."""
    from ktrdr import embedded

    stopped = embedded.down(settings())
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@app.command()
def status(json_out: bool = JSON) -> None:
    """The server, each stream's message count, and the live actors."""
    _run(_status(json_out))


async def _status(json_out: bool) -> int:
    from ktrdr import embedded

    s = settings()
    procs = [] if s.nats_url else embedded.process_infos(s)
    url = s.nats_url or embedded.recorded_url(s)
    from ktrdr.web import running_url

    out: dict[str, Any] = {"nats_url": url, "web_url": running_url(s), "processes": [p.__dict__ for p in procs],
                           "servers": [] if s.nats_url else embedded.server_infos(s), "streams": {}, "actors": []}
    reachable = bool(url) and (s.nats_url is not None or embedded.url_alive(url))
    if reachable:
        from ktrdr.client import Client

        async with Client(s, url=url) as c:
            for name in ("CMD", "WORK", "OPS"):
                try:
                    info = await c.js.stream_info(name)
                    leader = info.cluster.leader if info.cluster is not None else None
                    out["streams"][name] = {"messages": info.state.messages, "bytes": info.state.bytes,
                                            "leader": leader, "replicas": info.config.num_replicas}
                except Exception:
                    out["streams"][name] = None
            for srv in out["servers"]:
                srv["leads"] = [n for n, st in out["streams"].items() if st and st["leader"] == srv["name"]]
            try:
                out["actors"] = [{"actor": hb.actor, "role": hb.role, "host": hb.host, "pid": hb.pid,
                                  "pools": hb.pools, "busy": hb.busy, "rss_mb": hb.rss_mb,
                                  "peak_rss_mb": hb.peak_rss_mb, "state": hb.state,
                                  "last_seen": hb.ts.isoformat()}
                                 for hb in await c.live_actors()]
            except Exception:
                pass
    if json_out:
        typer.echo(json.dumps(out, default=str))
        return 0
    typer.echo(f"NATS: {url or 'not running'}{'' if reachable else ' (not reachable)'}")
    if out["web_url"]:
        typer.echo(f"web:  {out['web_url']}")
    for p in procs:
        typer.echo(f"  {p.name:<12} {'running' if p.alive else 'stopped'}{f' (pid {p.pid})' if p.pid else ''}")
    for srv in out["servers"]:
        leads = f" leads {', '.join(srv.get('leads', []))}" if srv.get("leads") else ""
        typer.echo(f"  server {srv['name']:<14} {srv['url']}{leads}")
    for name, st in out["streams"].items():
        typer.echo(f"  stream {name:<5} {st['messages'] if st else '-':>8} messages")
    typer.echo(f"actors: {len(out['actors'])} live")
    for a in sorted(out["actors"], key=lambda a: a["role"]):
        busy = f" busy: {', '.join(a['busy'])}" if a["busy"] else ""
        pools = f" pools {','.join(a['pools'])}" if a["pools"] else ""
        mem = f" rss {a['rss_mb']:.0f} MB (peak {a['peak_rss_mb']:.0f})"
        state = f" · {a['state']}" if a["state"] else ""
        typer.echo(f"  {a['role']:<13} {a['actor']}{pools}{mem}{state}{busy}")
    return 0


# ------------------------------------------------------------------------------------------ dummy
@app.command()
def dummy(
    iterations: int = typer.Option(100, help="Number of iterations."),
    interval: float = typer.Option(2.0, help="Seconds per iteration."),
    timeout: float | None = TIMEOUT,
    no_wait: bool = typer.Option(False, "--no-wait", help="Print the operation id and return."),
    json_out: bool = JSON,
) -> None:
    """KTRDR's reference long operation: live progress; Ctrl+C cancels it (exit 130)."""
    from events.messages import RunDummy
    from events.subjects import new_op_id
    from ktrdr.cli._live import run_command

    cmd = RunDummy(op_id=new_op_id("dummy"), iterations=iterations, interval_s=interval,
                   deadline=deadline_from(timeout))
    _run(run_command(cmd, wait=not no_wait, json_out=json_out))


# ------------------------------------------------------------------------------------------ events
@events_app.command("schema")
def events_schema() -> None:
    """Print the JSON Schema of every message (generated from the msgspec Structs)."""
    from events.schema import schema

    typer.echo(json.dumps(schema(), indent=2))


_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    from ktrdr.cli import domain_commands, ops_commands, view_commands  # noqa: F401  (register their commands)
    from ktrdr.cli.auth_commands import auth_app

    app.add_typer(auth_app, name="auth")
    _registered = True


def entry() -> None:
    """The `ktrdr` command itself (console script and `python -m ktrdr`)."""
    # nats-py imports aiohttp for a WebSocket transport the CLI never uses: 0.16 s of imports in
    # every verb that connects (python -X importtime). Only the command's own process skips it
    # (an embedding program keeps its aiohttp); `ktrdr web`, which serves with it, takes it back.
    sys.modules.setdefault("aiohttp", None)  # type: ignore[arg-type]  # None: `import aiohttp` fails
    main()


def main() -> None:
    _register()

    try:
        rv = app(standalone_mode=False)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        # Typer's usage errors (it vendors click in recent versions, uses click in older ones) are
        # recognised by their shape, not their module: one line and exit 2, never a traceback.
        name = type(exc).__name__
        if name == "Abort":
            typer.echo("aborted", err=True)
            sys.exit(130)
        if name == "NoArgsIsHelpError":
            exc.show()  # type: ignore[attr-defined]  # `ktrdr` or `ktrdr ops` alone: the help
            sys.exit(0)
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            typer.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(2)
        raise
    sys.exit(rv if isinstance(rv, int) else 0)
