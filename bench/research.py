"""`python -m bench research`: backtests through the actor against a bare vectorised computation of the
same positions and returns, in the same run, and a backtest's cancel latency.

- throughput: 1h bars round the clock (876 / 8,766 / 87,660: a tenth of a year, 1 and 10 years) and 1m
  bars (10,000 / 100,000 / 1,000,000). `bare_s` is the same model's features, signals, positions and
  equity computed in this process in one piece (ktrdr.training.features + one forward pass + a
  forward fill + a cumulative product: no chunks, no progress, no NATS, no curve stored). `actor_s`
  is `cmd.backtest.run` submitted to the orchestrator -> completed event received, the backtester in
  a process of its own reading the model from MODELS and the bars from BARS (its digest cache warm
  after the first run) and storing the curve. `ratio` = bare_s / actor_s (goal >= 0.8).
  `bare_chunked_s` is the same bare computation with the forward pass in the actor's chunks
  (DEFAULT_CHUNK_BARS, the model's own decide): at 1,000,000 bars the one-piece forward pass is
  memory-bound and slower than chunks, so `ratio_chunked` = bare_chunked_s / actor_s is the stricter
  figure. `actor_run_s` is the run's own time inside the backtester (its result's elapsed_s:
  features, signals, trading, figures); actor_s minus it is routing, the MODELS and BARS reads and
  the curve's encoding and upload. Medians of KTRDR_BENCH_RESEARCH_RUNS runs (default 3, bare,
  chunked bare and actor alternated, after one unmeasured actor run that warms the digest cache),
  with ranges; KTRDR_BENCH_RESEARCH_SIZES=1h:8766,1m:10000 picks sizes.
- cancel latency: a cancel published while a 1,000,000-bar backtest runs -> its cancelled event
  received (a core subscription made before the submit); `chunk_ms` is the median time between two
  progress events (one chunk); goal p99 <= chunk_ms + 10 ms. `backtester_side_*`: the cancel sent
  -> the cancelled event's own timestamp (stamped when the backtester's run stopped, before its
  lease check and publish). KTRDR_BENCH_RESEARCH_CANCELS runs (default 20).
- sweep: a sweep of N variants (learning rates; KTRDR_BENCH_SWEEP_EPOCHS epochs, default 40, of
  mlp_rsi_aapl on 2,000 1h bars: trainings of about a second, Ray Tune's case) on 2 trainers, each
  in a process of its own, max_parallel 2, no data step. `sweep_s`:
  `cmd.training.sweep` submitted -> its terminal event received. `sequential_s`: the same N
  trainings (the variants' own commands) submitted one after another, each waited for: the sum of
  its trainings run one after another. `trainings_s`: the sum of the sweep's training children's own
  times (their started -> completed events, stamped by the trainer: claiming the work, reading the
  bars, the training process). `overhead_per_variant_s` = (2 x sweep_s - trainings_s) / N: trainer
  time not spent in a training (intake, planning, creating and routing each child, leases, the gap
  between one training's end and the next one's start, the last slot's idle tail); `overhead_pct` =
  that share of 2 x sweep_s (goal < 5%; Ray Tune publishes about 14% for 1-second trials);
  `handoff_ms`: a training's start minus the latest training end before it (once both trainers
  were busy): how long a freed trainer waits for the next variant.
  KTRDR_BENCH_SWEEP_SIZES (default 4,8,32); KTRDR_BENCH_RESEARCH_PARTS=sweep runs only this part
  (default backtest,sweep).
- priority (KTRDR_BENCH_RESEARCH_PARTS=priority): a low-priority sweep of KTRDR_BENCH_PRIORITY_VARIANTS
  (default 32) trainings, all queued at once, on the 2 trainers; KTRDR_BENCH_PRIORITY_REPS (default 5)
  high-priority trainings submitted while both run a low one: each one's queue wait (created ->
  started) against the time until the first running training ended (no preemption: goal wait <= that
  + 1 s). priority_figures says how.
- pull (KTRDR_BENCH_RESEARCH_PARTS=pull): what the priority pull costs a worker to take its next item
  at 10, 100 and 1,000 items queued a level (and with only low queued: the empty levels' cost), and an
  idle worker's publish -> take, against the plain single-subject pull in the same run; no trainers.
  bench/priority_pull.py says how.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pandas as pd
from nats.js import api as js_api

from actors.backtester import Backtester
from actors.orchestrator import Orchestrator
from bench._common import ActorProcess, BenchServer, pct, wait_alive
from events import subjects
from events.bounds import MAX_SWEEP_PARALLEL
from events.codec import decode_event_on
from events.messages import (
    BacktestContext,
    OperationCancelled,
    OperationCompleted,
    OperationCreated,
    OperationProgress,
    OperationStarted,
    RunBacktest,
    RunSweep,
    StartTraining,
    SweepParam,
)
from ktrdr.backtest.run import DEFAULT_CHUNK_BARS
from ktrdr.client import Client
from ktrdr.commands import training_inputs
from ktrdr.data.bars_store import BarStore
from ktrdr.ops import workflows
from ktrdr.training.model_store import ModelStore

STRATEGY = """
name: bench_bt
description: backtest benchmark
version: "1.0"
training_data:
  symbols: {mode: single_symbol, list: [AAPL]}
  timeframes: {mode: single_timeframe, list: [TF], base_timeframe: TF}
  history_required: 50
