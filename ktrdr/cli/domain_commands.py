"""Data, strategy, training, model and gateway commands (registered on the app in ktrdr.cli).

`data show/range/import/export` and `models` read KTRDR_HOME directly (the store lives there);
`data load` and `train` are operations: they go through NATS like every long operation.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import typer

from ktrdr.cli import (
    JSON,
    TIMEOUT,
    _run,
    _usage,
    app,
    check_pool,
    check_range,
    data_app,
    deadline_from,
    models_app,
    parse_date,
    strategies_app,
)
from ktrdr.config import Settings, settings

TF_OPTION = typer.Option("1h", "--timeframe", "-t", help="1m, 5m, 15m, 30m, 1h, 4h, 1d or 1w.")


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, default=str, indent=2))


# ------------------------------------------------------------------------------------------ data
@data_app.command("load")
def data_load(
    symbol: str,
    timeframe: str = TF_OPTION,
    mode: str = typer.Option("tail", help="local, tail (last 30 days to now), backfill or full."),
    start: str | None = typer.Option(None, help="YYYY-MM-DD (UTC)."),
    end: str | None = typer.Option(None, help="YYYY-MM-DD (UTC)."),
    on: str = typer.Option("any", "--on", help="The ib pool to load through (one per IB account/gateway)."),
    timeout: float | None = TIMEOUT,
    no_wait: bool = typer.Option(False, "--no-wait", help="Print the operation id and return."),
    json_out: bool = JSON,
) -> None:
    """Load bars from IB (or the simulated gateway) with live progress; Ctrl+C cancels."""
    from events.messages import LoadData
    from events.subjects import new_op_id
    from ktrdr.cli._live import run_command

    if mode not in ("local", "tail", "backfill", "full"):
        raise _usage(f"--mode {mode[:20]!r}: expected local, tail, backfill or full")
    sym, tf = _norm(symbol, timeframe)
    start_dt, end_dt = parse_date(start, "start"), parse_date(end, "end")
    check_range(start_dt, end_dt)
    cmd = LoadData(op_id=new_op_id("data"), symbol=sym, timeframe=tf, mode=mode,  # type: ignore[arg-type]
                   start=start_dt, end=end_dt, pool=check_pool(on), deadline=deadline_from(timeout))
    _run(run_command(cmd, wait=not no_wait, json_out=json_out))


def _store(s: Settings) -> Any:
    from ktrdr.data.store import DataStore

    return DataStore(s.home)


def _norm(symbol: str, timeframe: str) -> tuple[str, str]:
    from ktrdr.commands import check_symbol, check_timeframe
    from ktrdr.errors import ValidationError

    try:
        return check_symbol(symbol), check_timeframe(timeframe)
    except ValidationError as exc:
        raise _usage(str(exc)) from exc


@data_app.command("show")
def data_show(symbol: str, timeframe: str = TF_OPTION, rows: int = typer.Option(5, help="Rows from each end."),
              json_out: bool = JSON) -> None:
    """A stored series: source (simulated data is marked), range, and its first and last bars."""
    import msgspec

    sym, tf = _norm(symbol, timeframe)
    store = _store(settings())
    meta = store.metadata(sym, tf)
    if meta is None:
        typer.echo(f"no {tf} data stored for {sym} (try `ktrdr data load {sym} -t {tf}`)", err=True)
        raise typer.Exit(1)
    df = store.read(sym, tf)
    if json_out:
        _echo_json({"metadata": msgspec.to_builtins(meta),
                    "head": json.loads(df.head(rows).reset_index().to_json(orient="records", date_format="iso")),
                    "tail": json.loads(df.tail(rows).reset_index().to_json(orient="records", date_format="iso"))})
        return
    sim = "  ** SIMULATED DATA (sim gateway) **" if getattr(meta, "simulated", False) else ""
    typer.echo(f"{sym} {tf}: {len(df):,} bars, {meta.start} .. {meta.end}, source {meta.source}{sim}")
    with __import__("pandas").option_context("display.width", 120):
        typer.echo(df.head(rows).to_string())
        if len(df) > rows:
            typer.echo("...")
            typer.echo(df.tail(rows).to_string(header=False))


@data_app.command("range")
def data_range(symbol: str, timeframe: str = TF_OPTION, json_out: bool = JSON) -> None:
    """The stored range of a series."""
    sym, tf = _norm(symbol, timeframe)
    store = _store(settings())
    rng = store.covered_range(sym, tf)
    meta = store.metadata(sym, tf)
    if rng is None:
        typer.echo(f"no {tf} data stored for {sym}", err=True)
        raise typer.Exit(1)
    out = {"symbol": sym, "timeframe": tf, "start": rng[0].isoformat(), "end": rng[1].isoformat(),
           "rows": getattr(meta, "rows", None), "source": getattr(meta, "source", None),
           "simulated": getattr(meta, "simulated", None)}
    if json_out:
        _echo_json(out)
    else:
        typer.echo(f"{sym} {tf}: {out['start']} .. {out['end']} ({out['rows']:,} bars, source {out['source']})")


@data_app.command("import")
def data_import(file: Path, symbol: str = typer.Option(..., "--symbol", "-s"), timeframe: str = TF_OPTION,
                json_out: bool = JSON) -> None:
    """Import a CSV (date column or index + open/high/low/close/volume). A bad file is rejected with
    the row and the reason, and the stored series is left untouched."""
    from ktrdr.data.csv_io import import_csv
    from ktrdr.errors import ValidationError

    sym, tf = _norm(symbol, timeframe)
    read_text_file(file, "CSV", max_bytes=512 * 1024 * 1024, head_only=True)
    try:
        df = import_csv(file)
    except ValidationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    added = _store(settings()).merge(sym, tf, df, source="import")
    out = {"symbol": sym, "timeframe": tf, "rows_read": len(df), "bars_added": added}
    if json_out:
        _echo_json(out)
    else:
        typer.echo(f"imported {len(df):,} rows into {sym} {tf} ({added:,} new bars)")


@data_app.command("export")
def data_export(symbol: str, timeframe: str = TF_OPTION,
                out: Path = typer.Option(..., "--out", "-o", help="CSV file to write."),
                start: str | None = typer.Option(None), end: str | None = typer.Option(None)) -> None:
    """Export a stored series to CSV."""
    sym, tf = _norm(symbol, timeframe)
    start_dt, end_dt = parse_date(start, "start"), parse_date(end, "end")
    check_range(start_dt, end_dt)
    if out.is_dir():
        raise _usage(f"--out {str(out)[:200]}: is a directory; name a CSV file")
    if not out.parent.is_dir():
        raise _usage(f"--out {str(out)[:200]}: the folder {str(out.parent)[:200]} does not exist")
    try:
        n = _store(settings()).export_csv(sym, tf, out, start_dt, end_dt)
    except OSError as exc:
        raise _usage(f"--out {str(out)[:200]}: cannot write it ({exc.strerror or exc})") from None
    typer.echo(f"wrote {n:,} bars to {out}")


# ------------------------------------------------------------------------------------------ strategies
@strategies_app.command("validate")
def strategies_validate(file: Path, json_out: bool = JSON) -> None:
    """Validate a v2 strategy file; errors name the file, the field path and the problem."""
    from ktrdr.errors import StrategyError
    from ktrdr.training.strategy import load_strategy

    try:
        strategy = load_strategy(file)
    except StrategyError as exc:
        if json_out:
            _echo_json({"valid": False, "file": exc.file, "path": exc.path, "problem": exc.problem})
        else:
            typer.echo(f"invalid: {exc}", err=True)
        raise typer.Exit(2) from exc
    if json_out:
        _echo_json({"valid": True, "name": strategy.name})
    else:
        td = strategy.training_data
        typer.echo(f"valid: {strategy.name} ({', '.join(td.symbols)} [{', '.join(td.timeframes)}])")


@strategies_app.command("list")
def strategies_list(directory: Path = typer.Argument(Path("strategies")), json_out: bool = JSON) -> None:
    """Strategy files in a directory (default ./strategies) and whether each is valid."""
    from ktrdr.training.strategy import list_strategies

    items = list_strategies(directory)
    if json_out:
        _echo_json(items)
        return
    for it in items:
        typer.echo("  ".join(f"{k}={v}" for k, v in it.items()))


# ------------------------------------------------------------------------------------------ train
@app.command()
def train(
    strategy_file: Path = typer.Argument(..., metavar="STRATEGY.yaml"),
    symbols: str | None = typer.Option(None, help="Comma-separated; default: the strategy's."),
    timeframes: str | None = typer.Option(None, help="Comma-separated; default: the strategy's."),
    start: str | None = typer.Option(None, help="YYYY-MM-DD (UTC); default: one year before --end."),
    end: str | None = typer.Option(None, help="YYYY-MM-DD (UTC); default: now."),
    epochs: int | None = typer.Option(None, help="Override the strategy's epochs."),
    on: str = typer.Option("any", "--on", help="The trainer pool: any, cpu, gpu or a KTRDR_POOLS name."),
    data: str = typer.Option("full", "--data", help="full: load missing bars first; local: use stored bars "
                                                   "only; none: no data step (a single training operation)."),
    timeout: float | None = TIMEOUT,
    no_wait: bool = typer.Option(False, "--no-wait", help="Submit, print the operation id and return."),
    json_out: bool = JSON,
) -> None:
    """Train a strategy: one operation whose children load the missing data, then train, with one live
    progress display. Ctrl+C cancels the whole workflow (exit 130)."""
    text = read_text_file(strategy_file, "strategy", max_bytes=256 * 1024)
    end_dt = parse_date(end, "end") or datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start_dt = parse_date(start, "start") or end_dt - timedelta(days=365)
    check_range(start_dt, end_dt)
    if epochs is not None and not 1 <= epochs <= 100_000:
        raise _usage(f"--epochs must be between 1 and 100000, got {epochs}")
    if data not in ("full", "local", "none"):
        raise _usage(f"--data {data[:20]!r}: expected full, local or none")
    from events.messages import StartTraining
    from events.subjects import new_op_id

    cmd = StartTraining(op_id=new_op_id("training"), strategy_path=str(strategy_file), strategy_yaml=text,
                        symbols=[_norm(s, "1h")[0] for s in _split(symbols)],
                        timeframes=[_norm("AAPL", t)[1] for t in _split(timeframes)], start=start_dt, end=end_dt,
                        epochs=epochs, pool=check_pool(on), deadline=deadline_from(timeout),
                        data_mode=data)  # type: ignore[arg-type]
    _run(_train(cmd, not no_wait, json_out))


def read_text_file(path: Path, what: str, *, max_bytes: int, head_only: bool = False) -> str:
    """A user's text file, or one line saying why not (missing, a directory, too big, binary)."""
    shown = str(path)[:200] or "''"
    if not str(path).strip():
        raise _usage(f"empty {what} path")
    try:
        if not path.exists():
            raise _usage(f"{shown}: no such file")
        if path.is_dir():
            raise _usage(f"{shown}: is a directory; expected a {what} file")
        size = path.stat().st_size
        if size > max_bytes:
            raise _usage(f"{shown}: {size:,} bytes; a {what} file is at most {max_bytes:,} bytes")
        with open(path, "rb") as fh:
            data = fh.read(65536 if head_only else max_bytes)
    except OSError as exc:
        raise _usage(f"{shown}: cannot read it ({exc.strerror or exc})") from None
    if b"\0" in data:
        raise _usage(f"{shown}: a binary file; expected a {what} file (text)")
    if not data.strip():
        raise _usage(f"{shown}: empty; expected a {what} file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if head_only and exc.start > len(data) - 4:
            return ""  # a multi-byte character cut at the end of the sample
        raise _usage(f"{shown}: not UTF-8 text; expected a {what} file") from None


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


async def _train(cmd: Any, wait: bool, json_out: bool) -> int:
    from ktrdr.cli import client
    from ktrdr.cli._live import check_locally, exit_code, follow, print_final

    check_locally(cmd)
    async with client() as c:
        await c.submit(cmd)
        if not wait:
            typer.echo(json.dumps({"op_id": cmd.op_id}) if json_out else cmd.op_id)
            return 0
        view = await follow(c, cmd.op_id, json_out=json_out)
    print_final(view, json_out=json_out)
    if view.status == "completed" and not json_out and view.result:
        r = view.result
        tm, test, res = r.get("training_metrics", {}), r.get("test_metrics", {}), r.get("resource_usage", {})
        typer.echo(f"  epochs {tm.get('epochs_completed')} (best {tm.get('best_epoch')}, early stop "
                   f"{tm.get('early_stopped')}), train loss {tm.get('final_train_loss', 0):.4f}, val loss "
                   f"{tm.get('final_val_loss', 0):.4f}")
        typer.echo(f"  test accuracy {test.get('test_accuracy', 0):.3f}, f1 {test.get('f1_score', 0):.3f}; "
                   f"device {res.get('device')} ({res.get('training_mode')})")
        typer.echo(f"  model: {r.get('artifacts', {}).get('model_path')}")
    return exit_code(view)


# ------------------------------------------------------------------------------------------ models
@models_app.command("list")
def models_list(json_out: bool = JSON) -> None:
    """Trained models under KTRDR_HOME/models."""
    from ktrdr.training.registry import list_models

    items = list_models(settings().models_dir)
    if json_out:
        _echo_json(items)
        return
    if not items:
        typer.echo("no models yet (try `ktrdr train strategies/mlp_rsi_aapl.yaml`)")
    for it in items:
        typer.echo("  ".join(f"{k}={v}" for k, v in it.items() if not isinstance(v, dict | list)))


@models_app.command("show")
def models_show(name: str = typer.Argument(..., help="strategy/SYMBOLS_tf[_vN] or a path.")) -> None:
    """A model's metadata and metrics."""
    from ktrdr.errors import KtrdrError
    from ktrdr.training.registry import show_model

    try:
        _echo_json(show_model(settings().models_dir, name))
    except KtrdrError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


# ------------------------------------------------------------------------------------------ gateway
@app.command("sim-gateway")
def sim_gateway(host: str = typer.Option("127.0.0.1"), port: int = typer.Option(4002),
                latency: float = typer.Option(0.0, help="Seconds of latency per request."),
                time_scale: float = typer.Option(1.0, help="Scale IB's pacing windows (tests)."),
                csv_dir: Path | None = typer.Option(None, help="Replay {SYMBOL}_{tf}.csv files from here.")) -> None:
    """Run the simulated IB gateway (TWS wire protocol; serves simulated data, marked as such)."""
    from ktrdr.ib.sim.__main__ import main as sim_main

    if not 0 <= port <= 65535:
        raise _usage(f"--port {port}: not a port number (0..65535)")
    if not 0 <= latency <= 3600 or not 1e-4 <= time_scale <= 100:
        raise _usage("--latency must be 0..3600 s and --time-scale 0.0001..100")
    argv = ["--host", host, "--port", str(port), "--latency", str(latency), "--time-scale", str(time_scale)]
    if csv_dir is not None:
        argv += ["--csv-dir", str(csv_dir)]
    raise typer.Exit(sim_main(argv) or 0)
