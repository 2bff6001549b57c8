"""`ktrdr ops ...`: every verb works on every operation in every state (queued, running, each terminal
state, a workflow parent or child, rejected), from the stored events, so they survive a restart of
everything."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import typer

from ktrdr.cli._common import JSON, check_op_id, client, run_async
from ktrdr.cli._listing import run_list, view_json

if TYPE_CHECKING:  # the fold is imported by the verbs that use it: `ktrdr --help` stays fast
    from ktrdr.ops import OperationView


def ops_list(limit: int = typer.Option(50, help="Show the latest N (0 = all, at most 1000)."),
             flat: bool = typer.Option(False, "--flat", help="Children as rows of their own, not under parents."),
             status: str | None = typer.Option(None, help="Only this status (queued, running, completed, ...)."),
             op_type: str | None = typer.Option(None, "--type", help="Only this type or domain (data_load, data)."),
             pool: str | None = typer.Option(None, help="Only operations of this worker pool."),
             since: str | None = typer.Option(None, help="Only those made at or after this date/time (ISO, UTC)."),
             until: str | None = typer.Option(None, help="Only those made before this date/time (ISO, UTC)."),
             symbol: str | None = typer.Option(None, help="Only those whose command names this symbol."),
             parent: str | None = typer.Option(None, help="Only the children of this workflow operation."),
             text: str | None = typer.Option(None, help="Only those whose op id, symbol, strategy or description "
                                                       "contains this (any case)."),
             before: str | None = typer.Option(None, help="The page before this cursor (an op id or a date/time, "
                                                         "as printed after a page)."),
             json_out: bool = JSON) -> None:
    """Operations from the stored events, oldest first, children under their parents."""
    # The lean path (ktrdr.cli._lean) runs the same run_list without typer; its options are these.
    raise typer.Exit(run_list(limit=limit, flat=flat, status=status, op_type=op_type, pool=pool, since=since,
                              until=until, symbol=symbol, parent=parent, text=text, before=before,
                              json_out=json_out))


def _fail(message: str) -> int:
    typer.echo(f"error: {message}", err=True)
    return 2


def ops_show(op_id: str, json_out: bool = JSON, events: bool = typer.Option(False, help="List every event."),
             trace: bool = typer.Option(False, "--trace", help="Print its trace as a span tree (the spans "
                                        "OTEL_TRACES_EXPORTER=ktrdr wrote under KTRDR_HOME/traces).")) -> None:
    """One operation: status, progress, timings, its children, result or error."""
    check_op_id(op_id)
    run_async(_ops_show(op_id, json_out, events, trace))


def _trace_spans(op_id: str) -> list[dict[str, Any]]:
    """The spans of the operation's trace the collector-free export wrote (ktrdr/tracing.py)."""
    from ktrdr import tracing
    from ktrdr.config import settings

    cfg = settings()
    directory = cfg.traces_dir or cfg.home / tracing.TRACES_DIR
    return tracing.trace_of(tracing.read_spans(directory), op_id)


