"""`ktrdr schedule`: schedules that nats-server itself fires (ktrdr/schedules.py says how).

`schedule add NAME (--cron '...' | --every 15m) [--tz ZONE] [--overlap skip|buffer-one|allow] --
<starting command>` parses the starting command with that command's own verb (`data load`, `train`,
`backtest`, `sweep`, `dummy`: the same options, the same checks, ktrdr.cli._live.capturing), so a schedule holds
exactly the command that verb would have submitted. Everything a user can get wrong is refused before
anything is stored: one line, exit 2.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import typer

from ktrdr.cli._common import JSON, client, run_async, usage

STARTING = {"data": "load", "train": None, "backtest": None, "sweep": None, "dummy": None}  # verb -> its sub-verb
SHOW_FIRINGS = 10


def _checked(fn: Any, *args: Any) -> Any:
    from ktrdr.errors import ValidationError

    try:
        return fn(*args)
    except ValidationError as exc:
        raise usage(str(exc)) from exc


def _starting_command(ctx: typer.Context, args: list[str]) -> Any:
    """The command the trailing words build, parsed by their own verb of this same app (the root of
    `ctx`), with nothing submitted."""
    from ktrdr.cli._live import capturing

    if not args or args[0] not in STARTING or (STARTING[args[0]] and (len(args) < 2 or args[1] != STARTING[args[0]])):
        raise usage("after --, give the starting command: data load ..., train ..., backtest ..., sweep ... "
                    "or dummy ...")
    if any(a in ("--help", "-h") for a in args):
        raise usage("--help of the starting command: run `ktrdr " + " ".join(args[:2 if STARTING[args[0]] else 1])
                    + " --help`")
    with capturing() as kept:
        rv = ctx.find_root().command.main(args=list(args), prog_name="ktrdr", standalone_mode=False)
    if rv not in (None, 0) or len(kept) != 1:
        raise typer.Exit(2 if rv in (None, 0) else rv)  # the verb said why (one line) already
    return kept[0]


def schedule_add(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The schedule's name: lower-case letters, digits, - and _."),
    command: list[str] = typer.Argument(..., metavar="-- COMMAND...",
                                        help="The starting command, after --: data load ..., train ..., ..."),
    cron: str | None = typer.Option(None, "--cron", help="6 fields: SEC MIN HOUR DOM MON DOW, e.g. '0 30 18 * * 1-5'."),
    every: str | None = typer.Option(None, "--every", help="An interval: 30s, 15m, 1h30m, 1d (at least 1 s)."),
    tz: str | None = typer.Option(None, "--tz", help="The time zone of a --cron, e.g. America/New_York (default UTC)."),
    overlap: str = typer.Option("skip", "--overlap", help="While the previous firing still runs: skip (default), "
                                "buffer-one (start one when it ends) or allow."),
    json_out: bool = JSON,
) -> None:
    """Add a schedule: nats-server fires it; each firing becomes a fresh operation of COMMAND."""
    from events.messages import Schedule
    from ktrdr import schedules

    _checked(schedules.check_name, name)
    policy = _checked(schedules.check_overlap, overlap)
    zone = _checked(schedules.check_tz, tz)
    spec = _checked(schedules.spec_from, cron, every, zone)
    cmd = _starting_command(ctx, command)  # a --timeout counts from each firing (orchestrator clock)
    run_async(_add(Schedule(name=name, spec=spec, tz=zone, overlap=policy, command=cmd), json_out))


async def _add(sched: Any, json_out: bool) -> int:
    from events.bounds import MAX_SCHEDULES
    from ktrdr.commands import describe
    from ktrdr.errors import ValidationError
    from ktrdr.transport import schedules as store

    async with client() as c:
        if await store.definition(c.js, sched.name) is not None:
            raise ValidationError(f"schedule {sched.name!r} exists (`ktrdr schedule remove {sched.name}` first)")
        if len(await store.definitions(c.js)) >= MAX_SCHEDULES:
            raise ValidationError(f"{MAX_SCHEDULES} schedules exist already; remove one first")
        await store.put_definition(c.js, sched)
    if json_out:
        typer.echo(json.dumps(_builtins(sched)))
    else:
        zone = f" ({sched.tz})" if sched.tz else ""
        typer.echo(f"schedule {sched.name}: {sched.spec}{zone}, overlap {sched.overlap}: "
                   f"{describe(sched.command)[1]}")
    return 0


def _builtins(obj: Any) -> Any:
    import msgspec

    return msgspec.to_builtins(obj)


def _summary(sched: Any) -> dict[str, Any]:
    from ktrdr.commands import describe

    return {"name": sched.name, "spec": sched.spec, "tz": sched.tz, "overlap": sched.overlap,
            "state": "paused" if sched.paused else "active", "command": describe(sched.command)[1]}


def schedule_list(json_out: bool = JSON, stream: bool = typer.Option(
        False, "--stream", help="Print the SCHEDULES stream's info as the server returns it (`nats stream info`).")) \
        -> None:
    """The schedules: when each fires, its overlap policy, whether it is paused, what it runs, its last firing."""
    run_async(_list(json_out, stream))


async def _list(json_out: bool, stream: bool = False) -> int:
    from events import subjects
    from ktrdr.transport import schedules as store
    from ktrdr.transport.streams import stream_api

    async with client() as c:
        if stream:
            info = await stream_api(c.js, f"STREAM.INFO.{subjects.STREAM_SCHEDULES}")
            typer.echo(json.dumps({k: info.get(k) for k in ("config", "state")}, indent=2))
            return 0
        rows: list[Any] = await store.summaries(c.js)
    if json_out:
        typer.echo(json.dumps(rows, default=str))
        return 0
    if not rows:
        typer.echo("no schedules (add one: ktrdr schedule add NAME --every 1d -- data load AAPL)")
    for r in rows:
        zone = f" {r['tz']}" if r["tz"] else ""
        last = r["last_firing"]
        tail = f"  last: {last['fired_at']:%Y-%m-%d %H:%M:%S} {last['outcome']}" if last else "  never fired"
        typer.echo(f"{r['name']:<20} {r['spec']}{zone}  overlap {r['overlap']}  {r['state']}  {r['command']}{tail}")
    return 0


def schedule_show(name: str, limit: int = typer.Option(SHOW_FIRINGS, "--last", help="Firings to list (1-50)."),
                  json_out: bool = JSON) -> None:
    """A schedule and its last firings: each one's operation and how it ended, or why none started."""
    from events.bounds import SCHEDULE_HISTORY

    _checked(_name, name)
    if not 1 <= limit <= SCHEDULE_HISTORY:
        raise usage(f"--last {limit}: expected 1 to {SCHEDULE_HISTORY}")
    run_async(_show(name, limit, json_out))


