"""Commands that show things: `ktrdr web` (the live operations page), `ktrdr ops plot` and
`ktrdr data plot` (PNG pictures); `register` adds them to the app.

matplotlib and aiohttp are imported inside the commands, so `ktrdr --help` does not pay for them.
Bad input (an id, a path, a series that is not stored) is one line on stderr and exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from ktrdr.cli._common import client, parse_date, run_async, usage
from ktrdr.config import Settings, settings

OUT_OPTION = typer.Option(..., "--out", "-o", help="PNG file to write (its folder must exist).")


def _png_path(out: Path) -> Path:
    """The picture goes to an existing folder, as a .png, and does not replace a folder."""
    if out.suffix.lower() != ".png":
        raise usage(f"-o {out}: the picture is a PNG; give a file name ending in .png")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise usage(f"-o {out}: folder {parent} does not exist")
    if out.is_dir():
        raise usage(f"-o {out}: is a folder")
    return out


# ------------------------------------------------------------------------------------------ web
def web(
    open_browser: bool = typer.Option(False, "--open", help="Open the page in the default browser."),
    host: str = typer.Option("127.0.0.1", help="When none is running: the address to serve on (loopback)."),
    port: int | None = typer.Option(None, help="When none is running: the port (default KTRDR_WEB_PORT or 8780)."),
) -> None:
    """The live operations page: print (or --open) the URL the stack serves it on, with a one-time
    login code (the page is read-only without it: only this user can cancel from it). On the embedded
    default the stack (and its page) is started when it is not running; with NATS_URL, or --host or
    --port, a page that is not running is served here in the foreground until Ctrl+C."""
    from ktrdr.web import DEFAULT_HOST, login_url, running_url

    s = settings()
    if port is not None and not 0 <= port <= 65535:
        raise usage(f"--port {port}: a port is 0..65535 (0: any free port)")
    url = running_url(s)
    if url is None and s.nats_url is None and port is None and host == DEFAULT_HOST:
        url = _stack_page(s)
    if url is not None:
        url = login_url(s) or url  # the secret is this user's (0600): anyone else gets the plain URL
        typer.echo(url)
        if open_browser:
            import webbrowser

            webbrowser.open(url)
        return
    if s.nats_url is None:  # serve here, for the embedded stack's server
        import dataclasses

        from ktrdr import embedded

        s = dataclasses.replace(s, nats_url=embedded.current_url(s))
    if "aiohttp" in sys.modules and sys.modules["aiohttp"] is None:
        del sys.modules["aiohttp"]  # the command's entry point kept nats-py from importing it
    from ktrdr.web.server import run

    typer.echo("no page is running for this stack; serving one here (Ctrl+C stops)", err=True)
    raise typer.Exit(run(s, host, port, announce_login=True))


def _stack_page(s: Settings, wait_s: float = 20.0) -> str:
    """Start whatever part of the embedded stack is not running (its page included) and wait until
    the page has recorded the URL it serves on."""
    import time

    from ktrdr import embedded
    from ktrdr.errors import KtrdrError
    from ktrdr.web import running_url

    try:
        embedded.up(s)
    except KtrdrError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    deadline = time.monotonic() + wait_s
    while (url := running_url(s)) is None:
        if time.monotonic() > deadline:
            typer.echo(f"error: the stack's page did not come up within {wait_s:g} s; see {s.log_dir / 'web.log'}",
                       err=True)
            raise typer.Exit(1)
        time.sleep(0.05)
    return url


# ------------------------------------------------------------------------------------------ ops plot
def ops_plot(op_id: str, out: Path = OUT_OPTION) -> None:
    """Draw an operation from its stored events: a training's loss and accuracy per epoch, a data
    load's segments over time with the IB pacing waits, a backtest's equity and drawdown against
    buy-and-hold (its stored equity curve), any other its progress over time."""
    from events.subjects import is_op_id

    if not is_op_id(op_id):
        raise usage(f"{op_id!r} is not an operation id (see `ktrdr ops list`)")
    run_async(_ops_plot(op_id, _png_path(out)))


async def _ops_plot(op_id: str, out: Path) -> int:
    from ktrdr import plotting
    from ktrdr.ops import fold_all

    async with client() as c:
        events = await c.events(op_id)
        if not events:
            raise usage(f"no operation {op_id} is stored")
        view = fold_all(events)
        drawn = op_id
        if view.domain == "training" and not plotting.epoch_points(events):
            # A training workflow (the id `ktrdr train` prints) reports its epochs on its training
            # child: draw the last child that has some.
            for child in reversed(view.children):
                child_events = await c.events(child)
                if plotting.epoch_points(child_events):
                    events, drawn = child_events, child
                    break
        curve = await _backtest_curve(c, view) if view.domain == "backtest" else None
    shown = op_id if drawn == op_id else f"{op_id} (training {drawn})"
    title = f"{shown} · {view.description or view.op_type} · {view.status}"
    try:
        if view.domain == "training":
            points = plotting.epoch_points(events)
            if not points:
                raise usage(f"{op_id} has no finished epoch to draw yet ({view.status}: {view.message or '-'})")
            plotting.plot_training(points, out, title)
            what = f"{len(points)} epochs"
        elif view.domain == "data":
            timeline = plotting.segment_timeline(events)
            if not timeline.segments:
                raise usage(f"{op_id} fetched no segment to draw ({view.status}: {view.message or '-'})")
            plotting.plot_data_load(timeline, out, f"{title}\n{timeline.title}")
            what = f"{len(timeline.segments)} segments, {len(timeline.waits)} pacing waits"
        elif curve is not None:
            r = view.result or {}
            plotting.plot_backtest(curve, r, out, f"{title}\n{r.get('model')} on {', '.join(r.get('symbols') or [])} "
                                                  f"[{r.get('timeframe')}], commission {r.get('commission')}, "
                                                  f"slippage {r.get('slippage_bps')} bps")
            what = f"equity and drawdown over {len(curve):,} bars against buy-and-hold"
        else:
            plotting.plot_progress(events, out, title)
            what = "progress over time"
    except OSError as exc:
        raise usage(f"-o {out}: cannot write it ({exc.strerror or exc})") from exc
    typer.echo(f"wrote {out} ({what})")
    return 0


async def _backtest_curve(c: Any, view: Any) -> Any:
    """A completed backtest's equity curve (the object its result names, in MODELS), or one line
    saying why there is none to draw."""
    import asyncio

    from ktrdr.backtest.run import read_curve
    from ktrdr.errors import KtrdrError
    from ktrdr.training.model_store import ModelStore

    name = ((view.result or {}).get("curve") or {}).get("object") if view.status == "completed" else None
    if not isinstance(name, str):
        raise usage(f"{view.op_id} has no equity curve to draw ({view.status}: {view.error or view.message or '-'})")
    try:
        data = await ModelStore(c.js).read_backtest(name)
        if data is None:
            raise usage(f"{view.op_id}: its equity curve MODELS/{name} is no longer stored")
        return await asyncio.to_thread(read_curve, data)
    except KtrdrError as exc:
        raise usage(f"{view.op_id}: {exc}") from None


# ------------------------------------------------------------------------------------------ data plot
def data_plot(
    symbol: str,
    timeframe: str = typer.Option("1h", "--timeframe", "-t", help="1m, 5m, 15m, 30m, 1h, 4h, 1d or 1w."),
    out: Path = OUT_OPTION,
    start: str | None = typer.Option(None, help="YYYY-MM-DD (UTC); default: the first stored bar."),
    end: str | None = typer.Option(None, help="YYYY-MM-DD (UTC); default: after the last stored bar."),
) -> None:
    """Draw a stored series (candles up to 300 bars, the close line beyond) with its gaps shaded."""
    from ktrdr.data.calendar import lookup, normalize_symbol
    from ktrdr.data.timeframes import parse_timeframe
    from ktrdr.errors import KtrdrError, ValidationError

    try:
        sym, tf = normalize_symbol(symbol), parse_timeframe(timeframe)
    except ValidationError as exc:
        raise usage(str(exc)) from exc
    out = _png_path(out)
    start_dt, end_dt = parse_date(start, "start"), parse_date(end, "end")
    if start_dt and end_dt and start_dt >= end_dt:
        raise usage(f"--start {start} is not before --end {end}")
    from ktrdr import plotting
    from ktrdr.data.gaps import find_gaps

    async def read() -> tuple[Any, Any]:
        from ktrdr.cli.domain_commands import _bars

        async with client() as c:
            bars = _bars(c)
            return await bars.read(sym, tf, start_dt, end_dt), await bars.metadata(sym, tf)

    import asyncio

    try:
        df, meta = asyncio.run(read())
    except KtrdrError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if df.empty:
        span = f" between {start or 'the start'} and {end or 'the end'}" if start or end else ""
        raise usage(f"no {tf} bars stored for {sym}{span} (try `ktrdr data load {sym} -t {tf}`)")
    inst = lookup(sym)
    gaps = find_gaps(df.index, inst, tf, df.index[0], df.index[-1] + tf.delta) if inst is not None else []
    kind = "candles" if len(df) <= plotting.MAX_CANDLES else "close"
    note = f"{len(gaps):,} gaps" if inst is not None else "gaps not analysed: instrument unknown"
    sim = " · SIMULATED data" if getattr(meta, "simulated", False) else ""
    span = f"{df.index[0]:%Y-%m-%d %H:%M} .. {df.index[-1]:%Y-%m-%d %H:%M} UTC"
    title = f"{sym} {tf}{sim} · {len(df):,} bars {span} · {note}"
    try:
        plotting.plot_series(df, gaps, out, title, tf.seconds)
    except OSError as exc:
        raise usage(f"-o {out}: cannot write it ({exc.strerror or exc})") from exc
    typer.echo(f"wrote {out} ({len(df):,} bars as {kind}, {note})")


def register(app: typer.Typer, *, ops: typer.Typer, data: typer.Typer) -> None:
    """Add web to the app, plot to the `ops` and `data` groups."""
    app.command()(web)
    ops.command("plot")(ops_plot)
    data.command("plot")(data_plot)