async def _ops_show(op_id: str, json_out: bool, show_events: bool, show_trace: bool = False) -> int:
    import msgspec

    from ktrdr.ops import fold_all

    async with client() as c:
        evs = await c.events(op_id)
        if not evs:
            typer.echo(f"error: no operation {op_id} is stored", err=True)
            return 2
        view = fold_all(evs)
        if evs.dropped:  # what its subjects carried that was not its events (counted, the first noted)
            view.dropped = evs.dropped
            view.errors.append(f"dropped {evs.dropped} message(s) not its events; first: {evs.first_dropped}")
        if evs.unproven:  # held events no signature of the holder's key reached (a forgery, a stranger's)
            view.unproven = evs.unproven
            view.errors.extend(n for n in evs.notes if n.startswith("ignored an unproven"))
        children = [await c.view(k) for k in view.children]
    spans = await asyncio.to_thread(_trace_spans, op_id) if show_trace else []
    if json_out:
        d = view_json(view)
        d["children_views"] = [view_json(k) for k in children]
        if show_events:
            d["event_list"] = [msgspec.to_builtins(e) for e in evs]
        if show_trace:
            d["trace"] = spans
        typer.echo(json.dumps(d, default=str))
        return 0
    _print_view(view, children)
    if show_events:
        for e in evs:
            typer.echo(f"  {e.ts.isoformat()} {type(e).__name__:<20} {e.actor or '-'}  {_detail(e)}")
    if show_trace:
        from ktrdr import tracing

        if not spans:
            typer.echo("trace      none recorded (traces are off unless OTEL_TRACES_EXPORTER names ktrdr: see the "
                       "README, Operating it -> Traces)")
        else:
            typer.echo(f"trace      {spans[0]['trace_id']}  ({len(spans)} spans)")
            for line in tracing.tree_lines(spans):
                typer.echo(f"  {line}")
    return 0


def _print_view(view: OperationView, children: list[OperationView]) -> None:
    from ktrdr.rendering import ProgressRenderer

    r = ProgressRenderer.for_domain(view.domain)
    typer.echo(f"operation  {view.op_id}\ntype       {view.op_type}  ({view.description})\nstatus     {view.status}")
    typer.echo(f"progress   {view.percentage:.1f}%  {r.line(view)}")
    typer.echo(f"priority   {view.priority or 'normal'}")
    if view.parent_op_id:
        typer.echo(f"parent     {view.parent_op_id}")
    if view.schedule_name:
        typer.echo(f"schedule   {view.schedule_name}  (ktrdr schedule show {view.schedule_name})")
    if view.retry_of:
        typer.echo(f"retry of   {view.retry_of}")
    if view.retried_by:
        typer.echo(f"retried by {view.retried_by}")
    for label, val in (("created", view.created_at), ("started", view.started_at), ("finished", view.finished_at),
                       ("deadline", view.deadline)):
        if val:
            typer.echo(f"{label:<10} {val.isoformat()}")
    if view.elapsed_s is not None:
        typer.echo(f"elapsed    {view.elapsed_s:.1f} s")
    if view.worker:
        typer.echo(f"worker     {view.worker} (attempt {view.attempts})")
    if view.where:
        typer.echo(f"stopped at {view.where}")
    if view.reason and view.status == "cancelled":
        typer.echo(f"reason     {view.reason} ({view.reason_code})")
    if view.error:
        typer.echo(f"error      {view.error}")
    for note in view.errors:
        typer.echo(f"note       {note}")
    if view.dropped:
        typer.echo(f"dropped    {view.dropped} message(s) on its subjects whose body disagreed with the subject")
    if view.unproven:
        typer.echo(f"unproven   {view.unproven} event(s) not signed by the key its lease was granted to: ignored")
    if children:
        typer.echo("children")
        for i, k in enumerate(children):
            kr = ProgressRenderer.for_domain(k.domain or "")
            line = kr.final(k) if k.terminal else kr.line(k)
            branch = "└─" if i == len(children) - 1 else "├─"
            typer.echo(f"  {branch} {k.op_id} {k.status:<10} {k.percentage:5.1f}%  {line}")
    if view.result and isinstance(view.result.get("leaderboard"), list):  # a sweep: its table, not its JSON
        from ktrdr.cli.sweep_commands import leaderboard_lines

        typer.echo("result")
        for line in leaderboard_lines(view.result):
            typer.echo(line)
    elif view.result:
        typer.echo("result     " + json.dumps(view.result, indent=2, default=str).replace("\n", "\n           "))
    typer.echo(f"events     {view.events}")


def _detail(e: Any) -> str:
    for attr in ("error", "reason", "where", "description", "message"):
        value = getattr(e, attr, None)
        if value:
            return str(value)[:120]
    progress = getattr(e, "progress", None)
    return progress.message[:120] if progress is not None else ""


