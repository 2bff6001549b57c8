"""Training benchmarks, same run, same data: instrumentation overhead (bare PyTorch loop vs the
trainer actor with progress, cancel checks, per-epoch validation and checkpoints), cancel latency
during training, and progress latency during training.

The trainer runs as its own process (`python -m actors trainer`), as it is deployed: the measuring
client's event decoding must not share a GIL with the training thread. The bare loop runs in this
process on one dedicated thread (torch is ~3x slower here once two Python threads have used it)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from nats.js import api as js_api

from actors.orchestrator import Orchestrator
from bench._common import BenchServer, pct
from events import subjects
from events.codec import decode_event
from events.messages import OperationProgress, StartTraining, TrainingContext
from ktrdr.cancellation import CancellationToken
from ktrdr.client import Client
from ktrdr.data.calendar import lookup
from ktrdr.data.store import DataStore
from ktrdr.ib.sim.data import generate_bars
from ktrdr.training.baseline import train_bare
from ktrdr.training.strategy import Strategy, parse_strategy
from ktrdr.training.trainer import TrainingOperationContext, prepare_training_data, train_strategy

STRATEGY = Path(__file__).parents[1] / "strategies" / "mlp_rsi_aapl.yaml"
START, END = datetime(2018, 1, 1, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC)
EPOCHS = 4


def bench_strategy_text() -> str:
    """The example strategy with a wider network, so an epoch is long enough (about a second) for
    per-epoch work to be measured at its real share rather than dominate a 40 ms toy epoch."""
    text = STRATEGY.read_text().replace("hidden_layers: [32, 16]", "hidden_layers: [256, 128]")
    return text.replace("patience: 8", "patience: 1000")


@contextlib.asynccontextmanager
async def trainer_process(srv: BenchServer, c: Client, batch_every: int = 20) -> AsyncIterator[None]:
    """`python -m actors trainer` against the bench server; yields once its heartbeat is in ACTORS."""
    env = {**os.environ, "NATS_URL": srv.url, "KTRDR_HOME": str(srv.settings.home), "KTRDR_DEVICE": "cpu",
           "KTRDR_HEARTBEAT_S": "1", "KTRDR_PROGRESS_BATCH_EVERY": str(batch_every)}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "actors", "trainer", env=env,
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.pid in {hb.pid for hb in await c.live_actors()}:
                break
            if proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError("the trainer process did not come up")
            await asyncio.sleep(0.1)  # presence poll interval
        yield
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


async def _run_training(c: Client, text: str, epochs: int) -> tuple[list[Any], Any]:
    cmd = StartTraining(op_id=subjects.new_op_id("training"), strategy_path=str(STRATEGY), strategy_yaml=text,
                        epochs=epochs, start=START, end=END, data_mode="none")
    await c.submit(cmd)
    view = await c.watch(cmd.op_id, lambda ev, v: None, idle_timeout=600)
    assert view.status == "completed", view.error
    return await c.events(cmd.op_id), view


def _phase_times(events: list[Any]) -> tuple[datetime, datetime]:
    first: dict[str, datetime] = {}
    for e in events:
        if isinstance(e, OperationProgress):
            first.setdefault(e.progress.phase, e.ts)
    return first["training"], first["evaluating"]


def _train_loop_seconds(strategy: Strategy, bars: Any, workdir: Path) -> float:
    """The trainer's own loop (train_strategy: progress bridge, cancel checks, per-epoch validation,
    metrics and checkpoint) called directly on this thread, without the actor or NATS around it."""
    marks: dict[str, float] = {}

    def emit(u: Any) -> None:
        marks.setdefault(u.phase, time.perf_counter())

    ctx = TrainingOperationContext(op_id="training-direct", strategy=strategy, start=START, end=END, epochs=EPOCHS,
                                   device="cpu")
    train_strategy(ctx, load_bars=lambda _s, _t: bars, emit=emit, cancel=CancellationToken(),
                   checkpoint_dir=workdir / "checkpoint", models_dir=workdir / "models", device="cpu")
    return marks["evaluating"] - marks["training"]


async def overhead(srv: BenchServer, rounds: int = 7) -> dict[str, Any]:
    text = bench_strategy_text()
    strategy = parse_strategy(text, file="bench")
    store = DataStore(srv.settings.home)
    bars = {"AAPL": {"1h": store.read("AAPL", "1h", START, END)}}
    data = prepare_training_data(strategy, bars, ["AAPL"])
    n = len(data.x_train)
    bare, bare_val, loop_only, actor, own = [], [], [], [], []
    async with Client(srv.settings) as c:
        await c.ensure_streams()
        async with trainer_process(srv, c):
            # Warm-up, not timed: torch's first run in a process pays one-off costs (about 2x here).
            loop = asyncio.get_running_loop()
            torch_thread = ThreadPoolExecutor(1)  # as the trainer actor does: one thread for all torch work
            await loop.run_in_executor(torch_thread, train_bare, data.x_train, data.y_train, strategy, 1)
            await _run_training(c, text, 1)
            for _ in range(rounds):  # interleaved, so machine noise hits both alike
                t0 = time.perf_counter()
                await loop.run_in_executor(torch_thread, train_bare, data.x_train, data.y_train, strategy, EPOCHS)
                bare.append(n * EPOCHS / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                await loop.run_in_executor(torch_thread, functools.partial(
                    train_bare, data.x_train, data.y_train, strategy, EPOCHS, val=(data.x_val, data.y_val)))
                bare_val.append(n * EPOCHS / (time.perf_counter() - t0))
                loop_only.append(n * EPOCHS / await loop.run_in_executor(
                    torch_thread, _train_loop_seconds, strategy, bars["AAPL"]["1h"], srv.settings.home / "direct"))
                events, view = await _run_training(c, text, EPOCHS)
                t_start, t_end = _phase_times(events)
                actor.append(n * EPOCHS / (t_end - t_start).total_seconds())
                own.append(n * EPOCHS / (view.result["training_metrics"]["training_time_minutes"] * 60))
                rows = view.result["data_summary"]["samples"]["train"]
                assert rows == n, f"the actor trained on {rows} rows, the bare loop on {n}"
    b, bv, a = statistics.median(bare), statistics.median(bare_val), statistics.median(actor)
    return {"train_rows": n, "epochs": EPOCHS, "rounds": rounds, "torch_threads": torch.get_num_threads(),
            "bare_samples_per_s": b, "bare_with_val_samples_per_s": bv, "actor_samples_per_s": a,
            "ratio": a / b, "ratio_vs_bare_with_val": a / bv,
            "loop_only_samples_per_s": statistics.median(loop_only),
            "ratio_loop_only": statistics.median(loop_only) / b,
            "ratio_by_trainer_clock": statistics.median(own) / b,
            "target": "ratio >= 0.98 (the actor also validates and checkpoints every epoch)"}


async def cancel_latency(srv: BenchServer, runs: int = 12) -> dict[str, Any]:
    text = bench_strategy_text()
    lat, batch_ms = [], []
    async with Client(srv.settings) as c:
        await c.ensure_streams()
        async with trainer_process(srv, c):
            for _ in range(runs):
                cmd = StartTraining(op_id=subjects.new_op_id("training"), strategy_path=str(STRATEGY),
                                    strategy_yaml=text, epochs=50, start=START, end=END, data_mode="none")
                in_training, cancelled = asyncio.Event(), asyncio.Event()
                t_cancelled: list[int] = []
                ctx_seen: list[TrainingContext] = []

                async def cb(msg: Any, in_training: asyncio.Event = in_training, cancelled: asyncio.Event = cancelled,
                             t_cancelled: list[int] = t_cancelled, ctx_seen: list[TrainingContext] = ctx_seen) -> None:
                    if msg.subject.endswith(".cancelled"):
                        t_cancelled.append(time.perf_counter_ns())
                        cancelled.set()
                    elif msg.subject.endswith(".progress"):
                        ev = decode_event(msg.data)
                        if isinstance(ev, OperationProgress) and isinstance(ev.progress.context, TrainingContext):
                            if ev.progress.context.epoch >= 2 and ev.progress.phase == "training":
                                ctx_seen.append(ev.progress.context)
                                in_training.set()

                sub = await c.js.subscribe(subjects.ops(cmd.op_id), cb=cb, ordered_consumer=True,
                                           deliver_policy=js_api.DeliverPolicy.ALL)
                t_sub = time.perf_counter()
                await c.submit(cmd)
                await asyncio.wait_for(in_training.wait(), 120)
                await asyncio.sleep(0.05)  # somewhere inside an epoch
                t0 = time.perf_counter_ns()
                await c.cancel(cmd.op_id)
                await asyncio.wait_for(cancelled.wait(), 30)
                lat.append((t_cancelled[0] - t0) / 1e6)
                await sub.unsubscribe()
                view = await c.view(cmd.op_id)
                ctx = view.context
                if isinstance(ctx, TrainingContext) and ctx.total_batches and ctx.epoch > 1:
                    # one batch time, from the run itself: training time so far / batches done
                    events = await c.events(cmd.op_id)
                    t_train, _ = _phase_times([*events, _fake_eval(view)])
                    done = (ctx.epoch - 1) * ctx.total_batches + ctx.batch
                    batch_ms.append((view.finished_at - t_train).total_seconds() * 1000 / max(done, 1))
                del t_sub
    b = statistics.median(batch_ms) if batch_ms else float("nan")
    return {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": max(lat), "runs": runs,
            "batch_time_ms": b, "target_ms": b + 20, "target": "p99 <= one batch time + 20 ms"}


def _fake_eval(view: Any) -> OperationProgress:
    from events.messages import ProgressState

    return OperationProgress(op_id=view.op_id, ts=view.finished_at, progress=ProgressState(phase="evaluating"))


async def progress_latency(srv: BenchServer) -> dict[str, Any]:
    """Event built in the trainer's loop (ev.ts) -> a CLI-side ordered consumer has it, during a
    training run with a progress event every batch."""
    text = bench_strategy_text()
    lat: list[float] = []
    async with Client(srv.settings) as c:
        await c.ensure_streams()
        async with trainer_process(srv, c, batch_every=1):
            cmd = StartTraining(op_id=subjects.new_op_id("training"), strategy_path=str(STRATEGY),
                                strategy_yaml=text, epochs=2, start=START, end=END, data_mode="none")
            done = asyncio.Event()

            async def cb(msg: Any) -> None:
                now = time.time()
                ev = decode_event(msg.data)
                if isinstance(ev, OperationProgress) and ev.progress.phase == "training":
                    lat.append((now - ev.ts.timestamp()) * 1000)
                if msg.subject.endswith((".completed", ".failed", ".cancelled")):
                    done.set()

            sub = await c.js.subscribe(subjects.ops(cmd.op_id), cb=cb, ordered_consumer=True,
                                       deliver_policy=js_api.DeliverPolicy.ALL)
            await c.submit(cmd)
            await asyncio.wait_for(done.wait(), 300)
            await sub.unsubscribe()
    return {"events": len(lat), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "target": "p99 <= 2 ms"}


async def main() -> dict[str, Any]:
    results: dict[str, Any] = {}
    with BenchServer("training", heartbeat_s=1.0, device="cpu") as srv:
        store = DataStore(srv.settings.home)
        store.write("AAPL", "1h", generate_bars(lookup("AAPL"), "1h", START, END, seed=0), source="sim")
        orchestrator = Orchestrator(srv.settings)
        actors = [orchestrator]
        for a in actors:
            await a.start()
        try:
            results["instrumentation_overhead"] = await overhead(srv)
            results["cancel_latency_training"] = await cancel_latency(srv)
            results["progress_latency_training"] = await progress_latency(srv)
        finally:
            for a in actors:
                await a.stop()
    return results


if __name__ == "__main__":
    from bench._common import report

    report("training", asyncio.run(main()))