indicators:
  - {name: rsi, period: 14}
  - {name: macd, fast_period: 12, slow_period: 26, signal_period: 9}
fuzzy_sets:
  rsi:
    oversold: {type: triangular, parameters: [0, 25, 45]}
    neutral: {type: triangular, parameters: [30, 50, 70]}
    overbought: {type: triangular, parameters: [55, 75, 100]}
  macd_hist:
    negative: {type: trapezoidal, parameters: [-100, -50, -0.2, 0]}
    positive: {type: trapezoidal, parameters: [0, 0.2, 50, 100]}
model:
  type: mlp
  architecture: {hidden_layers: [24, 12], activation: relu, dropout: 0.1}
  features: {lookback_periods: 2, scale_features: true}
  training: {learning_rate: 0.005, batch_size: 64, epochs: 6, optimizer: adam,
             early_stopping: {patience: 50, monitor: val_loss}}
decisions: {output_format: classification, confidence_threshold: 0.34}
training:
  method: supervised
  labels: {source: zigzag, zigzag_threshold: 0.015, label_lookahead: 12}
  data_split: {train: 0.7, validation: 0.15, test: 0.15}
"""
SIZES = {"1h": (876, 8_766, 87_660), "1m": (10_000, 100_000, 1_000_000)}
START = {"1h": "2010-01-04", "1m": "2020-01-06"}
SYMBOLS = {"1h": "AAPL", "1m": "MSFT"}


def bars(n: int, freq: str, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, n)) + 0.03 * np.sin(np.arange(n) * 2 * np.pi / 48))
    open_ = np.r_[close[0], close[:-1]]
    spread = np.abs(rng.normal(0, 0.001, n)) * close
    idx = pd.date_range(START[freq], periods=n, freq=freq.replace("m", "min"), tz="UTC", name="timestamp")
    return pd.DataFrame({"open": open_, "high": np.maximum(open_, close) + spread,
                         "low": np.minimum(open_, close) - spread, "close": close,
                         "volume": rng.integers(1_000, 10_000, n).astype("float64")}, index=idx)


def model_files(strategy_text: str, frame: pd.DataFrame, tf: str, symbol: str) -> dict[str, bytes]:
    """A seeded model in the trainer's file layout (a training run is not what this measures)."""
    import torch

    from ktrdr.training.features import Scaler, symbol_features
    from ktrdr.training.model import build_mlp
    from ktrdr.training.strategy import parse_strategy

    s = parse_strategy(strategy_text)
    feats = symbol_features({tf: frame.iloc[:5000]}, s).dropna()
    torch.manual_seed(7)
    net = build_mlp(feats.shape[1], s.model.architecture)
    with torch.no_grad():
        net[-1].weight.mul_(8.0)
        net[-1].bias.zero_()
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    arch = {"type": "mlp", "input_size": feats.shape[1]}
    return {"model.pt": buf.getvalue(),
            "config.json": json.dumps({"strategy": s.to_dict(), "architecture": arch}).encode(),
            "features.json": json.dumps({"names": list(feats.columns), "base_timeframe": tf,
                                         "scaler": Scaler.fit(feats.to_numpy()).to_dict()}).encode(),
            "metadata.json": json.dumps({"symbols": [symbol], "timeframes": [tf], "simulated": True}).encode(),
            "metrics.json": b"{}"}