def ops_watch(op_id: str, json_out: bool = JSON) -> None:
    """Attach to a running or finished operation: replay, then follow live; it rides out a server
    outage for as long as you wait. Ctrl+C detaches (the operation goes on)."""
    check_op_id(op_id)
    run_async(_ops_watch(op_id, json_out))


async def _ops_watch(op_id: str, json_out: bool) -> int:
    from ktrdr.cli._live import exit_code, follow, print_final

    c = client(reconnect_attempts=-1)
    c.on_disconnect = lambda: print("connection to NATS lost; reconnecting (Ctrl+C leaves) ...", file=sys.stderr,
                                    flush=True)
    c.on_reconnect = lambda: print("reconnected to NATS", file=sys.stderr, flush=True)
    async with c:
        if not await c.exists(op_id):
            typer.echo(f"error: no operation {op_id} is stored", err=True)
            return 2
        view = await follow(c, op_id, json_out=json_out, cancel_on_interrupt=False)
    if not view.terminal:
        typer.echo(f"detached from {op_id} ({view.status})")
        return 0
    print_final(view, json_out=json_out)
    return exit_code(view)


def ops_replay(op_id: str, speed: float = typer.Option(0.0, help="Replay at the recorded pace x SPEED "
                                                                  "(0: as fast as possible)."),
               json_out: bool = typer.Option(False, "--json", help="Print the events, one JSON object a line.")
               ) -> None:
    """Re-render an operation's stored event stream: the same lines its live display printed."""
    check_op_id(op_id)
    if not 0 <= speed <= 1e6:
        raise typer.Exit(_fail(f"--speed must be between 0 and 1000000, got {speed:g}"))
    run_async(_ops_replay(op_id, speed, json_out))


async def _ops_replay(op_id: str, speed: float, json_out: bool) -> int:
    from ktrdr.cli._live import exit_code, print_final, replay

    async with client() as c:
        view = await replay(c, op_id, speed=speed or None, json_out=json_out)
    if view.events == 0:
        typer.echo(f"error: no operation {op_id} is stored", err=True)
        return 2
    if not json_out:
        print_final(view, json_out=False)
    return exit_code(view) if view.terminal else 0


def ops_cancel(op_id: str, wait: bool = typer.Option(True, help="Wait for the cancelled event."),
               json_out: bool = JSON) -> None:
    """Cancel an operation. The cancel is recorded whatever the operation's state, even before it is
    created; a finished one is left as it is, and the command says so."""
    check_op_id(op_id)
    run_async(_ops_cancel(op_id, wait, json_out))


async def _ops_cancel(op_id: str, wait: bool, json_out: bool) -> int:

    async with client() as c:
        view = await c.view(op_id)
        if view.terminal:
            msg = f"{op_id} is already {view.status}; nothing to cancel"
            typer.echo(json.dumps({**view_json(view), "note": msg}, default=str) if json_out else msg)
            return 0
        await c.cancel(op_id, reason="ktrdr ops cancel")
        if not view.created_at:  # not created yet (or never will be): give the orchestrator a moment
            view = await c.watch(op_id, lambda ev, v: None, stop=None, idle_timeout=3.0) if wait else view
            if not view.created_at and not view.terminal:
                typer.echo(f"no operation {op_id} is stored yet; the cancel is recorded and applies if it is "
                           f"created", err=True)
                return 2
        if wait and not view.terminal:
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


def ops_retry(op_id: str, no_wait: bool = typer.Option(False, "--no-wait", help="Submit, print the operation id "
                                                      "and return."), json_out: bool = JSON) -> None:
    """Run a failed or cancelled operation's command again, as a new operation (`retry of` it): a
    training resumes from its checkpoint, a data load from what BARS holds, a workflow or sweep runs
    only the steps that did not complete."""
    check_op_id(op_id)
    run_async(_ops_retry(op_id, not no_wait, json_out))


