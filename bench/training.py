"""Training benchmarks, same run, same data: end-to-end throughput of the trainer actor (its training
child process, progress, cancel checks, per-epoch validation and checkpoints) against a bare PyTorch
loop, cancel latency during training, progress latency during training, the child's start-up cost,
and the child's torch thread budget (1 vs 2 threads).

The trainer runs as it is deployed: `python -m actors trainer`, which runs torch in its own child
process. The bare loop runs in this process on one dedicated thread (torch here is ~3x slower once two
Python threads have used it), at 1 and at 2 torch threads; the baseline is the faster of the two in
each round, so the ratio is against the best bare loop this machine gave in that round. It also runs
in a process of its own (1 thread, as the trainer's child), a second baseline. Rounds are
interleaved (bare, actor, bare, actor ...) so machine noise hits both alike; figures are medians."""

from __future__ import annotations

import asyncio
import contextlib
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
from events.codec import decode_event_on
from events.messages import OperationProgress, ProgressState, StartTraining, TrainingContext
from ktrdr.cancellation import CancellationToken
from ktrdr.client import Client
from ktrdr.data.bars_store import BarStore
from ktrdr.data.calendar import lookup
from ktrdr.data.store import DataStore
from ktrdr.ib.sim.data import generate_bars
from ktrdr.training.baseline import train_bare
from ktrdr.training.job import TrainingJob
from ktrdr.training.process import TrainingProcess, training_threads
from ktrdr.training.strategy import Strategy, parse_strategy
from ktrdr.training.trainer import prepare_training_data

STRATEGY = Path(__file__).parents[1] / "strategies" / "mlp_rsi_aapl.yaml"
START, END = datetime(2018, 1, 1, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC)
EPOCHS = 10
ROUNDS = 5


def bench_strategy_text() -> str:
    """The example strategy with a wider network, so an epoch is long enough (about 0.2 s here) for
    per-epoch work to be measured at its real share rather than dominate a 40 ms toy epoch."""
    text = STRATEGY.read_text().replace("hidden_layers: [32, 16]", "hidden_layers: [256, 128]")
    return text.replace("patience: 8", "patience: 1000")


@contextlib.asynccontextmanager
async def trainer_process(srv: BenchServer, c: Client, batch_every: int = 20) -> AsyncIterator[int]:
    """`python -m actors trainer` against the bench server; yields its pid once its heartbeat is in
    ACTORS and its training child is warm (a first, untimed training)."""
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
        await _run_training(c, bench_strategy_text(), 1)  # warm: the child's first run pays one-off costs
        yield proc.pid
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


def _bare(strategy: Strategy, data: Any, threads: int, val: bool = False) -> tuple[float, float]:
    """(wall seconds, CPU share of this thread) for EPOCHS epochs of the bare loop at `threads` torch
    threads, on the calling thread."""
    torch.set_num_threads(threads)
    t0, c0 = time.perf_counter(), time.thread_time()
    train_bare(data.x_train, data.y_train, strategy, EPOCHS, val=(data.x_val, data.y_val) if val else None)
    wall = time.perf_counter() - t0
    return wall, (time.thread_time() - c0) / wall


def _child_loop(tp: TrainingProcess, job: TrainingJob, bars: Any) -> float:
    """Seconds of the training phase of one run in a TrainingProcess called directly (no actor, no NATS)."""
    marks: dict[str, float] = {}

    def emit(state: ProgressState) -> None:
        marks.setdefault(state.phase, time.perf_counter())

    tp.run(job, bars, emit=emit, cancel=CancellationToken())
    return marks["evaluating"] - marks["training"]


