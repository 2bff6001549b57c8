"""Data, strategy, training, model and gateway commands; `register` adds them to the app.

Everything stored lives in NATS object buckets, so these work from any machine that reaches the
server: `data show/range/export` read BARS (through this machine's digest cache in KTRDR_HOME),
`data import` merges into BARS under the series' writer lease, `models list/show/pull` read MODELS.
`data load` and `train` are operations: they go through NATS like every long operation.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import typer

from events.bounds import (
    DEFAULT_UNIVERSE_PARALLEL,
    MAX_EPOCHS,
    MAX_STRATEGY_BYTES,
    MAX_SYMBOLS_FILE_BYTES,
    MAX_UNIVERSE_PARALLEL,
    Timeframe,
)
from ktrdr.cli._common import (
    JSON,
    Starting,
    check_pool,
    check_range,
    client,
    parse_date,
    run_async,
    starting_options,
    usage,
)
from ktrdr.config import settings

TF_OPTION = typer.Option("1h", "--timeframe", "-t", help="1m, 5m, 15m, 30m, 1h, 4h, 1d or 1w.")


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, default=str, indent=2))


# ------------------------------------------------------------------------------------------ data
@starting_options
def data_load(
    symbol: str | None = typer.Argument(None, help="One symbol (or use --symbols / --symbols-file)."),
    timeframe: str = TF_OPTION,
    symbols: str | None = typer.Option(None, "--symbols", help="A universe: comma-separated symbols."),
    symbols_file: Path | None = typer.Option(None, "--symbols-file",
                                             help="A universe: a file, one symbol a line (# comments)."),
    max_parallel: int = typer.Option(DEFAULT_UNIVERSE_PARALLEL, "--max-parallel",
                                     help=f"Symbols loading at once (1-{MAX_UNIVERSE_PARALLEL}); the rest queue."),
    mode: str = typer.Option("tail", help="local, tail (last 30 days to now), backfill or full."),
    start: str | None = typer.Option(None, help="YYYY-MM-DD (UTC)."),
    end: str | None = typer.Option(None, help="YYYY-MM-DD (UTC)."),
    on: str = typer.Option("any", "--on", help="The ib pool to load through (one per IB account/gateway)."),
    *,
    opts: Starting,
    json_out: bool = JSON,
) -> None:
    """Load bars from IB (or the simulated gateway) with live progress; Ctrl+C cancels."""
    from events.messages import LoadData
    from events.subjects import new_op_id
    from ktrdr.cli._live import run_command

    if mode not in ("local", "tail", "backfill", "full"):
        raise usage(f"--mode {mode[:20]!r}: expected local, tail, backfill or full")
    if not 1 <= max_parallel <= MAX_UNIVERSE_PARALLEL:
        raise usage(f"--max-parallel {max_parallel}: expected 1 to {MAX_UNIVERSE_PARALLEL}")
    universe = _universe(symbol, symbols, symbols_file)
    sym, tf = _norm(universe[0], timeframe)
    start_dt, end_dt = parse_date(start, "start"), parse_date(end, "end")
    check_range(start_dt, end_dt)
    cmd = LoadData(op_id=new_op_id("data"), symbol=sym, timeframe=tf, mode=mode,  # type: ignore[arg-type]
                   start=start_dt, end=end_dt, pool=check_pool(on), **opts.fields,
                   symbols=universe if len(universe) > 1 else [], max_parallel=max_parallel)
    run_async(run_command(cmd, wait=opts.wait, json_out=json_out))


def _bars(c: Any) -> Any:
    from ktrdr.data.bars_store import BarStore
    from ktrdr.data.store import DigestCache

    s = settings()
    return BarStore(c.js, DigestCache(s.cache_dir, s.cache_max_bytes, s.disk_min_free_bytes))


def _universe(symbol: str | None, symbols: str | None, symbols_file: Path | None) -> list[str]:
    """The symbols to load: exactly one of SYMBOL, --symbols and --symbols-file, each checked."""
    from ktrdr.commands import check_symbols, parse_symbols_file
    from ktrdr.errors import ValidationError

    given = [g for g in (symbol, symbols, symbols_file) if g is not None]
    if len(given) != 1:
        raise usage("give one of SYMBOL, --symbols or --symbols-file")
    try:
        if symbols_file is not None:
            try:
                data = symbols_file.read_bytes()[:MAX_SYMBOLS_FILE_BYTES + 1]
            except OSError as exc:
                raise usage(f"--symbols-file {str(symbols_file)[:200]}: {exc.strerror}") from exc
            return parse_symbols_file(data, f"--symbols-file {symbols_file.name[:80]}")
        if symbols is not None:
            return check_symbols(_split(symbols), "--symbols")
        return check_symbols([symbol or ""], "symbol")
    except ValidationError as exc:
        raise usage(str(exc)) from exc


def _norm(symbol: str, timeframe: str) -> tuple[str, Timeframe]:
    from ktrdr.commands import check_symbol, check_timeframe
    from ktrdr.errors import ValidationError

    try:
        return check_symbol(symbol), check_timeframe(timeframe)
    except ValidationError as exc:
        raise usage(str(exc)) from exc


def _none_stored(sym: str, tf: str) -> int:
    typer.echo(f"no {tf} data stored for {sym} (try `ktrdr data load {sym} -t {tf}`)", err=True)
    return 1


def data_show(symbol: str, timeframe: str = TF_OPTION, rows: int = typer.Option(5, help="Rows from each end."),
              json_out: bool = JSON) -> None:
    """A stored series: source (simulated data is marked), range, and its first and last bars."""
    sym, tf = _norm(symbol, timeframe)
    if not 0 <= rows <= 10_000:
        raise usage(f"--rows must be between 0 and 10000, got {rows}")
    run_async(_data_show(sym, tf, rows, json_out))


async def _data_show(sym: str, tf: str, rows: int, json_out: bool) -> int:
    import msgspec
    import pandas as pd


    async with client() as c:
        stored = await _bars(c).load(sym, tf)
    meta, df = stored.meta, stored.df
    if meta is None:
        return _none_stored(sym, tf)
    if json_out:
        _echo_json({"metadata": msgspec.to_builtins(meta),
                    "head": json.loads(df.head(rows).reset_index().to_json(orient="records", date_format="iso")),
                    "tail": json.loads(df.tail(rows).reset_index().to_json(orient="records", date_format="iso"))})
        return 0
    sim = "  ** SIMULATED DATA (sim gateway) **" if meta.simulated else ""
    typer.echo(f"{sym} {tf}: {len(df):,} bars, {meta.start} .. {meta.end}, source {meta.source}{sim}")
    with pd.option_context("display.width", 120):
        typer.echo(df.head(rows).to_string())
        if len(df) > rows:
            typer.echo("...")
            typer.echo(df.tail(rows).to_string(header=False))
    return 0


def data_range(symbol: str, timeframe: str = TF_OPTION, json_out: bool = JSON) -> None:
    """The stored range of a series (from its metadata: nothing is downloaded)."""
    sym, tf = _norm(symbol, timeframe)
    run_async(_data_range(sym, tf, json_out))


async def _data_range(sym: str, tf: str, json_out: bool) -> int:

    async with client() as c:
        meta = await _bars(c).metadata(sym, tf)
    if meta is None or not meta.rows:
        typer.echo(f"no {tf} data stored for {sym}", err=True)
        return 1
    out = {"symbol": sym, "timeframe": tf, "start": meta.start, "end": meta.end, "rows": meta.rows,
           "source": meta.source, "simulated": meta.simulated, "digest": meta.digest}
    if json_out:
        _echo_json(out)
    else:
        typer.echo(f"{sym} {tf}: {out['start']} .. {out['end']} ({meta.rows:,} bars, source {meta.source})")
    return 0


def data_import(file: Path, symbol: str = typer.Option(..., "--symbol", "-s"), timeframe: str = TF_OPTION,
                json_out: bool = JSON) -> None:
    """Import a CSV (date column or index + open/high/low/close/volume) into BARS, merged with what is
    stored. A bad file is rejected with the row and the reason, and the stored series is left untouched."""
    from ktrdr.data.csv_io import import_csv
    from ktrdr.errors import ValidationError

    sym, tf = _norm(symbol, timeframe)
    read_text_file(file, "CSV", max_bytes=512 * 1024 * 1024, head_only=True)
    try:
        df = import_csv(file)
    except ValidationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    run_async(_data_import(sym, tf, df, json_out))


async def _data_import(sym: str, tf: str, df: Any, json_out: bool) -> int:
    import os
    import socket

    from ktrdr.data.series_lease import series_lease

    async with client() as c:
        # One writer per series: an import waits for a load of the same series (and vice versa).
        lease = await series_lease(c.js, sym, tf, holder=f"cli-{socket.gethostname()}-{os.getpid()}")
        async with lease.held(on_wait=lambda h: typer.echo(
                f"waiting for {h.op_id or h.holder} writing {sym} {tf} ...", err=True)):
            added, _stored = await _bars(c).merge(sym, tf, df, "import")
    out = {"symbol": sym, "timeframe": tf, "rows_read": len(df), "bars_added": added}
    if json_out:
        _echo_json(out)
    else:
        typer.echo(f"imported {len(df):,} rows into {sym} {tf} ({added:,} new bars)")
    return 0


def data_export(symbol: str, timeframe: str = TF_OPTION,
                out: Path = typer.Option(..., "--out", "-o", help="CSV file to write."),
                start: str | None = typer.Option(None), end: str | None = typer.Option(None)) -> None:
    """Export a stored series to CSV."""
    sym, tf = _norm(symbol, timeframe)
    start_dt, end_dt = parse_date(start, "start"), parse_date(end, "end")
    check_range(start_dt, end_dt)
    if out.is_dir():
        raise usage(f"--out {str(out)[:200]}: is a directory; name a CSV file")
    if not out.parent.is_dir():
        raise usage(f"--out {str(out)[:200]}: the folder {str(out.parent)[:200]} does not exist")
    run_async(_data_export(sym, tf, out, start_dt, end_dt))


async def _data_export(sym: str, tf: str, out: Path, start: datetime | None, end: datetime | None) -> int:
    import asyncio

    from ktrdr import disk
    from ktrdr.data.store import write_csv

    async with client() as c:
        df = await _bars(c).read(sym, tf, start, end)
    try:
        n = await asyncio.to_thread(write_csv, df, out)
    except OSError as exc:
        if disk.is_no_space(exc):
            raise disk.full(out.parent, f"--out {str(out)[:200]} not written; free space there or "
                            "write elsewhere") from None
        raise usage(f"--out {str(out)[:200]}: cannot write it ({exc.strerror or exc})") from None
    typer.echo(f"wrote {n:,} bars to {out}")
    return 0


# ------------------------------------------------------------------------------------------ strategies
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
def training_inputs(strategy_file: str, start: str | None, end: str | None,
                    epochs: int | None) -> tuple[str, datetime, datetime]:
    """What `train` and `sweep` read and check alike: the strategy file's text and the date range
    (default: the year up to this hour), and --epochs within its bound."""
    text = read_text_file(strategy_file, "strategy", max_bytes=MAX_STRATEGY_BYTES)
    end_dt = parse_date(end, "end") or datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start_dt = parse_date(start, "start") or end_dt - timedelta(days=365)
    check_range(start_dt, end_dt)
    if epochs is not None and not 1 <= epochs <= MAX_EPOCHS:
        raise usage(f"--epochs must be between 1 and {MAX_EPOCHS}, got {epochs}")
    return text, start_dt, end_dt


@starting_options
def train(
    strategy_file: Path = typer.Argument(..., metavar="STRATEGY.yaml"),
    symbols: str | None = typer.Option(None, help="Comma-separated; default: the strategy's."),
    timeframes: str | None = typer.Option(None, help="Comma-separated; only the strategy's own (the default): "
                                          "its features are defined per timeframe, so edit its "
                                          "training_data.timeframes to train on others."),
    start: str | None = typer.Option(None, help="YYYY-MM-DD (UTC); default: one year before --end."),
    end: str | None = typer.Option(None, help="YYYY-MM-DD (UTC); default: now."),
    epochs: int | None = typer.Option(None, help="Override the strategy's epochs."),
    on: str = typer.Option("any", "--on", help="The trainer pool: any, cpu, gpu or a KTRDR_POOLS name."),
    data: str = typer.Option("full", "--data", help="full: load missing bars first; local: use stored bars "
                                                   "only; none: no data step (a single training operation)."),
    backtest: bool = typer.Option(False, "--backtest", help="Then backtest the trained model on its held-out "
                                  "test period (default costs; `ktrdr backtest` for others)."),
    *,
    opts: Starting,
    json_out: bool = JSON,
) -> None:
    """Train a strategy: one operation whose children load the missing data, then train (then, with
    --backtest, backtest the model on the test period), with one live progress display. Ctrl+C cancels
    the whole workflow (exit 130)."""
    text, start_dt, end_dt = training_inputs(strategy_file, start, end, epochs)
    if data not in ("full", "local", "none"):
        raise usage(f"--data {data[:20]!r}: expected full, local or none")
    from events.messages import StartTraining
    from events.subjects import new_op_id

    cmd = StartTraining(op_id=new_op_id("training"), strategy_path=str(strategy_file), strategy_yaml=text,
                        symbols=[_norm(s, "1h")[0] for s in _split(symbols)],
                        timeframes=[_norm("AAPL", t)[1] for t in _split(timeframes)], start=start_dt, end=end_dt,
                        epochs=epochs, pool=check_pool(on), **opts.fields,
                        data_mode=data, backtest=backtest)  # type: ignore[arg-type]
    run_async(_train(cmd, opts.wait, json_out))


def read_text_file(path: Path, what: str, *, max_bytes: int, head_only: bool = False) -> str:
    """A user's text file, or one line saying why not (missing, a directory, too big, binary)."""
    shown = str(path)[:200] or "''"
    if not str(path).strip():
        raise usage(f"empty {what} path")
    try:
        if not path.exists():
            raise usage(f"{shown}: no such file")
        if path.is_dir():
            raise usage(f"{shown}: is a directory; expected a {what} file")
        size = path.stat().st_size
        if size > max_bytes:
            raise usage(f"{shown}: {size:,} bytes; a {what} file is at most {max_bytes:,} bytes")
        with open(path, "rb") as fh:
            data = fh.read(65536 if head_only else max_bytes)
    except OSError as exc:
        raise usage(f"{shown}: cannot read it ({exc.strerror or exc})") from None
    if b"\0" in data:
        raise usage(f"{shown}: a binary file; expected a {what} file (text)")
    if not data.strip():
        raise usage(f"{shown}: empty; expected a {what} file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if head_only and exc.start > len(data) - 4:
            return ""  # a multi-byte character cut at the end of the sample
        raise usage(f"{shown}: not UTF-8 text; expected a {what} file") from None


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


async def _train(cmd: Any, wait: bool, json_out: bool) -> int:
    from ktrdr.cli._live import run_command

    return await run_command(cmd, wait=wait, json_out=json_out, summary=_training_summary)


def _training_summary(r: dict[str, Any]) -> list[str]:
    tm, test, res = r.get("training_metrics", {}), r.get("test_metrics", {}), r.get("resource_usage", {})
    name = r.get("artifacts", {}).get("name")
    return [f"  epochs {tm.get('epochs_completed')} (best {tm.get('best_epoch')}, early stop "
            f"{tm.get('early_stopped')}), train loss {tm.get('final_train_loss', 0):.4f}, val loss "
            f"{tm.get('final_val_loss', 0):.4f}",
            f"  test accuracy {test.get('test_accuracy', 0):.3f}, f1 {test.get('f1_score', 0):.3f}; "
            f"device {res.get('device')} ({res.get('training_mode')})",
            f"  model: {name} in MODELS (`ktrdr models show {name}`, `ktrdr models pull {name} -o DIR`)",
            *_backtest_summary(r.get("backtest"))]


def _backtest_summary(bt: Any) -> list[str]:
    """A workflow's backtest child, as `ktrdr backtest` prints its result (nothing without one)."""
    if not isinstance(bt, dict):
        return []
    from ktrdr.cli.backtest_commands import summary_lines

    return [f"  backtest {bt.get('op_id')} on the held-out test period:", *summary_lines(bt)]


# ------------------------------------------------------------------------------------------ models
def models_list(json_out: bool = JSON) -> None:
    """Trained models in MODELS (from any machine that reaches the NATS server)."""
    run_async(_models_list(json_out))


async def _models_list(json_out: bool) -> int:
    from ktrdr.training.model_store import ModelStore

    async with client() as c:
        items = await ModelStore(c.js).list()
    if json_out:
        _echo_json(items)
        return 0
    if not items:
        typer.echo("no models yet (try `ktrdr train strategies/mlp_rsi_aapl.yaml`)")
    for it in items:
        acc = it.get("test_accuracy")
        typer.echo("  ".join([
            f"{it['name']}{' (latest)' if it.get('latest') else ''}", f"created {it.get('created') or '?'}",
            f"device {it.get('device') or '?'} on {it.get('host') or '?'} ({it.get('training_mode') or '?'}, "
            f"pool {it.get('pool') or '?'})", f"test accuracy {acc:.3f}" if isinstance(acc, float) else "",
            "SIMULATED data" if it.get("simulated") else ""]).rstrip())
    return 0


def models_show(name: str = typer.Argument(..., help="strategy, strategy/SYMBOLS_tf (latest) or .../..._vN."),
                json_out: bool = JSON) -> None:
    """A model's metadata, metrics and result, with the per-epoch history as a table."""
    run_async(_models_show(name, json_out))


async def _models_show(name: str, json_out: bool) -> int:
    from ktrdr.training.model_store import ModelStore

    async with client() as c:
        shown = await ModelStore(c.js).show(name)
    if json_out:
        _echo_json(shown)
        return 0
    meta, result = shown["metadata"], shown["result"]
    tm, test = result.get("training_metrics") or {}, result.get("test_metrics") or {}
    session, resources = result.get("session_info") or {}, result.get("resource_usage") or {}
    typer.echo(f"{shown['name']}  ({shown['model_bytes'] or 0:,} bytes of weights, {shown['model_digest']})")
    typer.echo(f"  trained {meta.get('created')} by {session.get('actor') or meta.get('actor')} on "
               f"{session.get('host') or meta.get('host')} (pool {session.get('pool') or meta.get('pool')}, "
               f"{session.get('training_mode') or meta.get('training_mode')}); device {resources.get('device')}"
               f"{' ' + str(resources.get('gpu_name')) if resources.get('gpu_name') else ''}; gpu_used "
               f"{result.get('gpu_used')}; operation {meta.get('op_id')}")
    typer.echo(f"  symbols {', '.join(meta.get('symbols') or [])} [{', '.join(meta.get('timeframes') or [])}]"
               f"{'  ** SIMULATED data **' if meta.get('simulated') else ''}")
    if test:
        typer.echo(f"  test accuracy {test.get('test_accuracy', 0):.3f}, loss {test.get('test_loss', 0):.4f}, "
                   f"f1 {test.get('f1_score', 0):.3f}; best epoch {tm.get('best_epoch')} of "
                   f"{tm.get('epochs_completed')} (early stop {tm.get('early_stopped')})")
    history = tm.get("history") or (shown["metrics"] or {}).get("history") or []
    if history:
        typer.echo("  epoch  train loss  val loss  train acc  val acc  learning rate  seconds")
        for h in history:
            typer.echo(f"  {h.get('epoch', 0):>5}  {h.get('train_loss', 0):>10.4f}  {h.get('val_loss', 0):>8.4f}"
                       f"  {h.get('train_accuracy', 0):>9.3f}  {h.get('val_accuracy', 0):>7.3f}"
                       f"  {h.get('learning_rate', 0):>13.2g}  {h.get('epoch_time_s', 0):>7.2f}")
    backtests = shown.get("backtests") or []
    if backtests:
        typer.echo(f"  backtests ({len(backtests)}): operation, range, return (buy & hold), Sharpe, max drawdown, "
                   "trades")
        for b in backtests:
            typer.echo(f"  {b.get('op_id', '?')}  {str(b.get('start'))[:10]} to {str(b.get('end'))[:10]}  "
                       f"{pct(b.get('total_return'))} ({pct(b.get('buy_and_hold_return'))})  "
                       f"{b.get('sharpe', 0):.2f}  {pct(b.get('max_drawdown'))}  {b.get('trades', '?')}")
    return 0


def pct(v: Any) -> str:
    return f"{v:+.2%}" if isinstance(v, int | float) else "?"


def models_pull(name: str = typer.Argument(..., help="strategy, strategy/SYMBOLS_tf (latest) or .../..._vN."),
                out: Path = typer.Option(..., "--out", "-o", help="The folder to write into (created, with its "
                                         "parents, when it does not exist).")) -> None:
    """Download a model's files (model.pt, config.json, metrics.json, features.json, metadata.json,
    result.json) into a folder, made when missing (as `git clone` makes its target); nothing is
    written anywhere else."""
    if out.exists() and not out.is_dir():
        raise usage(f"-o {str(out)[:200]}: exists and is not a folder")
    run_async(_models_pull(name, out))


async def _models_pull(name: str, out: Path) -> int:
    from ktrdr.training.model_store import ModelStore

    async with client() as c:
        store = ModelStore(c.js)
        resolved = await store.resolve(name)  # an unknown model leaves no empty folder behind
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise usage(f"-o {str(out)[:200]}: cannot create the folder ({exc.strerror or exc})") from None
        resolved, paths = await store.pull(resolved, out)
    typer.echo(f"pulled {resolved} into {out}: {', '.join(p.name for p in paths)}")
    typer.echo(f"  weights checked: {store.verified.get(resolved, '?')}")
    return 0


# ------------------------------------------------------------------------------------------ gateway
def sim_gateway(host: str = typer.Option("127.0.0.1"), port: int = typer.Option(4002),
                latency: float = typer.Option(0.0, help="Seconds of latency per request."),
                time_scale: float = typer.Option(1.0, help="Scale IB's pacing windows (tests)."),
                csv_dir: Path | None = typer.Option(None, help="Replay {SYMBOL}_{tf}.csv files from here.")) -> None:
    """Run the simulated IB gateway (TWS wire protocol; serves simulated data, marked as such)."""
    from ktrdr.ib.sim.__main__ import main as sim_main

    if not 0 <= port <= 65535:
        raise usage(f"--port {port}: not a port number (0..65535)")
    if not 0 <= latency <= 3600 or not 1e-4 <= time_scale <= 100:
        raise usage("--latency must be 0..3600 s and --time-scale 0.0001..100")
    argv = ["--host", host, "--port", str(port), "--latency", str(latency), "--time-scale", str(time_scale)]
    if csv_dir is not None:
        argv += ["--csv-dir", str(csv_dir)]
    raise typer.Exit(sim_main(argv) or 0)


def register(app: typer.Typer, *, data: typer.Typer, strategies: typer.Typer, models: typer.Typer) -> None:
    """Add train and sim-gateway to the app, and their commands to the data, strategies and models groups."""
    data.command("load")(data_load)
    data.command("show")(data_show)
    data.command("range")(data_range)
    data.command("import")(data_import)
    data.command("export")(data_export)
    strategies.command("validate")(strategies_validate)
    strategies.command("list")(strategies_list)
    app.command()(train)
    models.command("list")(models_list)
    models.command("show")(models_show)
    models.command("pull")(models_pull)
    app.command("sim-gateway")(sim_gateway)
