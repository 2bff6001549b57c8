"""`ktrdr backtest MODEL_REF`: a backtest operation with live progress, and the checks that refuse bad
input before anything is created (one line, exit 2): an unknown or malformed model ref, symbols the
model was not trained on, a range with no stored bars, costs or capital out of bounds (the bounds are
the command's own, events/bounds.py). `register` adds it to the app.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import typer

from events.bounds import (
    DEFAULT_BACKTEST_CAPITAL,
    DEFAULT_COMMISSION,
    DEFAULT_SLIPPAGE_BPS,
    MAX_BACKTEST_CAPITAL,
    MAX_COMMISSION,
    MAX_SLIPPAGE_BPS,
)
from ktrdr.cli._common import (
    JSON,
    Starting,
    check_pool,
    check_range,
    parse_date,
    run_async,
    starting_options,
)


@starting_options
def backtest(
    model: str = typer.Argument(..., metavar="MODEL_REF",
                                help="strategy, strategy/SYMBOLS_tf (its latest) or strategy/SYMBOLS_tf_vN."),
    symbols: str | None = typer.Option(None, help="Comma-separated; default: the model's own."),
    start: str | None = typer.Option(None, help="YYYY-MM-DD (UTC); default: the first stored bar."),
    end: str | None = typer.Option(None, help="YYYY-MM-DD (UTC), exclusive; default: after the last stored bar."),
    capital: float = typer.Option(DEFAULT_BACKTEST_CAPITAL,
                                  help=f"Starting cash (> 0, at most {MAX_BACKTEST_CAPITAL:g})."),
    commission: float = typer.Option(DEFAULT_COMMISSION, help="Fraction of the traded notional per fill "
                                     f"(0 to {MAX_COMMISSION:g}; 0.001 is 0.1%)."),
    slippage_bps: float = typer.Option(DEFAULT_SLIPPAGE_BPS, "--slippage-bps",
                                       help="Basis points of the price per fill, against you "
                                       f"(0 to {MAX_SLIPPAGE_BPS:g})."),
    on: str = typer.Option("any", "--on", help="The backtester pool: any, cpu, gpu or a KTRDR_POOLS name."),
    *,
    opts: Starting,
    json_out: bool = JSON,
) -> None:
    """Backtest a trained model on stored bars: signals at each bar's close, filled at that close, held
    from the next bar; long only; commission and slippage on every fill. Prints the figures against
    buy-and-hold; the equity curve is stored beside the model. Ctrl+C cancels (exit 130)."""
    from events.messages import RunBacktest
    from events.subjects import new_op_id

    start_dt, end_dt = parse_date(start, "start"), parse_date(end, "end")
    check_range(start_dt, end_dt)
    cmd = RunBacktest(op_id=new_op_id("backtest"), model=model, symbols=_split(symbols), start=start_dt, end=end_dt,
                      capital=capital, commission=commission, slippage_bps=slippage_bps, pool=check_pool(on),
                      **opts.fields)
    run_async(_backtest(cmd, opts.wait, json_out))


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


async def check_inputs(c: Any, cmd: Any) -> tuple[str, list[str], str]:
    """(the model's version name, the symbols, its base timeframe), or a ValidationError saying what is
    wrong: the model, the symbols or the range. Reads MODELS and BARS only."""
    from ktrdr.backtest.run import backtest_symbols
    from ktrdr.data.bars_store import BarStore
    from ktrdr.errors import ValidationError
    from ktrdr.training.model_store import ModelStore

    store = ModelStore(c.js)
    prefix = await store.resolve(cmd.model)
    meta = await store.read_json(prefix, "metadata.json")
    feats = await store.read_json(prefix, "features.json")
    model_symbols = [s for s in meta.get("symbols") or [] if isinstance(s, str)]
    base = feats.get("base_timeframe") or (meta.get("timeframes") or [None])[0]
    if not model_symbols or not isinstance(base, str):
        raise ValidationError(f"{prefix}: its metadata names no symbols or timeframe; not a model a backtest can run")
    symbols = backtest_symbols(cmd.model, cmd.symbols, model_symbols)
    bars = BarStore(c.js)
    for sym in symbols:
        m = await bars.metadata(sym, base)
        if m is None or not m.start or not m.end or m.rows == 0:
            raise ValidationError(f"no {base} bars stored for {sym}", hint=f"load them first: ktrdr data load {sym} "
                                  f"--timeframe {base}")
        first, last = datetime.fromisoformat(m.start), datetime.fromisoformat(m.end)
        if (cmd.start is not None and cmd.start > last) or (cmd.end is not None and cmd.end <= first):
            want = f"{cmd.start:%Y-%m-%d}" if cmd.start else "the start"
            want += f" to {cmd.end:%Y-%m-%d}" if cmd.end else " on"
            raise ValidationError(f"no {base} bars for {sym} from {want}: stored are {first:%Y-%m-%d %H:%M} to "
                                  f"{last:%Y-%m-%d %H:%M}", hint="pick a range inside them, or load more")
    return prefix, symbols, base


async def _backtest(cmd: Any, wait: bool, json_out: bool) -> int:
    from ktrdr.cli._live import run_command

    return await run_command(cmd, wait=wait, json_out=json_out, check=check_inputs, summary=summary_lines)


def _pct(v: Any) -> str:
    return f"{v * 100:+.2f}%" if isinstance(v, int | float) else "-"


def _num(v: Any, fmt: str = ".2f") -> str:
    return format(v, fmt) if isinstance(v, int | float) else "-"


def figure_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, strategy, buy & hold) of a completed backtest's result, formatted: the CLI's table and
    the page's."""
    s, b = r.get("strategy") or {}, r.get("buy_and_hold") or {}
    return [("total return", _pct(s.get("total_return")), _pct(b.get("total_return"))),
            ("CAGR", _pct(s.get("cagr")), _pct(b.get("cagr"))),
            ("Sharpe", _num(s.get("sharpe")), _num(b.get("sharpe"))),
            ("Sortino", _num(s.get("sortino")), _num(b.get("sortino"))),
            ("max drawdown", _pct(s.get("max_drawdown")), _pct(b.get("max_drawdown"))),
            ("trades", str(s.get("trades", "-")), str(b.get("trades", "-"))),
            ("win rate", _pct(s.get("win_rate")), "-"),
            ("profit factor", _num(s.get("profit_factor")), "-"),
            ("exposure", _pct(s.get("exposure")), _pct(b.get("exposure")))]


def summary_lines(r: dict[str, Any]) -> list[str]:
    """The figures of a completed backtest, strategy against buy-and-hold, as a few lines."""
    s, rows = r.get("strategy") or {}, figure_rows(r)
    out = [f"  {r.get('model')} on {', '.join(r.get('symbols') or [])} [{r.get('timeframe')}], "
           f"{s.get('start', '?')[:16]} to {s.get('end', '?')[:16]}, {r.get('bars', 0):,} bars"
           f"{'  ** SIMULATED data **' if r.get('simulated') else ''}",
           f"  {'':<14}{'strategy':>12}{'buy & hold':>12}"]
    out += [f"  {name:<14}{a:>12}{b_:>12}" for name, a, b_ in rows]
    if s.get("max_drawdown_trough"):
        back = s.get("max_drawdown_recovered")
        out.append(f"  worst drawdown from {s['max_drawdown_peak'][:16]} to {s['max_drawdown_trough'][:16]}, "
                   f"{'recovered ' + back[:16] if back else 'not recovered'}")
    curve = (r.get("curve") or {}).get("object")
    if curve:
        out.append(f"  equity curve: MODELS/{curve}")
    return out


def register(app: typer.Typer) -> None:
    app.command()(backtest)
