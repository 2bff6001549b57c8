"""The `ktrdr` command line. Commands publish to NATS and render progress; nothing here does the
work. Heavy modules (torch, pandas, rich, nats) are imported inside the commands that need them, so
`ktrdr --help` and `ktrdr ops list` start fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

import typer

from ktrdr.config import settings

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="KTRDR on NATS: load IB bars and train strategies as event-sourced operations.")
ops_app = typer.Typer(no_args_is_help=True, help="Operations: list, show, watch, replay, cancel, tail.")
events_app = typer.Typer(no_args_is_help=True, help="The wire vocabulary.")
data_app = typer.Typer(no_args_is_help=True, help="Market data: load from IB, show, import, export.")
strategies_app = typer.Typer(no_args_is_help=True, help="Strategy files.")
models_app = typer.Typer(no_args_is_help=True, help="Trained models.")
app.add_typer(ops_app, name="ops")
app.add_typer(events_app, name="events")
app.add_typer(data_app, name="data")
app.add_typer(strategies_app, name="strategies")
app.add_typer(models_app, name="models")

JSON = typer.Option(False, "--json", help="Print data as JSON.")


def _run(coro: Coroutine[Any, Any, int | None]) -> None:
    import asyncio

    from ktrdr.errors import KtrdrError, ValidationError

    try:
        code = asyncio.run(coro)
    except ValidationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except KtrdrError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except (OSError, TimeoutError) as exc:
        typer.echo(f"error: cannot reach NATS ({exc}); is the server running? try `ktrdr status`", err=True)
        raise typer.Exit(1) from exc
    raise typer.Exit(code or 0)


def _usage(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def parse_date(value: str | None, name: str) -> datetime | None:
    """ISO dates or datetimes; naive values are UTC."""
    if value is None:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise _usage(f"--{name} {value!r} is not a date (use YYYY-MM-DD or YYYY-MM-DDTHH:MM)") from None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _check_op_id(op_id: str) -> None:
    from events.subjects import is_op_id

    if not is_op_id(op_id):
        raise _usage(f"{op_id!r} is not an operation id (see `ktrdr ops list`)")


# ------------------------------------------------------------------------------------------ stack
@app.command()
def up() -> None:
    """Start the embedded stack (nats-server, actors, simulated IB gateway) in the background."""
    from ktrdr import embedded

    s = settings()
    url = embedded.up(s)
    typer.echo(f"ktrdr stack up: NATS {url}; logs in {s.log_dir}")


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
    out: dict[str, Any] = {"nats_url": url, "processes": [p.__dict__ for p in procs], "streams": {}, "actors": []}
    reachable = bool(url) and (s.nats_url is not None or embedded._url_alive(url))
    if reachable:
        from ktrdr.client import Client

        async with Client(s, url=url) as c:
            for name in ("CMD", "WORK", "OPS"):
                try:
                    info = await c.js.stream_info(name)
                    out["streams"][name] = {"messages": info.state.messages, "bytes": info.state.bytes}
                except Exception:
                    out["streams"][name] = None
            try:
                out["actors"] = [{"actor": hb.actor, "role": hb.role, "host": hb.host, "pid": hb.pid,
                                  "busy": hb.busy, "last_seen": hb.ts.isoformat()} for hb in await c.live_actors()]
            except Exception:
                pass
    if json_out:
        typer.echo(json.dumps(out, default=str))
        return 0
    typer.echo(f"NATS: {url or 'not running'}{'' if reachable else ' (not reachable)'}")
    for p in procs:
        typer.echo(f"  {p.name:<12} {'running' if p.alive else 'stopped'}{f' (pid {p.pid})' if p.pid else ''}")
    for name, st in out["streams"].items():
        typer.echo(f"  stream {name:<5} {st['messages'] if st else '-':>8} messages")
    typer.echo(f"actors: {len(out['actors'])} live")
    for a in sorted(out["actors"], key=lambda a: a["role"]):
        busy = f" busy: {', '.join(a['busy'])}" if a["busy"] else ""
        typer.echo(f"  {a['role']:<13} {a['actor']}{busy}")
    return 0


# ------------------------------------------------------------------------------------------ dummy
@app.command()
def dummy(
    iterations: int = typer.Option(100, help="Number of iterations."),
    interval: float = typer.Option(2.0, help="Seconds per iteration."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Print the operation id and return."),
    json_out: bool = JSON,
) -> None:
    """KTRDR's reference long operation: live progress; Ctrl+C cancels it (exit 130)."""
    from events.messages import RunDummy
    from events.subjects import new_op_id
    from ktrdr.cli._live import run_command

    cmd = RunDummy(op_id=new_op_id("dummy"), iterations=iterations, interval_s=interval)
    _run(run_command(settings(), cmd, wait=not no_wait, json_out=json_out))


