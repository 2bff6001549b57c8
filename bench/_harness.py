"""What bench.metrics and bench.tracing share: a measurement process (a fresh one per measurement, so
whatever one configuration loads or starts never outlives it) that runs one emitting actor, the
progress publishing it times (throughput, CPU per event, one-at-a-time latency), the parent's side of
it (a child spoken to over stdin/stdout lines), off and on measured alternately, and the comparison
of the two (medians, ranges, ratios of each pair)."""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from bench._common import ROOT
from events import subjects

# --- in the measurement process ----------------------------------------------------------------


async def start_emitter() -> Any:
    """An actor of role `bench` on the configured server (NATS_URL and KTRDR_* from the parent)."""
    from actors.runtime import Actor
    from ktrdr.config import Settings

    class Emitter(Actor):
        role = "bench"

    actor = Emitter(Settings())
    await actor.start()
    return actor


def progress_state(pct: float = 50.0) -> Any:
    from events.messages import DummyContext, ProgressState

    return ProgressState(percentage=pct, message="Working on iteration 5/10", context=DummyContext(iteration=5))


async def emit_n(actor: Any, op_id: str, n: int) -> tuple[float, float]:
    """Emit n progress events, then wait until the server acknowledged every one: (events per second,
    this process's CPU microseconds per event: every thread's, a metrics server's scrapes included)."""
    state = progress_state()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        actor.emit_progress(op_id, state)
    await actor.flush_progress(acked=True)
    return n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e6


async def emit_for(actor: Any, op_id: str, seconds: float, chunk: int = 1_000) -> dict[str, float]:
    """Emit progress events in chunks of `chunk` (each handed to the connection before the next) for
    `seconds`, then wait for every ack: events, events per second, CPU us per event, and the window's
    wall-clock bounds (time.time(), to compare with another process's scrape times)."""
    state = progress_state()
    start = time.time()
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    while time.perf_counter() - t0 < seconds:
        for _ in range(chunk):
            actor.emit_progress(op_id, state)
        n += chunk
        await actor.flush_progress()
    await actor.flush_progress(acked=True)
    took = time.perf_counter() - t0
    return {"events": float(n), "events_per_s": n / took, "cpu_us": (time.process_time() - c0) / n * 1e6,
            "window_start": start, "window_end": start + took}


async def latency_us(actor: Any, op_id: str, events: int) -> list[float]:
    """One progress event at a time, from emit to a core subscriber of its subject having it (us)."""
    from events import subjects
    from events.messages import OperationProgress

    got: asyncio.Queue[tuple[float, float]] = asyncio.Queue()

    async def cb(msg: Any) -> None:  # (arrival, its percentage): a seal repeats the one before, never ours
        got.put_nowait((time.perf_counter(), json.loads(msg.data)["progress"]["percentage"]))

    sub = await actor.nc.subscribe(subjects.ops(op_id, OperationProgress.name), cb=cb)
    await actor.nc.flush()
    out: list[float] = []
    for i in range(events):
        pct = round(100.0 * (i + 1) / events, 6)
        t0 = time.perf_counter()
        actor.emit_progress(op_id, progress_state(pct))
        while True:
            at, seen = await asyncio.wait_for(got.get(), 10)
            if seen == pct:
                break
        out.append((at - t0) * 1e6)
    await sub.unsubscribe()
    await actor.flush_progress(acked=True)
    return out


def say(line: str) -> None:
    print(line, flush=True)


async def hear() -> str:
    """The parent's next line (read off the event loop)."""
    return (await asyncio.to_thread(sys.stdin.readline)).strip()


# --- in the parent -----------------------------------------------------------------------------


class Child:
    """`python -m MODULE --child ARGS...` with `env`, spoken to in lines: `line()` reads its next
    stdout line, `send()` writes one to its stdin, `result()` parses a JSON line, `close()` waits."""

    def __init__(self, module: str, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", module, "--child", *args], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid

    def line(self) -> str:
        assert self.proc.stdout is not None
        out = self.proc.stdout.readline()
        if not out:
            raise RuntimeError(f"measurement process exited {self.proc.wait(60)} without answering")
        return out.strip()

    def result(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.line())
        return parsed

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self, timeout: float = 60) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        rc = self.proc.wait(timeout)
        if rc != 0:
            raise RuntimeError(f"measurement process exited {rc}")


def purge_ops(settings: Any) -> None:
    """Empty the OPS stream (blocking: run from a thread), so every measurement publishes into the same
    empty stream: a stream that grew by the measurements before would slow the later ones."""
    from ktrdr.client import Client

    async def purge() -> None:
        async with Client(settings) as c:
            await c.js.purge_stream(subjects.STREAM_OPS)

    asyncio.run(purge())


async def alternate(measures: dict[str, Callable[[], dict[str, Any]]], rounds: int,
                    before: Callable[[], None] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Each measurement `rounds` times, in turn, the order rotated each round (off, on; on, off; ...:
    drift, the machine's other load and whatever a measurement leaves to the next fall on every
    configuration alike), each in a thread (the callables block); `before` runs before each one."""
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in measures}
    names = list(measures)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if before is not None:
                await asyncio.to_thread(before)
            out[name].append(await asyncio.to_thread(measures[name]))
    return out


def spread(values: list[float]) -> dict[str, Any]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def compare(on: list[dict[str, Any]], off: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """One figure, on against off: each side's median and range, the ratio of the medians and of each pair."""
    o, f = [float(r[key]) for r in on], [float(r[key]) for r in off]
    pairs = [a / b for a, b in zip(o, f, strict=True)]
    return {"off": spread(f), "on": spread(o), "on_vs_off": round(statistics.median(o) / statistics.median(f), 4),
            "pair_ratios": [round(x, 3) for x in pairs], "median_pair_ratio": round(statistics.median(pairs), 4)}
