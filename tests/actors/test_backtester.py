"""The backtester against real processes: a model in MODELS and bars in BARS, the orchestrator routing
`cmd.backtest.run` to `work.backtest.any`, progress per chunk, cancel within a chunk, a killed
backtester's work redone by another with the same result."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

from actors.backtester import Backtester
from events import subjects
from events.messages import BacktestContext, OperationProgress, RunBacktest
from ktrdr.backtest import BacktestJob, TrainedModel, run_backtest
from ktrdr.backtest.model import TrainedModel as _Model
from ktrdr.data.bars_store import BarStore
from ktrdr.training.model_store import ModelStore
from ktrdr.transport import objects
from tests.backtest.conftest import STRATEGY, model_files
from tests.helpers import scrape, value, wait_for_event, wait_terminal
from tests.training.conftest import make_bars

BARS = make_bars(1200, seed=3)
FILES = model_files(STRATEGY, BARS)
REF = "test_small/AAPL_1h_v1"


@pytest.fixture
async def stored(client) -> str:
    await BarStore(client.js).merge("AAPL", "1h", BARS, "sim")
    saved = await ModelStore(client.js).save("test_small", ["AAPL"], ["1h"], FILES)
    return saved["name"]


def backtest(**kw: object) -> RunBacktest:
    return RunBacktest(op_id=subjects.new_op_id("backtest"), model=REF, **kw)  # type: ignore[arg-type]


def direct(cmd: RunBacktest, chunk_bars: int) -> dict:
    """The same backtest run by the domain code in this process: what the actor must report."""
    job = BacktestJob(REF, ["AAPL"], start=cmd.start, end=cmd.end, capital=cmd.capital, commission=cmd.commission,
                      slippage_bps=cmd.slippage_bps, chunk_bars=chunk_bars)
    return run_backtest(job, TrainedModel.from_files(FILES), {"AAPL": {"1h": BARS}}).result


@pytest.fixture
def held_after_first_chunk(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Every backtest's second chunk waits (in its worker thread) until its operation's token trips
    or the test lets it go: a cancel or a kill always lands mid-run, without racing a fast run."""
    release = threading.Event()
    Held.tokens.clear()
    calls: dict[int, int] = {}
    real = _Model.decide

    def decide(self: _Model, x: np.ndarray) -> np.ndarray:
        n = calls[id(self)] = calls.get(id(self), 0) + 1
        if n == 2:
            token = Held.tokens[-1]
            while not (token.is_cancelled or release.is_set()):
                token.sleep_sync(0.02)
        return real(self, x)

    monkeypatch.setattr(_Model, "decide", decide)
    yield release
    release.set()


class Held(Backtester):
    """A backtester that keeps its operations' tokens where the test's held chunk can see them."""

    tokens: list = []
    chunk_bars = 100

    async def handle(self, op):  # type: ignore[no-untyped-def]
        Held.tokens.append(op.token)
        return await super().handle(op)


async def test_backtest_end_to_end_reports_figures_progress_and_stores_the_curve_beside_the_model(
        start_actors, client, stored) -> None:
    _orch, backtester = await start_actors("orchestrator", "backtester")
    cmd = backtest(commission=0.0005, slippage_bps=2.0)
    await client.submit(cmd)
    view = await wait_terminal(client, cmd.op_id, timeout=60)
    assert view.status == "completed", view.error
    r = view.result
    want = direct(cmd, chunk_bars=50_000)
    for part in ("strategy", "buy_and_hold"):
        assert r[part] == want[part]  # the same figures, value by value
    assert r["strategy"]["trades"] > 10 and r["bars"] == len(BARS) and r["simulated"] is True
    assert value(await scrape(backtester.metrics_url), "ktrdr_backtest_bars_per_second", pool="any") > 0
    events = await client.events(cmd.op_id)
    ctx = [e.progress.context for e in events if isinstance(e, OperationProgress)
           and isinstance(e.progress.context, BacktestContext)]
    assert ctx and ctx[-1].bars_done == ctx[-1].bars_total == len(BARS) and ctx[-1].model == stored
    curve_obj = r["curve"]["object"]
    assert curve_obj == f"{stored}/{cmd.op_id}.parquet"
    models = ModelStore(client.js)
    rows = await models.backtests(stored)
    assert [row["object"] for row in rows] == [curve_obj] and rows[0]["trades"] == r["strategy"]["trades"]
    data, _ = await objects.get(client.js, "MODELS", curve_obj, max_bytes=1 << 24)
    curve = pd.read_parquet(io.BytesIO(bytes(data)))
    assert len(curve) == len(BARS)
    assert curve["equity"].iloc[-1] == pytest.approx(r["strategy"]["final_equity"])
    assert curve["buy_hold"].iloc[-1] == pytest.approx(r["buy_and_hold"]["final_equity"])


