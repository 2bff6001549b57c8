"""`ktrdr backtest` as a user runs it: the figures against buy-and-hold, and every bad input (an
unknown or malformed model, symbols it was not trained on, a range with no bars, negative or absurd
costs) refused in one line with exit 2 before anything is created."""

from __future__ import annotations

import pytest

from ktrdr.data.bars_store import BarStore
from ktrdr.training.model_store import ModelStore
from tests.backtest.conftest import STRATEGY, model_files
from tests.cli.test_bad_input import run_cli_table
from tests.cli.test_cli import cli_env, ktrdr
from tests.training.conftest import make_bars

BARS = make_bars(600, seed=3)  # 2024-01-01 to 2024-01-25, 1h


@pytest.fixture
async def stored(client) -> str:
    await BarStore(client.js).merge("AAPL", "1h", BARS, "sim")
    return (await ModelStore(client.js).save("test_small", ["AAPL"], ["1h"], model_files(STRATEGY, BARS)))["name"]


async def test_backtest_prints_figures_against_buy_and_hold_and_exits_0(start_actors, settings, stored) -> None:
    await start_actors("orchestrator", "backtester")
    rc, out, err = await ktrdr(settings, "backtest", "test_small", "--start", "2024-01-05", "--commission", "0.0005")
    assert rc == 0, err
    assert "Backtest completed: test_small/AAPL_1h_v1 total return" in out and "SIMULATED" in out
    lines = {ln.split()[0] + (" " + ln.split()[1] if ln.split()[0] in ("total", "max", "win", "profit") else ""): ln
             for ln in out.splitlines() if ln.strip()}
    assert "total return" in lines and "Sharpe" in lines and "max drawdown" in lines and "trades" in lines
    assert f"equity curve: MODELS/{stored}/backtest-" in out
    op_id = out.split(f"equity curve: MODELS/{stored}/", 1)[1].split(".parquet", 1)[0]
    rc, shown, err = await ktrdr(settings, "models", "show", stored)
    assert rc == 0, err
    assert "backtests (1):" in shown and op_id in shown  # the model lists its backtests


async def test_every_bad_backtest_input_is_one_line_exit_2_and_creates_nothing(start_actors, settings, client,
                                                                               stored) -> None:
    await start_actors("orchestrator", "backtester")
    table = [
        ["backtest", "nosuch"], ["backtest", "nosuch/AAPL_1h_v1"], ["backtest", "test_small/AAPL_1h_v9"],
        ["backtest", "../../etc/passwd"], ["backtest", "test_small/AAPL_1h_v1/model.pt"],
        ["backtest", "test_small", "--symbols", "MSFT"], ["backtest", "test_small", "--symbols", "AA PL"],
        ["backtest", "test_small", "--end", "2023-06-01"], ["backtest", "test_small", "--start", "2025-01-01"],
        ["backtest", "test_small", "--start", "2024-02-01", "--end", "2024-01-01"],
        ["backtest", "test_small", "--commission", "-0.001"], ["backtest", "test_small", "--commission", "0.5"],
        ["backtest", "test_small", "--slippage-bps", "-1"], ["backtest", "test_small", "--slippage-bps", "10000"],
        ["backtest", "test_small", "--capital", "0"], ["backtest", "test_small", "--capital", "1e15"],
        ["backtest", "test_small", "--capital", "nan"], ["backtest", "test_small", "--on", "*"],
    ]
    results = await run_cli_table(table, cli_env(settings))
    bad = []
    for args, (rc, out, err) in zip(table, results, strict=True):
        lines = [ln for ln in err.splitlines() if ln.strip()]
        if rc != 2 or "Traceback" in err + out or len(lines) != 1 or not lines[0].startswith("error:"):
            bad.append((args, rc, err[-300:]))
    assert bad == []
    assert await client.list_operations() == []  # nothing created
    assert await ModelStore(client.js).backtests(stored) == []