async def _ops_retry(op_id: str, wait: bool, json_out: bool) -> int:
    import msgspec

    from events import roles, subjects
    from ktrdr.cli._live import run_command
    from ktrdr.ops import intake

    async with client() as c:
        old = await c.view(op_id)
    if (problem := intake.retry_problem(old)) is not None:
        return _fail(f"cannot retry: {problem}")
    try:  # the orchestrator runs the command it stored; this one is what the client shows and checks
        cmd = intake.retried_command(old, subjects.new_op_id(subjects.domain_of(op_id)), datetime.now(UTC),
                                     roles.CLI)
    except (msgspec.ValidationError, TypeError) as exc:
        return _fail(f"cannot retry: the command stored for {op_id} cannot be read back: {exc}")
    code = await run_command(cmd, wait=wait, json_out=json_out)
    if code == 0 and not wait:
        return await _until_linked(op_id, cmd.op_id)
    return code


async def _until_linked(old_id: str, new_id: str, timeout: float = 30.0) -> int:
    """With --no-wait, return once the orchestrator has accepted the retry and linked the two (`retried
    by` on the old one), so an `ops show` right after says so; a refused retry is said (exit 2)."""
    import asyncio

    async with client() as c:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            new = await c.view(new_id)
            if new.status == "rejected":
                return _fail(f"cannot retry: {new.error or 'refused by the orchestrator'}")
            if (await c.view(old_id)).retried_by == new_id:
                return 0
            await asyncio.sleep(0.1)  # poll interval while the orchestrator takes the command
    print(f"note: {new_id} submitted; the orchestrator has not taken it within {timeout:.0f} s", file=sys.stderr)
    return 0


def ops_tail(json_out: bool = JSON) -> None:
    """Every operation's events, live (like `nats sub 'ops.>'`, rendered). Ctrl+C stops."""
    run_async(_ops_tail(json_out))


async def _ops_tail(json_out: bool) -> int:
    import asyncio
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def show(subject: str, ev: Any, raw: bytes) -> None:
        if isinstance(ev, Exception):  # undecodable, or a body that disagrees with its subject
            why = f"{str(ev)[:200]}; {len(raw)} bytes"
            sys.stdout.write(json.dumps({"subject": subject, "dropped": why}) + "\n" if json_out
                             else f"{subject}: dropped ({why})\n")
        elif json_out:
            sys.stdout.write(raw.decode(errors="replace") + "\n")
        else:
            sys.stdout.write(f"{ev.ts:%H:%M:%S.%f} {ev.op_id} {type(ev).__name__} {_detail(ev)}\n")
        sys.stdout.flush()

    async with client() as c:
        await c.tail(show, stop)
    return 0


def ops_reindex(json_out: bool = JSON) -> None:
    """Rebuild the operations index (what `ops list` and the page read) from the stored events."""
    run_async(_ops_reindex(json_out))


async def _ops_reindex(json_out: bool) -> int:
    import msgspec

    async with client() as c:
        out = await c.reindex()
    if json_out:
        typer.echo(msgspec.json.encode(out).decode())
    elif not out.error:
        typer.echo(f"reindexed {out.operations} operations ({out.live} live) from {out.events} lifecycle events; "
                   f"removed {out.removed} no longer stored; watermark {out.seq}")
    if out.error:
        typer.echo(f"error: reindex failed: {out.error}", err=True)
        return 1
    return 0


def register(ops: typer.Typer) -> None:
    """Add list, show, watch, replay, cancel, retry, tail and reindex to the `ops` group."""
    ops.command("list")(ops_list)
    ops.command("show")(ops_show)
    ops.command("watch")(ops_watch)
    ops.command("replay")(ops_replay)
    ops.command("cancel")(ops_cancel)
    ops.command("retry")(ops_retry)
    ops.command("tail")(ops_tail)
    ops.command("reindex")(ops_reindex)