_BARE_PROCESS = """
import sys, time, torch
torch.set_num_threads(1)
from bench.training import EPOCHS, START, END, bench_strategy_text
from ktrdr.data.calendar import lookup
from ktrdr.ib.sim.data import generate_bars
from ktrdr.training.baseline import train_bare
from ktrdr.training.features import check_bars
from ktrdr.training.strategy import parse_strategy
from ktrdr.training.trainer import prepare_training_data
s = parse_strategy(bench_strategy_text(), "bench")
bars = check_bars(generate_bars(lookup("AAPL"), "1h", START, END, seed=0), "AAPL", "1h")
d = prepare_training_data(s, {"AAPL": {"1h": bars}}, ["AAPL"])
train_bare(d.x_train, d.y_train, s, 1)
for _ in sys.stdin:
    t = time.perf_counter()
    train_bare(d.x_train, d.y_train, s, EPOCHS)
    print(time.perf_counter() - t, flush=True)
"""


class BareProcess:
    """The bare loop (1 torch thread) in a process of its own, as the trainer's child is: separates
    what the instrumentation and the actor cost from what running in another process costs here."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", _BARE_PROCESS], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)

    def seconds(self) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc), 0.0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(x) for x in (task / "children").read_text().split()]
    return out


async def _actor_round(c: Client, text: str, n: int, pids: dict[str, int]) -> dict[str, float]:
    """One timed training through the actor, with the CPU each process used while it ran: the
    training child against everything around it (trainer actor, nats-server, this process)."""
    before = {k: _cpu_s(p) for k, p in pids.items()}
    self0, t0 = time.process_time(), time.perf_counter()
    events, view = await _run_training(c, text, EPOCHS)
    wall = time.perf_counter() - t0
    used = {k: _cpu_s(p) - before[k] for k, p in pids.items()}
    used["bench"] = time.process_time() - self0
    t_start, t_end = _phase_times(events)
    assert view.result["data_summary"]["samples"]["train"] * EPOCHS == n
    return {"actor": n / (t_end - t_start).total_seconds(), "child_cpu_share": used["child"] / wall,
            "helpers_cpu_share": (used["trainer"] + used["nats"] + used["bench"]) / wall,
            "load": os.getloadavg()[0]}


async def overhead(srv: BenchServer, store: DataStore) -> dict[str, Any]:
    text = bench_strategy_text()
    strategy = parse_strategy(text, file="bench")
    bars = {"AAPL": {"1h": store.read("AAPL", "1h", START, END)}}
    data = prepare_training_data(strategy, bars, ["AAPL"])
    n = len(data.x_train) * EPOCHS
    job = TrainingJob(op_id="training-direct", strategy_yaml=text, start=START, end=END, epochs=EPOCHS, device="cpu")
    fig: dict[str, list[float]] = {}
    loop = asyncio.get_running_loop()
    torch_thread = ThreadPoolExecutor(1)  # one thread for all of this process's torch work
    children = {t: TrainingProcess(threads=t) for t in (1, 2)}
    bare_process = BareProcess()
    async with Client(srv.settings) as c:
        await c.ensure_streams()
        async with trainer_process(srv, c) as trainer_pid:
            pids = {"trainer": trainer_pid, "child": _children(trainer_pid)[0], "nats": srv.proc.pid}
            for t, tp in children.items():  # warm, untimed
                await loop.run_in_executor(torch_thread, _bare, strategy, data, t)
                await loop.run_in_executor(None, _child_loop, tp, job, bars)
            await loop.run_in_executor(None, bare_process.seconds)
            for _ in range(ROUNDS):
                for t, val in ((1, False), (2, False), (1, True)):
                    wall, share = await loop.run_in_executor(torch_thread, _bare, strategy, data, t, val)
                    fig.setdefault(f"bare_{t}{'_val' if val else ''}", []).append(n / wall)
                    fig.setdefault(f"bare_{t}_cpu_share", []).append(share)
                fig.setdefault("bare_process", []).append(n / await loop.run_in_executor(None, bare_process.seconds))
                for k, v in (await _actor_round(c, text, n, pids)).items():
                    fig.setdefault(k, []).append(v)
                for t, tp in children.items():
                    fig.setdefault(f"child_{t}", []).append(n / await loop.run_in_executor(None, _child_loop, tp,
                                                                                           job, bars))
                fig.setdefault("ratio", []).append(fig["actor"][-1] / max(fig["bare_1"][-1], fig["bare_2"][-1]))
    for tp in children.values():
        tp.close()
    bare_process.close()
    torch_thread.shutdown()
    med = {k: statistics.median(v) for k, v in fig.items()}
    return {
        "train_rows": len(data.x_train), "epochs": EPOCHS, "rounds": ROUNDS,
        "child_torch_threads": training_threads(),
        "bare_1_thread_samples_per_s": med["bare_1"], "bare_2_threads_samples_per_s": med["bare_2"],
        "bare_with_val_samples_per_s": med["bare_1_val"], "actor_samples_per_s": med["actor"],
        "ratio_median": med["ratio"], "ratios": [round(r, 3) for r in fig["ratio"]],
        "ratio_vs_bare_with_val": med["actor"] / med["bare_1_val"],
        "bare_own_process_samples_per_s": med["bare_process"],
        "ratio_vs_bare_own_process": statistics.median(a / b for a, b in zip(fig["actor"], fig["bare_process"],
                                                                              strict=True)),
        "child_direct_1_thread_samples_per_s": med["child_1"], "child_direct_2_threads_samples_per_s": med["child_2"],
        "bare_1_thread_cpu_share": med["bare_1_cpu_share"],
        "actor_child_cpu_share": med["child_cpu_share"], "actor_helpers_cpu_share": med["helpers_cpu_share"],
        "load_avg_1m": [round(x, 2) for x in fig["load"]],
        "target": "ratio >= 0.98 of the faster bare loop (the actor also validates and checkpoints every epoch)",
    }


async def cancel_latency(srv: BenchServer, runs: int = 30) -> dict[str, Any]:
    text = bench_strategy_text()
    lat, batch_ms = [], []
    async with Client(srv.settings) as c:
        await c.ensure_streams()
        async with trainer_process(srv, c, batch_every=1):
            for _ in range(runs):
                cmd = StartTraining(op_id=subjects.new_op_id("training"), strategy_path=str(STRATEGY),
                                    strategy_yaml=text, epochs=50, start=START, end=END, data_mode="none")
                in_training, cancelled = asyncio.Event(), asyncio.Event()
                t_cancelled: list[int] = []
                batches: list[tuple[float, int]] = []  # (receive time, batch number over the run)

                async def cb(msg: Any, in_training: asyncio.Event = in_training, cancelled: asyncio.Event = cancelled,
                             t_cancelled: list[int] = t_cancelled, batches: list[tuple[float, int]] = batches) -> None:
                    if msg.subject.endswith(".cancelled"):
                        t_cancelled.append(time.perf_counter_ns())
                        cancelled.set()
                    elif msg.subject.endswith(".progress"):
                        ev = decode_event_on(msg.subject, msg.data)
                        ctx = ev.progress.context if isinstance(ev, OperationProgress) else None
                        if isinstance(ctx, TrainingContext) and ctx.batch and ev.progress.phase == "training":
                            batches.append((time.perf_counter(), (ctx.epoch - 1) * ctx.total_batches + ctx.batch))
                            if ctx.epoch >= 2:
                                in_training.set()

                sub = await c.js.subscribe(subjects.ops(cmd.op_id), cb=cb, ordered_consumer=True,
                                           deliver_policy=js_api.DeliverPolicy.ALL)
                await c.submit(cmd)
                await asyncio.wait_for(in_training.wait(), 120)
                await asyncio.sleep(0.05)  # somewhere inside an epoch
                t0 = time.perf_counter_ns()
                await c.cancel(cmd.op_id)
                await asyncio.wait_for(cancelled.wait(), 30)
                lat.append((t_cancelled[0] - t0) / 1e6)
                await sub.unsubscribe()
                # one batch time from this run: progress arrives after every batch
                (t_a, b_a), (t_b, b_b) = batches[len(batches) // 4], batches[-1]
                if b_b > b_a:
                    batch_ms.append((t_b - t_a) * 1000 / (b_b - b_a))
    b = statistics.median(batch_ms) if batch_ms else float("nan")
    return {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": max(lat), "runs": runs,
            "batch_time_ms": b, "target_ms": b + 10, "target": "p99 <= one batch time + 10 ms"}


async def progress_latency(srv: BenchServer) -> dict[str, Any]:
    """Event built in the trainer actor (ev.ts, when the child's progress frame is handed to it) -> a
    CLI-side ordered consumer has it, during a training run with a progress event every batch. The
    child -> actor hop before that is measured separately (child_pipe_*)."""
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
                ev = decode_event_on(msg.subject, msg.data)
                if isinstance(ev, OperationProgress) and ev.progress.phase == "training":
                    lat.append((now - ev.ts.timestamp()) * 1000)
                if msg.subject.endswith((".completed", ".failed", ".cancelled")):
                    done.set()

            sub = await c.js.subscribe(subjects.ops(cmd.op_id), cb=cb, ordered_consumer=True,
                                       deliver_policy=js_api.DeliverPolicy.ALL)
            await c.submit(cmd)
            await asyncio.wait_for(done.wait(), 300)
            await sub.unsubscribe()
    pipe = await asyncio.get_running_loop().run_in_executor(None, _pipe_latency, text)
    return {"events": len(lat), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
            "child_pipe_p50_ms": pct(pipe, 50), "child_pipe_p99_ms": pct(pipe, 99),
            "target": "p99 <= 2 ms"}


def _pipe_latency(text: str) -> list[float]:
    """Child send -> parent receive of progress frames, one frame per batch, in a direct run."""
    bars = {"AAPL": {"1h": generate_bars(lookup("AAPL"), "1h", START, END, seed=0)}}
    job = TrainingJob(op_id="training-pipe", strategy_yaml=text, start=START, end=END, epochs=2, device="cpu",
                      batch_every=1)
    tp = TrainingProcess()
    try:
        tp.run(job, bars, emit=lambda _state: None, cancel=CancellationToken())
        return list(tp.pipe_latency_ms)
    finally:
        tp.close()


def child_startup(rounds: int = 2) -> dict[str, Any]:
    """Spawn -> ready of a training child (python, torch, the training stack and its warm-up)."""
    times = []
    for _ in range(rounds):
        tp = TrainingProcess()
        tp.start()
        times.append(tp.startup_s or float("nan"))
        tp.close()
    return {"startup_s_median": statistics.median(times), "startups_s": [round(t, 2) for t in times],
            "note": "paid once per trainer actor, in the background at actor start"}


async def main() -> dict[str, Any]:
    results: dict[str, Any] = {}
    with BenchServer("training", heartbeat_s=1.0, device="cpu") as srv:
        store = DataStore(srv.settings.home)  # what the bare loop reads
        frame = generate_bars(lookup("AAPL"), "1h", START, END, seed=0)
        store.write("AAPL", "1h", frame, source="sim")
        async with Client(srv.settings) as c:  # what the trainer reads: the BARS bucket
            await BarStore(c.js).merge("AAPL", "1h", frame, "sim")
        orchestrator = Orchestrator(srv.settings)
        await orchestrator.start()
        try:
            results["instrumentation_overhead"] = await overhead(srv, store)
            results["cancel_latency_training"] = await cancel_latency(srv)
            results["progress_latency_training"] = await progress_latency(srv)
            results["child_startup"] = await asyncio.get_running_loop().run_in_executor(None, child_startup)
        finally:
            await orchestrator.stop()
    results["machine"] = {"cores": len(os.sched_getaffinity(0)), "load_avg_1m_at_end": os.getloadavg()[0]}
    return results


if __name__ == "__main__":
    from bench._common import report

    report("training", asyncio.run(main()))
