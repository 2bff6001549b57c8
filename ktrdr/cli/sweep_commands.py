"""`ktrdr sweep STRATEGY.yaml --param PATH=VALUES ...`: many trainings of one strategy as one workflow
(cmd.training.sweep) with live progress; its result is a leaderboard, printed here and by `ops show`.
Bad input (a PATH the strategy does not have, VALUES that is no list, a grid over the cap, a value
out of its field's bounds, --max-parallel out of its bounds) is refused before anything is created:
one line, exit 2. `register` adds it to the app.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from events.bounds import DEFAULT_SWEEP_PARALLEL, MAX_SWEEP_PARALLEL
from ktrdr.cli._common import (
    JSON,
    Starting,
    check_pool,
    run_async,
    starting_options,
    usage,
)

RANK_CHOICES = ("val_loss", "test_accuracy", "sharpe")


@starting_options
def sweep(
    strategy_file: Path = typer.Argument(..., metavar="STRATEGY.yaml"),
    param: list[str] = typer.Option(..., "--param", "-p", metavar="PATH=VALUES",
                                    help="A strategy field and the values it takes, a JSON/YAML list, e.g. "
                                    "model.training.learning_rate='[0.001,0.0003]'; repeat for a grid (the "
                                    "product of every --param)."),
    symbols: str | None = typer.Option(None, help="Comma-separated; default: the strategy's."),
    start: str | None = typer.Option(None, help="YYYY-MM-DD (UTC); default: one year before --end."),
    end: str | None = typer.Option(None, help="YYYY-MM-DD (UTC); default: now."),
    epochs: int | None = typer.Option(None, help="Override the strategy's epochs (every variant)."),
    max_parallel: int = typer.Option(DEFAULT_SWEEP_PARALLEL, "--max-parallel", "-k",
                                     help=f"Trainings running at once (1 to {MAX_SWEEP_PARALLEL}); the others "
                                     "wait queued in the sweep."),
    backtest: bool = typer.Option(False, "--backtest", help="Backtest each trained model on its held-out test "
                                  "period (default costs)."),
    rank_by: str = typer.Option("val_loss", "--rank-by", help="val_loss (lower first), test_accuracy or sharpe "
                                "(higher first; sharpe needs --backtest)."),
    on: str = typer.Option("any", "--on", help="The trainer pool: any, cpu, gpu or a KTRDR_POOLS name."),
    data: str = typer.Option("full", "--data", help="full: load missing bars first (once for all variants); "
                                                   "local: use stored bars only; none: no data step."),
    *,
    opts: Starting,
    json_out: bool = JSON,
) -> None:
    """Sweep a strategy's parameters: one operation whose children load the data once, then train one
    variant each (at most --max-parallel at a time), then with --backtest backtest each model; the
    result is a leaderboard sorted by --rank-by. A failed variant is a row, not the end of the sweep.
    Ctrl+C cancels the whole sweep (exit 130)."""
    from events.messages import RunSweep, SweepParam
    from events.subjects import new_op_id
    from ktrdr.cli.domain_commands import _norm, _split, training_inputs
    from ktrdr.training.sweep import SweepError, parse_values

    text, start_dt, end_dt = training_inputs(strategy_file, start, end, epochs)
    if not 1 <= max_parallel <= MAX_SWEEP_PARALLEL:
        raise usage(f"--max-parallel must be between 1 and {MAX_SWEEP_PARALLEL}, got {max_parallel}")
    if rank_by not in RANK_CHOICES:
        raise usage(f"--rank-by {rank_by[:20]!r}: expected one of {', '.join(RANK_CHOICES)}")
    if rank_by == "sharpe" and not backtest:
        raise usage("--rank-by sharpe needs --backtest (the Sharpe ratio comes from each model's backtest)")
    if data not in ("full", "local", "none"):
        raise usage(f"--data {data[:20]!r}: expected full, local or none")
    params: list[SweepParam] = []
    for p in param:
        path, sep, values = p.partition("=")
        if not sep or not path.strip():
            raise usage(f"--param {p[:60]!r}: expected PATH=VALUES, e.g. model.training.learning_rate='[0.001,0.0003]'")
        try:
            params.append(SweepParam(path=path.strip(), values=parse_values(values, path.strip()[:80])))
        except SweepError as exc:
            raise usage(str(exc)) from None
    cmd = RunSweep(op_id=new_op_id("training"), strategy_path=str(strategy_file), strategy_yaml=text, params=params,
                   symbols=[_norm(s, "1h")[0] for s in _split(symbols)], start=start_dt, end=end_dt, epochs=epochs,
                   pool=check_pool(on), **opts.fields, data_mode=data,  # type: ignore[arg-type]
                   max_parallel=max_parallel, backtest=backtest, rank_by=rank_by)  # type: ignore[arg-type]
    run_async(_sweep(cmd, opts.wait, json_out))


async def _sweep(cmd: Any, wait: bool, json_out: bool) -> int:
    from ktrdr.cli._live import run_command

    return await run_command(cmd, wait=wait, json_out=json_out, summary=leaderboard_lines)


def _fmt(v: Any, spec: str) -> str:
    return format(v, spec) if isinstance(v, int | float) and not isinstance(v, bool) else "-"


def _params_text(params: Any) -> str:
    import json

    if not isinstance(params, dict):
        return ""
    return " ".join(f"{k.rsplit('.', 1)[-1]}={json.dumps(v, separators=(',', ':'))}" for k, v in params.items())


def leaderboard_lines(r: dict[str, Any]) -> list[str]:
    """A sweep's leaderboard as a table, best first (nothing for another result)."""
    rows = r.get("leaderboard")
    if not isinstance(rows, list):
        return []
    backtested = any(isinstance(row, dict) and "sharpe" in row for row in rows)
    head = f"  {'rank':>4} {'var':>3}  {'status':<10} {'val_loss':>8} {'test_acc':>8}"
    if backtested:
        head += f" {'sharpe':>7} {'return':>8}"
    lines = [f"  leaderboard ({r.get('completed')}/{r.get('variants')} variants completed, ranked by "
             f"{r.get('rank_by')}):", head + "  model  params"]
    for rank, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            continue
        done = row.get("status") == "completed"
        line = (f"  {rank if done else '-':>4} {row.get('variant'):>3}  {str(row.get('status'))[:10]:<10} "
                f"{_fmt(row.get('val_loss'), '8.4f')} {_fmt(row.get('test_accuracy'), '8.3f')}")
        if backtested:
            line += f" {_fmt(row.get('sharpe'), '7.2f')} {_fmt(row.get('total_return'), '+8.2%')}"
        line += f"  {row.get('model') or '-'}  {_params_text(row.get('params'))}"
        if row.get("error") and not done:
            line += f"  ({str(row['error'])[:120]})"
        lines.append(line)
    return lines


def register(app: typer.Typer) -> None:
    app.command()(sweep)
