"""The stack's commands and the reference operation: `ktrdr up`, `down`, `status`, `dummy` and
`events schema`. `register` adds them to the app.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import typer

from ktrdr.cli._common import JSON, Starting, run_async, starting_options, usage
from ktrdr.config import settings


def register(app: typer.Typer, *, events: typer.Typer) -> None:
    """Add up, down, status and dummy to the app, and schema to the `events` group."""
    for command in (up, down, status, dummy):
        app.command()(command)
    events.command("schema")(events_schema)


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
        raise usage(f"--cluster {cluster}: a local cluster has 1 to 9 nodes")
    if listen is not None and (not listen or len(listen) > 253 or any(c.isspace() or c in "/\\" for c in listen)):
        raise usage(f"--listen {listen[:60]!r} is not an address")
    try:
        url = embedded.up(s, listen=listen, nodes=cluster)
    except KtrdrError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    run_async(_wait_ready(url, embedded.local_roles(s), wait))


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


def down() -> None:
    """Stop the embedded stack. Stored operations and data stay under KTRDR_HOME."""
    from ktrdr import embedded

    stopped = embedded.down(settings())
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


def status(json_out: bool = JSON) -> None:
    """The server, each stream's message count, and the live actors."""
    run_async(_status(json_out))


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
                                  "peak_rss_mb": hb.peak_rss_mb, "state": hb.state, "metrics_url": hb.metrics_url,
                                  "last_seen": hb.ts.isoformat(), "interval_s": hb.interval_s}
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
        detail = "".join(f" · {d}" for d in (_restarts(p), p.detail) if d)
        typer.echo(f"  {p.name:<14} {'running' if p.alive else 'stopped'}{f' (pid {p.pid})' if p.pid else ''}{detail}")
    for srv in out["servers"]:
        leads = f" leads {', '.join(srv.get('leads', []))}" if srv.get("leads") else ""
        monitor = f" · monitoring {srv['monitor_url']}" if srv.get("monitor_url") else ""
        typer.echo(f"  server {srv['name']:<14} {srv['url']}{leads}{monitor}")
    for name, st in out["streams"].items():
        typer.echo(f"  stream {name:<5} {st['messages'] if st else '-':>8} messages")
    silent = sum(1 for a in out["actors"] if _silence(a))
    typer.echo(f"actors: {len(out['actors']) - silent} live" + (f", {silent} not heard (stopped?)" if silent else ""))
    for a in sorted(out["actors"], key=lambda a: a["role"]):
        busy = f" busy: {', '.join(a['busy'])}" if a["busy"] else ""
        pools = f" pools {','.join(a['pools'])}" if a["pools"] else ""
        mem = f" rss {a['rss_mb']:.0f} MB (peak {a['peak_rss_mb']:.0f})"
        state = f" · {a['state']}" if a["state"] else ""
        scrape = f" · metrics {a['metrics_url']}" if a.get("metrics_url") else ""
        typer.echo(f"  {a['role']:<13} {a['actor']}{pools}{mem}{state}{scrape}{busy}{_silence(a)}")
    return 0


def _silence(a: dict[str, Any]) -> str:
    """A record its actor stopped renewing (it died: the record expires by itself within seconds) is
    said to be silent, so that a dead orchestrator's last "active" is not read as the current one.
    Judged by the actor's own clock: a clock seconds off the CLI's could mislabel a live one."""
    silent = (datetime.now(UTC) - datetime.fromisoformat(a["last_seen"])).total_seconds()
    stale = max(3 * float(a.get("interval_s") or 1.0), 3.0)
    return f" · not heard for {silent:.0f} s (stopped?)" if silent > stale else ""


def _restarts(p: Any) -> str:
    """What the supervisor did about a process, for its status line (a ktrdr.embedded.ProcInfo)."""
    if p.state == "backoff" and not p.alive:
        waiting = "crashed; the supervisor restarts it after its backoff"
    elif p.state.startswith("failed"):
        waiting = f"could not restart ({p.state}); tried again after its backoff"
    else:
        waiting = ""
    if not p.restarts:
        return waiting
    times = "time" if p.restarts == 1 else "times"
    done = f"restarted {p.restarts} {times}, last at {p.last_restart_at} ({p.last_reason})"
    return f"{done}; {waiting}" if waiting else done


# ------------------------------------------------------------------------------------------ dummy
@starting_options
def dummy(
    iterations: int = typer.Option(100, help="Number of iterations."),
    interval: float = typer.Option(2.0, help="Seconds per iteration."),
    *,
    opts: Starting,
    json_out: bool = JSON,
) -> None:
    """Run the reference long operation (N iterations of S seconds): live progress; Ctrl+C cancels it (exit 130)."""
    from events.messages import RunDummy
    from events.subjects import new_op_id
    from ktrdr.cli._live import run_command

    cmd = RunDummy(op_id=new_op_id("dummy"), iterations=iterations, interval_s=interval,
                   **opts.fields)
    run_async(run_command(cmd, wait=opts.wait, json_out=json_out))


# ------------------------------------------------------------------------------------------ events
def events_schema() -> None:
    """Print the JSON Schema of every message (generated from the msgspec Structs)."""
    from events.schema import schema

    typer.echo(json.dumps(schema(), indent=2))
