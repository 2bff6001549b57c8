"""`ktrdr train --timeframes`: a strategy's features are defined per timeframe (the strategy's
training_data.timeframes, base timeframe first-class), so a training runs on exactly those; the flag
may only restate them. A command that cannot succeed is refused before anything starts: by the CLI
(one line, exit 2, nothing submitted) and by the orchestrator for any other client (rejected, no
data child planned), instead of loading every series first and failing in the trainer."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from events import subjects
from events.messages import StartTraining
from ktrdr.commands import validate
from tests.cli.test_cli import ktrdr
from tests.conftest import utc
from tests.helpers import wait_terminal

STRATEGY = Path(__file__).parents[2] / "strategies" / "mlp_rsi_aapl.yaml"  # AAPL, [1h]


def training(timeframes: list[str], symbols: tuple[str, ...] = ("AAPL",)) -> StartTraining:
    end = utc(2024, 6, 1)
    return StartTraining(op_id=subjects.new_op_id("training"), strategy_path=str(STRATEGY),
                         strategy_yaml=STRATEGY.read_text(), symbols=list(symbols), timeframes=timeframes,
                         start=end - timedelta(days=60), end=end)


def test_timeframes_may_only_restate_the_strategys() -> None:
    validate(training([]))  # the strategy's own
    validate(training(["1h"]))
    validate(training(["60m"]))  # the same timeframe, spelled otherwise
    for other in (["1h", "4h"], ["4h"], ["1d"]):
        try:
            validate(training(other))
        except Exception as exc:
            assert "timeframes" in str(exc) and "['1h']" in str(exc), exc
        else:
            raise AssertionError(f"{other} accepted for a strategy on ['1h']")


async def test_cli_refuses_other_timeframes_before_submitting(start_actors, settings, client) -> None:
    await start_actors("orchestrator", "job-manager")
    rc, out, err = await ktrdr(settings, "train", str(STRATEGY), "--symbols", "AAPL,MSFT", "--timeframes", "1h,4h")
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: timeframes") and "['1h']" in lines[0], err
    assert await client.list_operations() == []  # nothing submitted, so no data child either


async def test_orchestrator_rejects_other_timeframes_before_planning_children(start_actors, client) -> None:
    await start_actors("orchestrator", "job-manager")
    cmd = training(["1h", "4h"], symbols=("AAPL", "MSFT"))
    await client.submit(cmd)  # another client, without the CLI's check
    view = await wait_terminal(client, cmd.op_id)
    assert view.status == "rejected" and "timeframes" in (view.error or ""), view
    assert view.children == []
    assert [v.op_id for v in await client.list_operations()] == [cmd.op_id]


def test_help_says_what_timeframes_may_be() -> None:
    out = subprocess.run([sys.executable, "-m", "ktrdr", "train", "--help"], capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "NATS_URL"}, timeout=60,
                         check=True).stdout
    assert "--timeframes" in out and "the strategy's own" in " ".join(out.split())


@pytest.mark.slow
async def test_train_with_backtest_backtests_the_trained_model_on_its_test_period(start_actors, settings, client):
    """`ktrdr train --backtest`: one workflow, training then a backtest child of the model it saved on
    the held-out test period; the parent's result carries the backtest's figures, the CLI prints them,
    and they are exactly what `ktrdr backtest` gives for that model and period."""
    import json

    from ktrdr.data.bars_store import BarStore
    from tests.training.conftest import make_bars

    await BarStore(client.js).merge("AAPL", "1h", make_bars(3000, seed=1), "sim")  # 2024-01-01 on, 1h
    await start_actors("orchestrator", "trainer", "backtester")
    rc, out, err = await ktrdr(settings, "train", str(STRATEGY), "--epochs", "2", "--data", "none", "--backtest",
                               "--start", "2023-12-01", "--end", "2024-06-01", timeout=180)
    assert rc == 0, (out, err)
    [parent] = [v for v in await client.list_operations() if v.parent_op_id is None]
    view = await client.view(parent.op_id)
    assert view.status == "completed" and view.op_type == "training_workflow", view.error
    kids = [await client.view(k) for k in view.children]
    assert [(k.domain, k.status) for k in kids] == [("training", "completed"), ("backtest", "completed")]
    trained, tested = kids
    model = trained.result["artifacts"]["name"]
    test_first = trained.result["data_summary"]["per_symbol"]["AAPL"]["test_first"]
    assert tested.command["model"] == model == "mlp_rsi_aapl/AAPL_1h_v1"
    assert tested.result["strategy"]["start"][:19] == test_first[:19]  # trades only the held-out bars
    assert view.result["backtest"] == {"op_id": tested.op_id, **tested.result}
    assert view.result["test_metrics"] == trained.result["test_metrics"]  # and the training's, as before
    assert f"backtest {tested.op_id} on the held-out test period:" in out
    assert "total return" in out and "buy & hold" in out and f"equity curve: MODELS/{model}/{tested.op_id}" in out
    # the same model, period and costs by hand: the same figures
    rc, again, err = await ktrdr(settings, "backtest", model, "--start", test_first, "--end", "2024-06-01", "--json",
                                 timeout=60)
    assert rc == 0, err
    by_hand = json.loads(again)["result"]
    assert (by_hand["strategy"], by_hand["buy_and_hold"]) == (tested.result["strategy"], tested.result["buy_and_hold"])
    rc, shown, err = await ktrdr(settings, "models", "show", model)
    assert rc == 0 and tested.op_id in shown, (shown, err)