def bare(files: dict[str, bytes], frame: pd.DataFrame, tf: str, commission: float, slippage_bps: float,
         chunk: int = 0) -> float:
    """Seconds for the same positions and returns, vectorised in one piece: the baseline."""
    import torch

    from ktrdr.backtest.model import TrainedModel
    from ktrdr.training.features import symbol_features

    torch.set_num_threads(Backtester.inference_threads)  # the backtester's thread budget: the same computation
    model = TrainedModel.from_files(files)
    t0 = time.perf_counter()
    x = symbol_features({tf: frame}, model.strategy).loc[:, model.feature_names].to_numpy(dtype="float64")
    if chunk:  # the forward pass in the actor's chunks (the model's own decide), all else the same
        sig = np.concatenate([model.decide(x[a:a + chunk]) for a in range(0, len(x), chunk)])
    else:
        ok = ~np.isnan(x).any(axis=1)
        sig = np.ones(len(x), dtype=np.int64)
        with torch.no_grad():
            probs = torch.softmax(model.net(torch.from_numpy(model.scaler.transform(x[ok]))), dim=1)
            conf, cls = probs.max(dim=1)
        sig[ok] = np.where(conf.numpy() >= model.threshold, cls.numpy(), 1)
    target = pd.Series(np.where(sig == 0, 1.0, np.where(sig == 2, 0.0, np.nan))).ffill().fillna(0.0).to_numpy(copy=True)
    target[-1] = 0.0
    held = np.r_[0.0, target[:-1]]
    close = frame["close"].to_numpy()
    ret = np.r_[0.0, close[1:] / close[:-1] - 1]
    change = target - held
    s = slippage_bps / 1e4
    factor = (1 + held * ret) * np.where(change > 0, 1 / ((1 + s) * (1 + commission)), 1.0) \
        * np.where(change < 0, (1 - s) * (1 - commission), 1.0)
    equity = 100_000 * np.cumprod(factor)
    float(equity[-1])
    return time.perf_counter() - t0


async def through_actor(c: Client, ref: str, symbol: str) -> tuple[float, float]:
    """Seconds from submitting the command to receiving its terminal event (which must be completed),
    and the run's own seconds inside the backtester (features, signals, trading, figures: the
    result's elapsed_s; the rest is routing, MODELS and BARS reads and the curve's upload)."""
    cmd = RunBacktest(op_id=subjects.new_op_id("backtest"), model=ref, symbols=[symbol])
    done = asyncio.Event()
    end: list[tuple[float, str]] = []

    async def cb(msg: Any) -> None:
        name = msg.subject.rsplit(".", 1)[-1]
        if name.removeprefix("orch_") in ("completed", "failed", "cancelled", "rejected"):
            end.append((time.perf_counter(), name))
            done.set()

    sub = await c.nc.subscribe(subjects.ops(cmd.op_id), cb=cb)
    t0 = time.perf_counter()
    await c.submit(cmd)
    await asyncio.wait_for(done.wait(), 1800)
    await sub.unsubscribe()
    if end[0][1] != "completed":
        raise RuntimeError(f"{cmd.op_id} ended {end[0][1]}")
    view = await c.view(cmd.op_id)
    return end[0][0] - t0, float((view.result or {}).get("elapsed_s", 0.0))


def _range(xs: list[float]) -> list[float]:
    return [round(min(xs), 4), round(max(xs), 4)]


