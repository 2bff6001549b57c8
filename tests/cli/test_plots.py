"""`ktrdr ops plot` and `ktrdr data plot` as a user runs them (a subprocess; operations made by real
actors on a real nats-server). Every picture is opened again: a PNG of a sensible size that decodes.
Bad input is one line on stderr and exit 2, never a traceback."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from events import subjects
from events.messages import (
    DataContext,
    LoadData,
    OperationCreated,
    OperationProgress,
    ProgressState,
    RunDummy,
    StartTraining,
)
from ktrdr.config import Settings
from ktrdr.data.calendar import lookup
from ktrdr.ib.sim.data import generate_bars
from ktrdr.plotting import plot_data_load, segment_timeline
from tests.conftest import make_settings
from tests.helpers import wait_terminal

STRATEGY = Path(__file__).parents[2] / "strategies" / "mlp_rsi_aapl.yaml"
CLI = "from ktrdr.cli import main; main()"  # `ktrdr` itself


async def ktrdr(settings: Settings, *args: str, timeout: float = 120) -> tuple[int, str, str]:
    env = {**os.environ, "KTRDR_HOME": str(settings.home), "PYTHONUNBUFFERED": "1"}
    if settings.nats_url:
        env["NATS_URL"] = settings.nats_url
    else:
        env.pop("NATS_URL", None)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", CLI, *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


def assert_png(path: Path, min_w: int = 600, min_h: int = 300) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 15_000, "a picture with content, not a blank canvas"
    img = mpimg.imread(path)
    h, w = img.shape[:2]
    assert w >= min_w and h >= min_h, (w, h)
    assert img[..., :3].std() > 0.05, "more than one colour"


def assert_one_line_error(rc: int, err: str, says: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], err


@pytest.mark.slow
async def test_ops_plot_of_a_training_draws_its_epochs(start_actors, client, settings, tmp_path):
    from ktrdr.data.bars_store import BarStore

    await BarStore(client.js).merge("AAPL", "1h", _cycle_bars(), "sim")  # the trainer reads BARS
    await start_actors("orchestrator", "trainer")
    cmd = StartTraining(op_id=subjects.new_op_id("training"), strategy_path=str(STRATEGY),
                        strategy_yaml=STRATEGY.read_text(), epochs=6, data_mode="none")
    await client.submit(cmd)
    assert (await wait_terminal(client, cmd.op_id, timeout=120)).status == "completed"
    out = tmp_path / "training.png"
    rc, stdout, err = await ktrdr(settings, "ops", "plot", cmd.op_id, "-o", str(out))
    assert rc == 0, err
    assert f"wrote {out} (6 epochs)" in stdout
    assert_png(out)


async def test_ops_plot_of_a_data_load_draws_its_segments(start_actors, client, settings, tmp_path):
    from ktrdr.ib.sim.threaded import SimGatewayThread

    with SimGatewayThread(port=0, time_scale=0.25) as gw:
        s = make_settings(settings.home, settings.nats_url or "", ib_port=gw.port, ib_client_id=12,
                          ib_time_scale=0.25)
        await start_actors("orchestrator", "job-manager", "ib", settings=s)
        cmd = LoadData(op_id=subjects.new_op_id("data"), symbol="AAPL", timeframe="1h", mode="full",
                       start=datetime(2023, 1, 1, tzinfo=UTC), end=datetime(2023, 9, 1, tzinfo=UTC))
        await client.submit(cmd)
        view = await wait_terminal(client, cmd.op_id, timeout=120)
    assert view.status == "completed", view.error
    out = tmp_path / "load.PNG"  # the suffix is not case-sensitive
    rc, stdout, err = await ktrdr(settings, "ops", "plot", cmd.op_id, "-o", str(out))
    assert rc == 0, err
    assert f"{view.result['segments_planned']} segments" in stdout
    assert_png(out)


def test_data_load_picture_marks_the_pacing_waits(tmp_path):
    """The timeline read from progress events: segments, bars per segment and IB pacing waits (the
    events a paced load emits, written out here so the waits are certain)."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    op = "data-20260101T000000000000-abcdef"
    load = LoadData(op_id=op, symbol="AAPL", timeframe="1m")
    events: list = [OperationCreated(op_id=op, ts=t0, domain="data", op_type="load", command=load,
                                     description="load AAPL 1m")]

    def progress(sec: float, seg: int, state: str, bars: int, wait: float = 0.0) -> OperationProgress:
        ctx = DataContext(symbol="AAPL", timeframe="1m", mode="full", segment_index=seg, segment_count=4,
                          bars_fetched=bars, source="sim", waiting_s=wait, state=state)
        return OperationProgress(op_id=op, ts=t0 + timedelta(seconds=sec),
                                 progress=ProgressState(percentage=seg * 25.0, context=ctx))

    events += [progress(0.1, 1, "fetching", 0), progress(0.5, 1, "stored", 390),
               progress(0.6, 2, "fetching", 390), progress(0.7, 2, "waiting 12 s for IB pacing", 390, wait=12.0),
               progress(12.8, 2, "stored", 780), progress(12.9, 3, "fetching", 780), progress(13.2, 3, "no data", 780),
               progress(13.3, 4, "fetching", 780), progress(13.9, 4, "stored", 1170)]
    tl = segment_timeline(events)
    assert [(s.index, s.outcome, s.bars) for s in tl.segments.values()] == [
        (1, "stored", 390), (2, "stored", 390), (3, "no data", 0), (4, "stored", 390)]
    assert tl.waits == [(t0 + timedelta(seconds=0.7), 12.0)]
    assert tl.wait_spans() == [(t0 + timedelta(seconds=0.7), t0 + timedelta(seconds=12.7))]
    assert tl.bars[-1][1] == 1170 and tl.title.startswith("AAPL 1m (full mode)")
    out = tmp_path / "paced.png"
    plot_data_load(tl, out, f"{op}\n{tl.title}")
    assert_png(out)