# ------------------------------------------------------------------------------------------ ops
def _age(view: Any) -> str:
    if view.created_at is None and view.updated_at is None:
        return "-"
    secs = (datetime.now(UTC) - (view.created_at or view.updated_at)).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs / size:.0f}{unit}"
    return f"{secs:.0f}s"


@ops_app.command("list")
def ops_list(limit: int = typer.Option(50, help="Show the latest N (0 = all)."), json_out: bool = JSON) -> None:
    """Operations from the stored events (survives a restart of everything)."""
    _run(_ops_list(limit, json_out))


async def _ops_list(limit: int, json_out: bool) -> int:
    from ktrdr.client import Client

    async with Client(settings()) as c:
        views = await c.list_operations(limit=limit or None)
    if json_out:
        from ktrdr.cli._live import view_json

        typer.echo(json.dumps([view_json(v) for v in views], default=str))
        return 0
    if not views:
        typer.echo("no operations yet (try `ktrdr dummy`)")
        return 0
    w = max(len("OPERATION"), *(len(v.op_id) for v in views))
    typer.echo(f"{'OPERATION':<{w}} {'STATUS':<10} {'TYPE':<10} {'PROGRESS':>8} {'AGE':>5}  DESCRIPTION")
    for v in views:
        typer.echo(f"{v.op_id:<{w}} {v.status:<10} {v.op_type or '-':<10} {v.percentage:7.1f}% {_age(v):>5}  "
                   f"{v.description or v.error or ''}")
    return 0


@ops_app.command("show")
def ops_show(op_id: str, json_out: bool = JSON, events: bool = typer.Option(False, help="List every event.")) -> None:
    """One operation: status, progress, timings, result or error."""
    _check_op_id(op_id)
    _run(_ops_show(op_id, json_out, events))


async def _ops_show(op_id: str, json_out: bool, show_events: bool) -> int:
    import msgspec

    from ktrdr.cli._live import view_json
    from ktrdr.client import Client
    from ktrdr.operations import fold_all
    from ktrdr.rendering import ProgressRenderer

    async with Client(settings()) as c:
        evs = await c.events(op_id)
    if not evs:
        typer.echo(f"error: no operation {op_id} is stored", err=True)
        return 2
    view = fold_all(evs)
    if json_out:
        d = view_json(view)
        if show_events:
            d["event_list"] = [msgspec.to_builtins(e) for e in evs]
        typer.echo(json.dumps(d, default=str))
        return 0
    r = ProgressRenderer.for_domain(view.domain)
    typer.echo(f"operation  {view.op_id}\ntype       {view.op_type}  ({view.description})\nstatus     {view.status}")
    typer.echo(f"progress   {view.percentage:.1f}%  {r.line(view)}")
    for label, val in (("created", view.created_at), ("started", view.started_at), ("finished", view.finished_at)):
        if val:
            typer.echo(f"{label:<10} {val.isoformat()}")
    if view.elapsed_s is not None:
        typer.echo(f"elapsed    {view.elapsed_s:.1f} s")
    if view.worker:
        typer.echo(f"worker     {view.worker} (attempt {view.attempts})")
    if view.where:
        typer.echo(f"stopped at {view.where}")
    if view.error:
        typer.echo(f"error      {view.error}")
    if view.result:
        typer.echo("result     " + json.dumps(view.result, indent=2, default=str).replace("\n", "\n           "))
    typer.echo(f"events     {view.events}")
    if show_events:
        for e in evs:
            typer.echo(f"  {e.ts.isoformat()} {type(e).__name__:<20} {e.actor}")
    return 0


@ops_app.command("watch")
def ops_watch(op_id: str, json_out: bool = JSON) -> None:
    """Attach to a running or finished operation: replay, then follow live. Ctrl+C detaches."""
    _check_op_id(op_id)
    _run(_ops_watch(op_id, json_out))