async def test_cancel_mid_run_stops_within_one_chunk_and_says_at_which_bar(
        start_actors, client, settings, stored, held_after_first_chunk) -> None:
    await start_actors("orchestrator")
    held = Held(settings)
    await held.start()
    try:
        cmd = backtest()
        await client.submit(cmd)
        await wait_for_event(client, cmd.op_id, lambda ev, v: isinstance(v.context, BacktestContext)
                             and v.context.bars_done > 0, timeout=60)
        await client.cancel(cmd.op_id)
        view = await wait_terminal(client, cmd.op_id, timeout=30)
    finally:
        await held.stop()
    assert view.status == "cancelled"
    # Chunk 1 (bars 0-99) reported, then the cancel: the run stops at the next chunk boundary, before
    # chunk 2 when the cancel came in first, or after it (chunk 2 holds until the cancel is in).
    assert view.where in (f"AAPL {BARS.index[99].isoformat()}", f"AAPL {BARS.index[199].isoformat()}")
    assert view.message == f"Backtest cancelled at {view.where}"
    assert await ModelStore(client.js).backtests(stored) == []  # no curve for a cancelled backtest


async def test_a_killed_backtesters_work_is_redone_by_another_with_the_same_result(
        start_actors, client, settings, stored, held_after_first_chunk) -> None:
    await start_actors("orchestrator")
    first = Held(settings)
    await first.start()
    try:
        cmd = backtest()
        await client.submit(cmd)
        await wait_for_event(client, cmd.op_id, lambda ev, v: isinstance(v.context, BacktestContext)
                             and v.context.bars_done > 0, timeout=60)
        await first.kill()
        await start_actors("backtester")
        view = await wait_terminal(client, cmd.op_id, timeout=90)
    finally:
        held_after_first_chunk.set()
    assert view.status == "completed", view.error
    assert view.attempts == 2
    want = direct(cmd, chunk_bars=50_000)
    assert view.result["strategy"] == want["strategy"] and view.result["buy_and_hold"] == want["buy_and_hold"]


@pytest.mark.slow
async def test_a_model_the_trainer_made_backtests_with_the_features_it_trained_on(start_actors, client) -> None:
    from tests.actors.test_trainer import start_training

    await BarStore(client.js).merge("AAPL", "1h", make_bars(3000, seed=1), "sim")
    await start_actors("orchestrator", "trainer", "backtester")
    train = start_training(epochs=2)
    await client.submit(train)
    trained = await wait_terminal(client, train.op_id, timeout=120)
    assert trained.status == "completed", trained.error
    name = trained.result["artifacts"]["name"]
    cmd = RunBacktest(op_id=subjects.new_op_id("backtest"), model=name.split("/")[0])  # the strategy: its latest
    await client.submit(cmd)
    view = await wait_terminal(client, cmd.op_id, timeout=60)
    assert view.status == "completed", view.error
    assert view.result["model"] == name and view.result["bars"] == 3000
    # The backtester rebuilt the trainer's feature columns, in its order (features.json), or it would
    # have refused the model: the figures exist and buy-and-hold is the series' own move.
    closes = make_bars(3000, seed=1)["close"]
    bh = view.result["buy_and_hold"]
    s, f = 1e-4, 1e-3  # the default 1 bp of slippage and 0.1% commission, in at the first close, out at the last
    growth = closes.iloc[-1] / closes.iloc[0] * (1 - s) * (1 - f) / ((1 + s) * (1 + f))
    assert bh["total_return"] == pytest.approx(growth - 1, rel=1e-9)
    assert view.result["strategy"]["bars"] == 3000