async def test_ops_plot_of_any_other_operation_draws_its_progress(start_actors, client, settings, tmp_path):
    await start_actors("orchestrator", "dummy")
    cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=5, interval_s=0.01)
    await client.submit(cmd)
    await wait_terminal(client, cmd.op_id)
    out = tmp_path / "dummy.png"
    rc, stdout, err = await ktrdr(settings, "ops", "plot", cmd.op_id, "-o", str(out))
    assert rc == 0 and "progress over time" in stdout, err
    assert_png(out, min_h=250)


async def test_ops_plot_refuses_bad_input_in_one_line(settings, client, tmp_path):
    unknown = "training-20200101T000000000000-abcdef"
    png = str(tmp_path / "x.png")
    cases = [
        (("ops", "plot", "nope", "-o", png), "is not an operation id"),
        (("ops", "plot", unknown, "-o", png), f"no operation {unknown} is stored"),
        (("ops", "plot", unknown, "-o", str(tmp_path / "x.jpg")), "ending in .png"),
        (("ops", "plot", unknown, "-o", str(tmp_path / "missing" / "x.png")), "does not exist"),
        (("ops", "plot", unknown, "-o", str(tmp_path / "dir.png")), "is a folder"),
    ]
    (tmp_path / "dir.png").mkdir()
    for args, says in cases:
        rc, _, err = await ktrdr(settings, *args)
        assert_one_line_error(rc, err, says)
    assert not (tmp_path / "x.png").exists()


def _cycle_bars():
    from tests.training.conftest import make_bars

    return make_bars(3000, seed=1)


@pytest.mark.slow
async def test_data_plot_draws_candles_or_close_with_the_gaps(settings, client, tmp_path):
    from ktrdr.data.bars_store import BarStore

    bars = generate_bars(lookup("AAPL"), "1h", datetime(2024, 1, 2, tzinfo=UTC), datetime(2024, 7, 1, tzinfo=UTC),
                         seed=0)
    await BarStore(client.js).merge("AAPL", "1h", bars.drop(bars.index[200:260]).drop(bars.index[500:507]), "sim")
    out = tmp_path / "close.png"
    # the series is read through NATS (the BARS bucket), nothing from a local disk
    rc, stdout, err = await ktrdr(settings, "data", "plot", "aapl", "-t", "1h", "-o", str(out))
    assert rc == 0, err
    assert "as close, 2 gaps" in stdout
    assert_png(out)
    few = tmp_path / "candles.png"
    rc, stdout, err = await ktrdr(settings, "data", "plot", "AAPL", "-t", "1h", "-o", str(few),
                                  "--start", "2024-02-01", "--end", "2024-02-10")
    assert rc == 0 and "as candles" in stdout, err
    assert_png(few)


@pytest.mark.slow
async def test_data_plot_refuses_bad_input_in_one_line(settings, client, tmp_path):
    png = str(tmp_path / "x.png")
    cases = [
        (("data", "plot", "AAPL", "-t", "1h", "-o", png), "no 1h bars stored for AAPL"),
        (("data", "plot", "A$PL", "-t", "1h", "-o", png), "invalid symbol"),
        (("data", "plot", "AAPL", "-t", "7x", "-o", png), "7x"),
        (("data", "plot", "AAPL", "-o", str(tmp_path / "x.svg")), "ending in .png"),
        (("data", "plot", "AAPL", "-o", png, "--start", "2024-03-01", "--end", "2024-02-01"), "is not before"),
        (("data", "plot", "AAPL", "-o", png, "--start", "yesterday"), "is not a date"),
    ]
    for args, says in cases:
        rc, _, err = await ktrdr(settings, *args)
        assert_one_line_error(rc, err, says)