def _name(name: str) -> str:
    from ktrdr import schedules

    return schedules.check_name(name)


async def _existing(c: Any, name: str) -> Any:
    from ktrdr.errors import ValidationError
    from ktrdr.transport import schedules as store

    sched = await store.definition(c.js, name)
    if sched is None:
        raise ValidationError(f"no schedule named {name!r} (see `ktrdr schedule list`)")
    return sched


async def _show(name: str, limit: int, json_out: bool) -> int:
    from ktrdr.transport import schedules as store

    async with client() as c:
        sched = await _existing(c, name)
        firings = []
        for rec in await store.history(c.js, name, limit * 2):  # a buffered firing has two records
            row = store.firing_row(rec)
            row["status"] = (await c.view(rec.op_id)).status if rec.op_id else None
            firings.append(row)
    firings = _latest_per_firing(firings)[-limit:]
    out = {**_summary(sched), "firings": firings}
    if json_out:
        typer.echo(json.dumps(out, default=str))
        return 0
    zone = f" ({sched.tz})" if sched.tz else ""
    typer.echo(f"schedule {name}: {sched.spec}{zone}, overlap {sched.overlap}, {out['state']}")
    typer.echo(f"  runs: {out['command']}")
    if not firings:
        typer.echo("  no firings yet")
    for f in firings:
        what = f"{f['op_id']} {f['status']}" if f["op_id"] else "no operation"
        flags = "".join(s for s, on in ((" [catch-up]", f["catch_up"]), (" [manual]", f["manual"])) if on)
        note = f" - {f['note']}" if f["note"] else ""
        typer.echo(f"  {f['fired_at']:%Y-%m-%d %H:%M:%S} #{f['seq']:<6} {f['outcome']:<8} {what}{flags}{note}")
    return 0


def _latest_per_firing(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per firing (its latest record: a buffered one that started shows as started)."""
    by_seq: dict[int, dict[str, Any]] = {}
    for r in rows:
        by_seq[r["seq"]] = r
    return sorted(by_seq.values(), key=lambda r: r["seq"])


def _set_paused(name: str, paused: bool) -> None:
    _checked(_name, name)
    run_async(_pause(name, paused))


async def _pause(name: str, paused: bool) -> int:
    import msgspec

    from ktrdr.transport import schedules as store

    async with client() as c:
        sched = await _existing(c, name)
        if sched.paused == paused:
            typer.echo(f"schedule {name} is {'paused' if paused else 'active'} already")
            return 0
        await store.put_definition(c.js, msgspec.structs.replace(sched, paused=paused, ts=datetime.now(UTC)))
    typer.echo(f"schedule {name} {'paused: it does not fire until resumed' if paused else 'resumed'}")
    return 0


def schedule_pause(name: str) -> None:
    """Stop firing a schedule (it keeps its definition and history)."""
    _set_paused(name, True)


def schedule_resume(name: str) -> None:
    """Fire a paused schedule again from its next time."""
    _set_paused(name, False)


def schedule_trigger(name: str) -> None:
    """Fire a schedule now, once (its overlap policy applies); also a paused one."""
    _checked(_name, name)
    run_async(_trigger(name))


async def _trigger(name: str) -> int:
    from ktrdr.transport import schedules as store

    async with client() as c:
        sched = await _existing(c, name)
        seq = await store.fire_now(c.js, sched)
    typer.echo(f"schedule {name} fired (firing #{seq}); see `ktrdr schedule show {name}`")
    return 0


def schedule_remove(name: str) -> None:
    """Remove a schedule: it fires no more (its history stays readable until it is added again)."""
    _checked(_name, name)
    run_async(_remove(name))


async def _remove(name: str) -> int:
    import msgspec

    from ktrdr.transport import schedules as store

    async with client() as c:
        sched = await _existing(c, name)
        await store.put_definition(c.js, msgspec.structs.replace(sched, removed=True, ts=datetime.now(UTC)))
    typer.echo(f"schedule {name} removed")
    return 0


def register(schedule: typer.Typer) -> None:
    schedule.command("add")(schedule_add)
    schedule.command("list")(schedule_list)
    schedule.command("show")(schedule_show)
    schedule.command("pause")(schedule_pause)
    schedule.command("resume")(schedule_resume)
    schedule.command("trigger")(schedule_trigger)
    schedule.command("remove")(schedule_remove)
