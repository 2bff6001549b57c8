"""Training benchmarks, same run, same data: instrumentation overhead (bare PyTorch loop vs the
trainer actor with progress, cancel checks, per-epoch validation and checkpoints), cancel latency
during training, and progress latency during training."""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from nats.js import api as js_api

from actors.orchestrator import Orchestrator
from actors.trainer import Trainer
from bench._common import BenchServer, pct
from events import subjects
from events.codec import decode_event
from events.messages import OperationProgress, StartTraining, TrainingContext
from ktrdr.client import Client
from ktrdr.data.calendar import lookup
from ktrdr.data.store import DataStore
from ktrdr.ib.sim.data import generate_bars
from ktrdr.training.baseline import train_bare
from ktrdr.training.strategy import parse_strategy
from ktrdr.training.trainer import prepare_training_data

STRATEGY = Path(__file__).parents[1] / "strategies" / "mlp_rsi_aapl.yaml"
START, END = datetime(2018, 1, 1, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC)
EPOCHS = 4


def bench_strategy_text() -> str:
    """The example strategy with a wider network, so an epoch is long enough (about a second) for
    per-epoch work to be measured at its real share rather than dominate a 40 ms toy epoch."""
    text = STRATEGY.read_text().replace("hidden_layers: [32, 16]", "hidden_layers: [256, 128]")
    return text.replace("patience: 8", "patience: 1000")


async def _run_training(c: Client, text: str, epochs: int) -> tuple[list[Any], Any]:
    cmd = StartTraining(op_id=subjects.new_op_id("training"), strategy_path=str(STRATEGY), strategy_yaml=text,
                        epochs=epochs, start=START, end=END)
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


async def overhead(srv: BenchServer, rounds: int = 5) -> dict[str, Any]:
    text = bench_strategy_text()
    strategy = parse_strategy(text, file="bench")
    store = DataStore(srv.settings.home)
    bars = {"AAPL": {"1h": store.read("AAPL", "1h", START, END)}}
    data = prepare_training_data(strategy, bars, ["AAPL"])
    n = len(data.x_train)
    bare, actor = [], []
    async with Client(srv.settings) as c:
        await c.ensure_streams()
        # Warm-up, not timed: torch's first run in a process pays one-off costs (about 2x here).
        await asyncio.to_thread(train_bare, data.x_train, data.y_train, strategy, 1)
        await _run_training(c, text, 1)
        for _ in range(rounds):  # interleaved, so machine noise hits both alike
            t0 = time.perf_counter()
            await asyncio.to_thread(train_bare, data.x_train, data.y_train, strategy, EPOCHS)
            bare.append(n * EPOCHS / (time.perf_counter() - t0))
            events, _view = await _run_training(c, text, EPOCHS)
            t_start, t_end = _phase_times(events)
            actor.append(n * EPOCHS / (t_end - t_start).total_seconds())
    b, a = statistics.median(bare), statistics.median(actor)
    return {"train_rows": n, "epochs": EPOCHS, "torch_threads": torch.get_num_threads(),
            "bare_samples_per_s": b, "actor_samples_per_s": a, "ratio": a / b,
            "target": "ratio >= 0.98 (actor includes per-epoch validation + checkpoint)"}


async def cancel_latency(srv: BenchServer, runs: int = 12) -> dict[str, Any]:
    text = bench_strategy_text()
    lat, batch_ms = [], []
    async with Client(srv.settings) as c:
        await c.ensure_streams()
        for _ in range(runs):
            cmd = StartTraining(op_id=subjects.new_op_id("training"), strategy_path=str(STRATEGY),
                                strategy_yaml=text, epochs=50, start=START, end=END)
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
    Trainer.batch_every = 1
    try:
        async with Client(srv.settings) as c:
            await c.ensure_streams()
            cmd = StartTraining(op_id=subjects.new_op_id("training"), strategy_path=str(STRATEGY),
                                strategy_yaml=text, epochs=2, start=START, end=END)
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
    finally:
        Trainer.batch_every = 20
    return {"events": len(lat), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "target": "p99 <= 2 ms"}


async def main() -> dict[str, Any]:
    results: dict[str, Any] = {}
    with BenchServer("training", heartbeat_s=1.0, device="cpu") as srv:
        store = DataStore(srv.settings.home)
        store.write("AAPL", "1h", generate_bars(lookup("AAPL"), "1h", START, END, seed=0), source="sim")
        actors = [Orchestrator(srv.settings), Trainer(srv.settings)]
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