async def _ops_watch(op_id: str, json_out: bool) -> int:
    from ktrdr.cli._live import exit_code, follow, print_final
    from ktrdr.client import Client

    async with Client(settings()) as c:
        view = await follow(c, op_id, json_out=json_out, cancel_on_interrupt=False)
    if not view.terminal:
        typer.echo(f"detached from {op_id} ({view.status})")
        return 0
    print_final(view, json_out=json_out)
    return exit_code(view)


@ops_app.command("replay")
def ops_replay(op_id: str, speed: float = typer.Option(0.0, help="Replay at the recorded pace x SPEED "
                                                                  "(0: as fast as possible)."),
               json_out: bool = JSON) -> None:
    """Re-render an operation's stored event stream."""
    _check_op_id(op_id)
    _run(_ops_replay(op_id, speed, json_out))


async def _ops_replay(op_id: str, speed: float, json_out: bool) -> int:
    from ktrdr.cli._live import exit_code, print_final, replay
    from ktrdr.client import Client

    async with Client(settings()) as c:
        view = await replay(c, op_id, speed=speed or None, json_out=json_out)
    if view.events == 0:
        typer.echo(f"error: no operation {op_id} is stored", err=True)
        return 2
    print_final(view, json_out=json_out)
    return exit_code(view) if view.terminal else 0


@ops_app.command("cancel")
def ops_cancel(op_id: str, wait: bool = typer.Option(True, help="Wait for the cancelled event."),
               json_out: bool = JSON) -> None:
    """Cancel an operation (a finished one is left as it is, and the command says so)."""
    _check_op_id(op_id)
    _run(_ops_cancel(op_id, wait, json_out))


async def _ops_cancel(op_id: str, wait: bool, json_out: bool) -> int:
    from ktrdr.cli._live import view_json
    from ktrdr.client import Client

    async with Client(settings()) as c:
        view = await c.view(op_id)
        if view.events == 0:
            typer.echo(f"error: no operation {op_id} is stored", err=True)
            return 2
        if view.terminal:
            msg = f"{op_id} is already {view.status}; nothing to cancel"
            typer.echo(json.dumps({**view_json(view), "note": msg}, default=str) if json_out else msg)
            return 0
        await c.cancel(op_id, reason="ktrdr ops cancel")
        if wait:
            view = await c.watch(op_id, lambda ev, v: None, idle_timeout=30.0)
    if json_out:
        typer.echo(json.dumps(view_json(view), default=str))
    elif view.status == "cancelled":
        typer.echo(f"{op_id} cancelled{' at ' + view.where if view.where else ''}")
    elif view.terminal:
        typer.echo(f"{op_id} finished as {view.status} before the cancel reached it")
    else:
        typer.echo(f"cancel requested for {op_id}; not confirmed yet")
    return 0


@ops_app.command("tail")
def ops_tail(json_out: bool = JSON) -> None:
    """Every operation's events, live (like `nats sub 'ops.>'`, rendered). Ctrl+C stops."""
    _run(_ops_tail(json_out))


async def _ops_tail(json_out: bool) -> int:
    import asyncio
    import signal

    from ktrdr.client import Client

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def show(subject: str, ev: Any, raw: bytes) -> None:
        if json_out:
            sys.stdout.write(raw.decode(errors="replace") + "\n")
        elif ev is None:
            sys.stdout.write(f"{subject}: (undecodable payload, {len(raw)} bytes)\n")
        else:
            detail = getattr(getattr(ev, "progress", None), "message", "") or getattr(ev, "error", "") or \
                getattr(ev, "where", "") or getattr(ev, "description", "")
            sys.stdout.write(f"{ev.ts:%H:%M:%S.%f} {ev.op_id} {type(ev).__name__} {detail}\n")
        sys.stdout.flush()

    async with Client(settings()) as c:
        await c.tail(show, stop)
    return 0


# ------------------------------------------------------------------------------------------ events
@events_app.command("schema")
def events_schema() -> None:
    """Print the JSON Schema of every message (generated from the msgspec Structs)."""
    from events.schema import schema

    typer.echo(json.dumps(schema(), indent=2))


def main() -> None:
    from ktrdr.cli import domain_commands  # noqa: F401  (registers data/training/models commands)

    app()