async def throughput(c: Client, runs: int, sizes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tf, ns in sizes.items():
        for n in ns:
            symbol = SYMBOLS[tf]
            frame = bars(n, tf)
            text = STRATEGY.replace("TF", tf).replace("AAPL", symbol)
            files = model_files(text, frame, tf, symbol)
            await BarStore(c.js).merge(symbol, tf, frame, "sim")  # sizes ascending: each extends the last
            saved = await ModelStore(c.js).save("bench_bt", [symbol], [tf], files)
            bare_s, chunked_s, actor_s, run_s = [], [], [], []
            await through_actor(c, saved["name"], symbol)  # warms the backtester's digest cache and imports
            for _ in range(runs):  # alternated, so each kind sees the same load
                bare_s.append(await asyncio.to_thread(bare, files, frame, tf, 0.001, 1.0))
                chunked_s.append(await asyncio.to_thread(bare, files, frame, tf, 0.001, 1.0, DEFAULT_CHUNK_BARS))
                a_s, r_s = await through_actor(c, saved["name"], symbol)
                actor_s.append(a_s)
                run_s.append(r_s)
            b, bc, a = statistics.median(bare_s), statistics.median(chunked_s), statistics.median(actor_s)
            out[f"{tf}_{n}"] = {"bars": n, "bare_s": round(b, 4), "bare_range_s": _range(bare_s),
                                "bare_chunked_s": round(bc, 4), "bare_chunked_range_s": _range(chunked_s),
                                "actor_s": round(a, 4), "actor_range_s": _range(actor_s),
                                "actor_run_s": round(statistics.median(run_s), 4),
                                "ratio": round(b / a, 3),
                                "ratio_range": _range([x / y for x, y in zip(bare_s, actor_s, strict=True)]),
                                "ratio_chunked": round(bc / a, 3),
                                "bars_per_s_actor": round(n / a), "runs": runs}
            print(f"  {tf} {n:>9,} bars: bare {b:.3f} s (chunked {bc:.3f}), actor {a:.3f} s "
                  f"(its run {statistics.median(run_s):.3f}), ratio {b / a:.2f} (chunked {bc / a:.2f})", flush=True)
    return out


async def cancel_latency(c: Client, ref: str, symbol: str, runs: int) -> dict[str, Any]:
    lat, chunk_ms, side = [], [], []
    for _ in range(runs):
        cmd = RunBacktest(op_id=subjects.new_op_id("backtest"), model=ref, symbols=[symbol])
        running, cancelled = asyncio.Event(), asyncio.Event()
        stamps: list[float] = []
        t_end: list[float] = []

        async def cb(msg: Any, running: asyncio.Event = running, cancelled: asyncio.Event = cancelled,
                     stamps: list[float] = stamps, t_end: list[float] = t_end) -> None:
            name = msg.subject.rsplit(".", 1)[-1]
            if name.removeprefix("orch_") in ("cancelled", "completed", "failed"):
                t_end.append(time.perf_counter())
                cancelled.set()
            elif name == "progress":
                ev = decode_event_on(msg.subject, msg.data)
                if isinstance(ev, OperationProgress) and isinstance(ev.progress.context, BacktestContext) \
                        and ev.progress.context.bars_done:
                    stamps.append(time.perf_counter())
                    if len(stamps) >= 2:  # past its first chunk: running, and a chunk's time known
                        running.set()

        # A core subscription made before the submit (as through_actor's): the events as the server
        # takes them in, without a JetStream consumer's redelivery in between (it added ~10 ms).
        sub = await c.nc.subscribe(subjects.ops(cmd.op_id), cb=cb)
        await c.submit(cmd)
        await asyncio.wait_for(asyncio.wait([asyncio.ensure_future(running.wait()),
                                             asyncio.ensure_future(cancelled.wait())],
                                            return_when=asyncio.FIRST_COMPLETED), 600)
        if cancelled.is_set():  # ended before a second chunk: too small to cancel mid-run
            await sub.unsubscribe()
            continue
        await asyncio.sleep(0.003 * (len(lat) % 7))  # somewhere inside a chunk
        t0, wall0 = time.perf_counter(), time.time()
        await c.cancel(cmd.op_id)
        await asyncio.wait_for(cancelled.wait(), 120)
        await sub.unsubscribe()
        lat.append((t_end[0] - t0) * 1000)
        # The backtester's side: the cancel sent -> its cancelled event stamped (same host, same clock).
        stamped = [e.ts.timestamp() for e in await c.events(cmd.op_id) if isinstance(e, OperationCancelled)]
        if stamped:
            side.append((stamped[0] - wall0) * 1000)
        if len(stamps) >= 2:
            chunk_ms.append(statistics.median(np.diff(stamps)) * 1000)
    chunk = statistics.median(chunk_ms) if chunk_ms else float("nan")
    if not lat:
        return {"runs": 0, "note": "every run ended before its second chunk: use more bars"}
    return {"p50_ms": round(pct(lat, 50), 2), "p99_ms": round(pct(lat, 99), 2), "max_ms": round(max(lat), 2),
            "backtester_side_p50_ms": round(pct(side, 50), 2) if side else None,
            "backtester_side_p99_ms": round(pct(side, 99), 2) if side else None,
            "chunk_ms_p99": round(pct(chunk_ms, 99), 2) if chunk_ms else None,
            "runs": runs, "chunk_ms": round(chunk, 2), "target_ms": round(chunk + 10, 2),
            "met": pct(lat, 99) <= chunk + 10, "target": "p99 <= one chunk + 10 ms"}


def _sizes() -> dict[str, tuple[int, ...]]:
    raw = os.environ.get("KTRDR_BENCH_RESEARCH_SIZES")
    if not raw:
        return SIZES
    out: dict[str, list[int]] = {}
    for part in raw.split(","):
        tf, _, n = part.partition(":")
        out.setdefault(tf.strip(), []).append(int(n))
    return {k: tuple(v) for k, v in out.items()}


SWEEP_STRATEGY = Path(__file__).parents[1] / "strategies" / "mlp_rsi_aapl.yaml"
SWEEP_TRAINERS = 2


async def _ended(c: Client, cmd: Any, timeout: float = 1800) -> tuple[float, str]:
    """Submit `cmd`; (seconds to its terminal event, its name)."""
    done = asyncio.Event()
    end: list[tuple[float, str]] = []

    async def cb(msg: Any) -> None:
        name = msg.subject.rsplit(".", 1)[-1]
        name = name.removeprefix("orch_")
        if name in ("completed", "failed", "cancelled", "rejected") and not end:
            end.append((time.perf_counter(), name))
            done.set()

    sub = await c.nc.subscribe(subjects.ops(cmd.op_id), cb=cb)
    t0 = time.perf_counter()
    await c.submit(cmd)
    await asyncio.wait_for(done.wait(), timeout)
    await sub.unsubscribe()
    return end[0][0] - t0, end[0][1]


async def _training_span(c: Client, op_id: str) -> tuple[Any, Any]:
    """(started, completed) of a training, as its events stamp them."""
    evs = await c.events(op_id)
    started = [e.ts for e in evs if isinstance(e, OperationStarted)]
    completed = [e.ts for e in evs if isinstance(e, OperationCompleted)]
    if not started or not completed:
        raise RuntimeError(f"{op_id}: not completed")
    return started[0], completed[-1]


async def _created_at(c: Client, op_id: str) -> Any:
    evs = await c.events(op_id)
    return next(e.ts for e in evs if isinstance(e, OperationCreated))


def _handoff_parts_ms(spans: list[tuple[Any, Any]], created: list[Any], k: int) -> tuple[list[float], list[float]]:
    """The handoff in two: the orchestrator's part (the latest end before a child's creation ->
    its `created`) and the trainer's (created -> started: the work item fetched, the checks, the
    lease), for each child created once k had been running."""
    react, take = [], []
    for i, ((start, _), made) in enumerate(sorted(zip(spans, created, strict=True))):
        ends = [e for _, e in spans if e <= made]
        if i >= k and ends:
            react.append((made - max(ends)).total_seconds() * 1000)
            take.append((start - made).total_seconds() * 1000)
    return react, take


def _handoffs_ms(spans: list[tuple[Any, Any]], k: int) -> list[float]:
    """For each training started once k were running before it: its start minus the latest end
    before that start (a freed trainer slot -> the next variant on it)."""
    out = []
    for i, (start, _) in enumerate(sorted(spans)):
        ends = [e for _, e in spans if e <= start]
        if i >= k and ends:
            out.append((start - max(ends)).total_seconds() * 1000)
    return out


async def sweep_figures(c: Client, sizes: tuple[int, ...], epochs: int) -> dict[str, Any]:
    from datetime import UTC, datetime

    await BarStore(c.js).merge("AAPL", "1h", bars(2_000, "1h", seed=3), "sim")
    text = SWEEP_STRATEGY.read_text()
    start, end = datetime.fromisoformat("2010-01-04T00:00+00:00"), datetime.fromisoformat("2010-04-01T00:00+00:00")
    out: dict[str, Any] = {}
    warm = StartTraining(op_id=subjects.new_op_id("training"), strategy_yaml=text, epochs=1, data_mode="none",
                         start=start, end=end)
    for _ in range(SWEEP_TRAINERS):  # each trainer's first training imports torch in its process
        await _ended(c, warm)
        warm = msgspec.structs.replace(warm, op_id=subjects.new_op_id("training"))
    for n in sizes:
        rates = [round(0.001 + 0.0005 * i, 6) for i in range(n)]
        cmd = RunSweep(op_id=subjects.new_op_id("training"), strategy_path=str(SWEEP_STRATEGY), strategy_yaml=text,
                       params=[SweepParam(path="model.training.learning_rate", values=rates)], epochs=epochs,
                       data_mode="none", start=start, end=end, max_parallel=SWEEP_TRAINERS)
        submitted = datetime.now(UTC)
        sweep_s, how = await _ended(c, cmd)
        ended = datetime.now(UTC)
        view = await c.view(cmd.op_id)
        if how != "completed" or (view.result or {}).get("completed") != n:
            raise RuntimeError(f"sweep of {n} ended {how}: {view.error or view.result}")
        trainings = [k for k in view.children if subjects.domain_of(k) == "training"]
        spans = [await _training_span(c, k) for k in trainings]
        trainings_s = sum((e - s).total_seconds() for s, e in spans)
        handoffs = _handoffs_ms(spans, SWEEP_TRAINERS)
        # trainer time at the edges: submit -> each slot's first start, each slot's last end -> the
        # sweep's verdict received (the slot left idle while the other runs the last variant)
        lead_s = sum((st - submitted).total_seconds() for st, _ in sorted(spans)[:SWEEP_TRAINERS])
        tail_s = sum((ended - e).total_seconds() for e in sorted(e for _, e in spans)[-SWEEP_TRAINERS:])
        react, take = _handoff_parts_ms(spans, [await _created_at(c, k) for k in trainings], SWEEP_TRAINERS)
        children = [msgspec.structs.replace(k, op_id=subjects.new_op_id("training"), parent_op_id=None,
                                            deadline=None, requested_by="bench")
                    for k in workflows.plan(cmd, training_inputs) if isinstance(k, StartTraining)]
        sequential = [await _ended(c, k) for k in children]
        if any(how != "completed" for _, how in sequential):
            raise RuntimeError(f"a sequential training ended {[h for _, h in sequential]}")
        sequential_s = sum(t for t, _ in sequential)
        slots = SWEEP_TRAINERS * sweep_s
        over = slots - trainings_s
        out[f"variants_{n}"] = {
            "variants": n, "trainers": SWEEP_TRAINERS, "epochs": epochs, "sweep_s": round(sweep_s, 3),
            "sequential_s": round(sequential_s, 3), "speedup": round(sequential_s / sweep_s, 3),
            "mean_training_s": round(trainings_s / n, 3), "trainings_s": round(trainings_s, 3),
            "overhead_per_variant_s": round(over / n, 4), "overhead_pct": round(100 * over / slots, 2),
            "handoff_ms_median": round(statistics.median(handoffs), 1) if handoffs else None,
            "handoff_ms_max": round(max(handoffs), 1) if handoffs else None,
            "create_ms_median": round(statistics.median(react), 1) if react else None,
            "take_ms_median": round(statistics.median(take), 1) if take else None,
            "lead_s": round(lead_s, 3), "tail_s": round(tail_s, 3),
            "met": over / slots < 0.05, "target": "overhead < 5% of trainer time"}
        print(f"  sweep {n:>3} variants: {sweep_s:.2f} s (sequential {sequential_s:.2f} s, "
              f"x{sequential_s / sweep_s:.2f}), overhead {over / n:.3f} s/variant = {100 * over / slots:.1f}%",
              flush=True)
    return out


async def no_wait_pull_ms(c: Client, n: int = 300) -> dict[str, float]:
    """What asking one empty priority level costs a worker (actors._pull.pull_next, a no_wait pull):
    the latency a normal item pays for the high level asked before it (a low one: two levels)."""
    from actors._pull import Level, pull_next

    name = subjects.work_consumer("dummy", "any", "high")
    await c.js.add_consumer(subjects.STREAM_WORK, js_api.ConsumerConfig(
        name=name, durable_name=name, filter_subject=subjects.work("dummy", "any", "high"),
        ack_policy=js_api.AckPolicy.EXPLICIT))
    level, xs = Level("high", 0, subjects.STREAM_WORK, name), []
    for _ in range(n):
        t0 = time.perf_counter()
        if await pull_next(c.nc, level, None) is not None:
            raise RuntimeError("the bench's own high level is not empty")
        xs.append((time.perf_counter() - t0) * 1000)
    xs.sort()
    return {"median": round(statistics.median(xs), 3), "p90": round(xs[int(0.9 * n)], 3), "max": round(xs[-1], 3)}


async def priority_figures(c: Client, variants: int, epochs: int, reps: int) -> dict[str, Any]:
    """A low-priority sweep of `variants` trainings, all of them queued at once (max_parallel =
    variants), occupying both trainers; `reps` times, while both run a low training, a high-priority
    training is submitted and its queue wait measured: its `created` -> `started` (both stamped by
    the orchestrator). No preemption: a running low training runs to its end, so the bound is the
    time until the first running training ends (`remaining_s`, from the high one's `created` to the
    first low training's end after it) plus 1 s; `excess_s` = wait - remaining (goal <= 1 s)."""
    import random
    from datetime import datetime

    await BarStore(c.js).merge("AAPL", "1h", bars(2_000, "1h", seed=3), "sim")
    text = SWEEP_STRATEGY.read_text()
    start, end = datetime.fromisoformat("2010-01-04T00:00+00:00"), datetime.fromisoformat("2010-04-01T00:00+00:00")
    warm = StartTraining(op_id=subjects.new_op_id("training"), strategy_yaml=text, epochs=1, data_mode="none",
                         start=start, end=end)
    for _ in range(SWEEP_TRAINERS):  # each trainer's first training imports torch in its process
        await _ended(c, warm)
        warm = msgspec.structs.replace(warm, op_id=subjects.new_op_id("training"))
    rates = [round(0.001 + 0.0005 * i, 6) for i in range(variants)]
    sweep = RunSweep(op_id=subjects.new_op_id("training"), strategy_path=str(SWEEP_STRATEGY), strategy_yaml=text,
                     params=[SweepParam(path="model.training.learning_rate", values=rates)], epochs=epochs,
                     data_mode="none", start=start, end=end, max_parallel=min(variants, MAX_SWEEP_PARALLEL))
    await c.submit(sweep)  # priority None: a sweep's default, low
    rng = random.Random(7)
    waits, remaining, excess, queued_low = [], [], [], []
    for _ in range(reps):
        while True:  # both trainers on a low training, more low ones queued behind them
            view = await c.view(sweep.op_id)
            kids = [await c.view(k) for k in view.children]
            running = [k for k in kids if k.status == "running"]
            if view.terminal:
                raise RuntimeError(f"the sweep ended before {reps} repetitions: use more variants or epochs")
            if len(running) >= SWEEP_TRAINERS and all(k.priority == "low" for k in running):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(rng.uniform(0.0, 0.5))  # somewhere inside the running trainings
        high = StartTraining(op_id=subjects.new_op_id("training"), strategy_yaml=text, epochs=1, data_mode="none",
                             start=start, end=end, priority="high", requested_by="bench")
        how = (await _ended(c, high))[1]
        if how != "completed":
            raise RuntimeError(f"the high-priority training ended {how}")
        created, started = await _created_at(c, high.op_id), (await _training_span(c, high.op_id))[0]
        ends = []
        for k in (await c.view(sweep.op_id)).children:
            kv = await c.view(k)
            if kv.finished_at is not None and kv.finished_at >= created and kv.started_at and kv.started_at < created:
                ends.append(kv.finished_at)
        first_end = min(ends) if ends else started
        queued_low.append(sum(1 for k in kids if k.status == "queued"))
        waits.append((started - created).total_seconds())
        remaining.append(max((first_end - created).total_seconds(), 0.0))
        excess.append(waits[-1] - remaining[-1])
        print(f"  high-priority training: queue wait {waits[-1]:.3f} s, first running training ended "
              f"{remaining[-1]:.3f} s after it was created (excess {excess[-1]:+.3f} s), "
              f"{queued_low[-1]} low trainings queued", flush=True)
    await c.cancel(sweep.op_id, reason="bench done")

    def stats(xs: list[float]) -> dict[str, float]:
        return {"median": round(statistics.median(xs), 3), "min": round(min(xs), 3), "max": round(max(xs), 3)}

    return {"variants": variants, "trainers": SWEEP_TRAINERS, "epochs": epochs, "repetitions": reps,
            "preemption": False, "low_queued_at_submit": stats([float(q) for q in queued_low]),
            "queue_wait_s": stats(waits), "remaining_s": stats(remaining), "excess_s": stats(excess),
            "met": max(excess) <= 1.0, "target": "queue wait <= the first running training's remaining time + 1 s"}


async def _on_trainers(name: str, measure: Callable[[Client], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """`measure` on a fresh server with an in-process orchestrator and SWEEP_TRAINERS trainer processes."""
    with BenchServer(name, heartbeat_s=1.0, device="cpu") as srv:
        orchestrator = Orchestrator(srv.settings)
        await orchestrator.start()
        trainers = [ActorProcess(srv.settings, "trainer") for _ in range(SWEEP_TRAINERS)]
        try:
            async with Client(srv.settings) as c:
                await wait_alive(c, ["orchestrator", "trainer"])
                while sum(1 for b in await c.live_actors() if b.role == "trainer") < SWEEP_TRAINERS:
                    await asyncio.sleep(0.1)
                return await measure(c)
        finally:
            for t in trainers:
                t.stop()
            await orchestrator.stop()


def pieces(runs: int) -> dict[str, Any]:
    """In this process, no NATS: the bare computation, `run_backtest` (features, signals, trading,
    figures) and `curve_bytes` on the same bars, alternated, medians of `runs`
    (KTRDR_BENCH_RESEARCH_PARTS=pieces): the run and the curve without routing or the stores."""
    import torch

    from ktrdr.backtest import BacktestJob, TrainedModel, curve_bytes, run_backtest

    torch.set_num_threads(Backtester.inference_threads)
    out: dict[str, Any] = {}
    for tf, n in (("1h", 87_660), ("1m", 1_000_000)):
        symbol, frame = SYMBOLS[tf], bars(n, tf)
        files = model_files(STRATEGY.replace("TF", tf).replace("AAPL", symbol), frame, tf, symbol)
        model, job = TrainedModel.from_files(files), BacktestJob(model_ref="bench", symbols=[symbol])
        bare_s, run_s, curve_s = [], [], []
        for _ in range(runs):
            bare_s.append(bare(files, frame, tf, 0.001, 1.0))
            t0 = time.perf_counter()
            outcome = run_backtest(job, model, {symbol: {tf: frame}})
            run_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            data = curve_bytes(outcome.curve)
            curve_s.append(time.perf_counter() - t0)
        out[f"{tf}_{n}"] = {"bare_s": round(statistics.median(bare_s), 4), "run_s": round(statistics.median(run_s), 4),
                            "run_range_s": _range(run_s), "curve_s": round(statistics.median(curve_s), 4),
                            "curve_range_s": _range(curve_s), "curve_mb": round(len(data) / 1e6, 2)}
        print(f"  {tf} {n:>9,} bars: bare {out[f'{tf}_{n}']['bare_s']:.3f} s, run {out[f'{tf}_{n}']['run_s']:.3f} s, "
              f"curve {out[f'{tf}_{n}']['curve_s']:.3f} s ({len(data) / 1e6:.1f} MB)", flush=True)
    return out


async def main() -> dict[str, Any]:
    runs = int(os.environ.get("KTRDR_BENCH_RESEARCH_RUNS", "3"))
    cancels = int(os.environ.get("KTRDR_BENCH_RESEARCH_CANCELS", "20"))
    parts = os.environ.get("KTRDR_BENCH_RESEARCH_PARTS", "backtest,sweep").split(",")
    results: dict[str, Any] = {}
    if "pieces" in parts:
        results["pieces"] = await asyncio.to_thread(pieces, runs)
    if "sweep" in parts:
        sizes = tuple(int(x) for x in os.environ.get("KTRDR_BENCH_SWEEP_SIZES", "4,8,32").split(","))
        epochs = int(os.environ.get("KTRDR_BENCH_SWEEP_EPOCHS", "40"))
        results["sweep"] = await _on_trainers("research-sweep", lambda c: sweep_figures(c, sizes, epochs))
    if "priority" in parts:
        variants = int(os.environ.get("KTRDR_BENCH_PRIORITY_VARIANTS", "32"))
        epochs = int(os.environ.get("KTRDR_BENCH_PRIORITY_EPOCHS", "40"))
        reps = int(os.environ.get("KTRDR_BENCH_PRIORITY_REPS", "5"))

        async def priority(c: Client) -> dict[str, Any]:
            out = await priority_figures(c, variants, epochs, reps)
            out["no_wait_pull_ms"] = await no_wait_pull_ms(c)
            return out

        results["priority"] = await _on_trainers("research-priority", priority)
    if "pull" in parts:
        from bench.priority_pull import figures as pull_figures

        with BenchServer("research-pull") as srv:
            async with Client(srv.settings) as c:
                results["pull"] = await pull_figures(c)
    if "backtest" not in parts:
        results["machine"] = {"cores": len(os.sched_getaffinity(0)), "load_avg_1m_at_end": os.getloadavg()[0]}
        return results
    with BenchServer("research", heartbeat_s=1.0, device="cpu") as srv:
        orchestrator = Orchestrator(srv.settings)
        await orchestrator.start()
        worker = ActorProcess(srv.settings, "backtester")
        try:
            async with Client(srv.settings) as c:
                await wait_alive(c, ["orchestrator", "backtester"])
                results["throughput"] = await throughput(c, runs, _sizes())
                n = max(_sizes().get("1m", (1_000_000,)))
                ref = f"bench_bt/{SYMBOLS['1m']}_1m"
                results["cancel_latency_backtest"] = {"bars": n, **await cancel_latency(c, ref, SYMBOLS["1m"], cancels)}
        finally:
            worker.stop()
            await orchestrator.stop()
    results["machine"] = {"cores": len(os.sched_getaffinity(0)), "load_avg_1m_at_end": os.getloadavg()[0]}
    return results


if __name__ == "__main__":
    from bench._common import report

    report("research", asyncio.run(main()))