@pytest.mark.slow
async def test_ops_plot_of_a_backtest_draws_equity_and_drawdown_against_buy_and_hold(
        start_actors, client, settings, tmp_path):
    from events.messages import RunBacktest
    from ktrdr.backtest import drawdown, read_curve
    from ktrdr.data.bars_store import BarStore
    from ktrdr.training.model_store import ModelStore
    from ktrdr.transport import objects
    from tests.backtest.conftest import STRATEGY as SMALL
    from tests.backtest.conftest import model_files
    from tests.training.conftest import make_bars

    bars = make_bars(1200, seed=3)
    await BarStore(client.js).merge("AAPL", "1h", bars, "sim")
    saved = await ModelStore(client.js).save("test_small", ["AAPL"], ["1h"], model_files(SMALL, bars))
    await start_actors("orchestrator", "backtester")
    cmd = RunBacktest(op_id=subjects.new_op_id("backtest"), model=saved["name"])
    await client.submit(cmd)
    view = await wait_terminal(client, cmd.op_id, timeout=60)
    assert view.status == "completed", view.error
    r = view.result
    assert r["strategy"]["trades"] > 0  # something to see: the strategy trades, unlike buy-and-hold
    out = tmp_path / "backtest.png"
    rc, stdout, err = await ktrdr(settings, "ops", "plot", cmd.op_id, "-o", str(out))
    assert rc == 0, err
    assert f"wrote {out} (equity and drawdown over {r['bars']:,} bars against buy-and-hold)" in stdout
    assert_png(out)
    # what the picture draws is the stored curve, whose worst drawdowns are the printed figures
    data = await ModelStore(client.js).read_backtest(r["curve"]["object"])
    curve = read_curve(data)
    assert len(curve) == r["bars"]
    for col, figs in (("equity", r["strategy"]), ("buy_hold", r["buy_and_hold"])):
        assert abs(drawdown(curve[col].to_numpy(), r["capital"]).min() - figs["max_drawdown"]) < 1e-12
    # a backtest that failed has no curve, and a curve removed since is said so: one line each
    late = RunBacktest(op_id=subjects.new_op_id("backtest"), model=saved["name"],
                       start=datetime(2025, 1, 1, tzinfo=UTC))
    await client.submit(late)
    assert (await wait_terminal(client, late.op_id, timeout=60)).status == "failed"
    rc, _, err = await ktrdr(settings, "ops", "plot", late.op_id, "-o", str(tmp_path / "late.png"))
    assert_one_line_error(rc, err, f"{late.op_id} has no equity curve to draw (failed: ")
    await objects.delete(client.js, "MODELS", r["curve"]["object"])
    rc, _, err = await ktrdr(settings, "ops", "plot", cmd.op_id, "-o", str(tmp_path / "gone.png"))
    assert_one_line_error(rc, err, f"its equity curve MODELS/{r['curve']['object']} is no longer stored")
    assert not (tmp_path / "late.png").exists() and not (tmp_path / "gone.png").exists()


def test_a_long_backtest_curve_is_thinned_keeping_its_worst_drawdown(tmp_path):
    import numpy as np
    import pandas as pd

    from ktrdr.backtest import drawdown
    from ktrdr.plotting import MAX_CURVE_POINTS, plot_backtest, thin_indices

    n = 1_000_000
    rng = np.random.default_rng(0)
    equity = 100_000 * np.exp(np.cumsum(rng.normal(0, 1e-4, n)))
    equity[654_321] = equity[654_320] * 0.5  # a one-bar crash, in no thinning bucket's last place
    worst = int(drawdown(equity, 100_000).argmin())
    assert worst == 654_321
    pick = thin_indices(n, [worst])
    assert worst in pick and len(pick) <= MAX_CURVE_POINTS + 3 and pick[0] == 0 and pick[-1] == n - 1
    curve = pd.DataFrame({"ts": pd.date_range("2016-01-01", periods=n, freq="1min", tz="UTC"), "equity": equity,
                          "buy_hold": equity * 1.01, "position": (np.arange(n) // 5000 % 2).astype("float32")})
    out = tmp_path / "long.png"
    plot_backtest(curve, {"capital": 100_000.0}, out, "a million bars")
    assert_png(out)
