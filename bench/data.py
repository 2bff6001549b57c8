"""Data-loading benchmarks against the simulated gateway (real ib_async client, TWS wire protocol),
through the whole actor path (client -> orchestrator -> job-manager -> ib actor -> gateway):

- concurrent segment fetching vs one segment at a time (KTRDR's way), same run, same gateway;
- a pacing-bound load against the lower bound IB's rules allow;
- cancel latency during a load.

IB's pacing windows are real (10 min, 2 s, 15 s) unless a figure says it used a time scale: a
pacing-bound load of 60+ requests takes over 10 minutes at IB's real rules, so that benchmark scales
every window (gateway and client alike) and reports the ratio to the equally scaled lower bound.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from nats.js import api as js_api

from actors.ib import IbActor
from actors.job_manager import JobManager
from actors.orchestrator import Orchestrator
from actors.runtime import Actor
from bench._common import BenchServer, pct
from events import subjects
from events.messages import LoadData
from ktrdr.client import Client
from ktrdr.config import Settings
from ktrdr.data.bars_store import bars_name
from ktrdr.data.calendar import lookup
from ktrdr.data.timeframes import max_request, parse_timeframe
from ktrdr.ib.pacing import PacingRules, lower_bound_seconds
from ktrdr.ib.sim.threaded import SimGatewayThread
from ktrdr.transport import objects


def utc(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)


class _Stack:
    """Gateway + orchestrator + job-manager + ib actor against the bench server."""

    def __init__(self, srv: BenchServer, *, latency: float, time_scale: float) -> None:
        self.srv, self.latency, self.time_scale = srv, latency, time_scale

    async def __aenter__(self) -> _Stack:
        # Its own thread, as IB Gateway is its own process (its pacing clock must not wait on ours).
        self.gw = SimGatewayThread(port=0, latency_s=self.latency, time_scale=self.time_scale).start()
        s = self.srv.settings
        self.settings = Settings(home=s.home, nats_url=s.nats_url, heartbeat_s=1.0, ib_port=self.gw.port,
                                 ib_client_id=int(time.time()) % 1000 + 100, ib_time_scale=self.time_scale)
        self.actors: list[Actor] = [Orchestrator(self.settings), JobManager(self.settings), IbActor(self.settings)]
        for a in self.actors:
            await a.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for a in self.actors:
            await a.stop()
        self.gw.stop()

    async def wipe_store(self, c: Client) -> None:
        """Forget AAPL 1h, as a machine that never loaded it: the series lives in BARS (the job-manager
        reads it through a cache keyed by its digest, so deleting the object is enough)."""
        await objects.delete(c.js, subjects.BARS_BUCKET, bars_name("AAPL", "1h"))


async def _load(c: Client, symbol: str, tf: str, start: datetime, end: datetime) -> tuple[float, Any]:
    cmd = LoadData(op_id=subjects.new_op_id("data"), symbol=symbol, timeframe=tf, mode="full", start=start, end=end)
    t0 = time.perf_counter()
    await c.submit(cmd)
    view = await c.watch(cmd.op_id, lambda ev, v: None, idle_timeout=1800)
    assert view.status == "completed", view.error
    assert view.result["bars_added"] > 0, "nothing was fetched: the series was stored already"
    return time.perf_counter() - t0, view


async def _fresh_load(srv: BenchServer, per_load: int, *, latency: float, time_scale: float,
                      start: datetime, end: datetime) -> tuple[float, Any, int]:
    """One load on a fresh gateway + ib actor (fresh pacing history: identical-request and 10-minute
    windows from an earlier load must not slow the next one), `per_load` segments in flight."""
    saved = JobManager.segment_concurrency
    JobManager.segment_concurrency = per_load
    try:
        async with _Stack(srv, latency=latency, time_scale=time_scale) as st, Client(st.settings) as c:
            await c.ensure_streams()
            await st.wipe_store(c)
            took, view = await _load(c, "AAPL", "1h", start, end)
            return took, view, st.gw.pacing_violations
    finally:
        JobManager.segment_concurrency = saved


async def concurrency(srv: BenchServer, *, latency: float, time_scale: float = 1.0, rounds: int = 3) -> dict[str, Any]:
    """2 years of 1h bars (25 segments of 30 days): one segment at a time vs concurrent, alternating,
    both through the same paced ib actor, so that the figure is the gain of concurrency alone."""
    start, end = utc(2022, 1, 3), utc(2024, 1, 3)
    seq, conc = [], []
    violations = planned = 0
    for _ in range(rounds):
        for per_load, out in ((1, seq), (JobManager.segment_concurrency, conc)):
            took, view, v = await _fresh_load(srv, per_load, latency=latency, time_scale=time_scale,
                                              start=start, end=end)
            out.append(took)
            violations += v
            planned = view.result["segments_planned"]
    s, k = statistics.median(seq), statistics.median(conc)
    bound = lower_bound_seconds(planned, PacingRules(time_scale=time_scale)) + latency
    return {"pacing_time_scale": time_scale, "segments": planned, "latency_s": latency, "rounds": rounds,
            "one_at_a_time_s": s, "concurrent_s": k, "speedup": s / k,
            "pacing_lower_bound_s": bound, "concurrent_vs_bound": k / bound,
            "serial_latency_only_s": planned * latency, "pacing_violations": violations,
            "target": "speedup >= 3x, zero violations"}


async def pacing_bound(srv: BenchServer, time_scale: float = 0.02) -> dict[str, Any]:
    start, end = utc(2024, 1, 2), utc(2024, 4, 1)  # 1m bars over ~90 days: one request per trading day
    async with _Stack(srv, latency=0.05, time_scale=time_scale) as st, Client(st.settings) as c:
        await c.ensure_streams()
        await st.wipe_store(c)
        took, view = await _load(c, "MSFT", "1m", start, end)
        n = st.gw.historical_requests
        violations = st.gw.pacing_violations
    bound = lower_bound_seconds(n, PacingRules(time_scale=time_scale))
    return {"pacing_time_scale": time_scale, "requests": n, "wall_s": took, "lower_bound_s": bound,
            "ratio_to_bound": took / bound, "real_time_equivalent_min": took / time_scale / 60,
            "pacing_violations": violations, "bars": view.result["bars_added"],
            "target": "<= 1.2x the lower bound, zero violations"}


async def cancel_latency(srv: BenchServer, runs: int = 20) -> dict[str, Any]:
    out: list[float] = []
    async with _Stack(srv, latency=1.0, time_scale=0.05) as st, Client(st.settings) as c:
        await c.ensure_streams()
        for i in range(runs):
            await st.wipe_store(c)
            cmd = LoadData(op_id=subjects.new_op_id("data"), symbol="AAPL", timeframe="1h", mode="full",
                           start=utc(2020, 1, 1), end=utc(2023, 1, 1))
            fetched, cancelled = asyncio.Event(), asyncio.Event()
            t_stored: list[int] = []

            async def cb(msg: Any, fetched: asyncio.Event = fetched, cancelled: asyncio.Event = cancelled,
                         t_stored: list[int] = t_stored) -> None:
                if msg.subject.endswith((".completed", ".failed")):
                    cancelled.set()  # ended without the cancel: reported below, not waited for
                elif msg.subject.endswith(".cancelled"):
                    t_stored.append(time.perf_counter_ns())
                    cancelled.set()
                elif msg.subject.endswith(".progress") and b'"bars_fetched":0' not in msg.data:
                    fetched.set()

            sub = await c.js.subscribe(subjects.ops(cmd.op_id), cb=cb, ordered_consumer=True,
                                       deliver_policy=js_api.DeliverPolicy.ALL)
            await c.submit(cmd)
            await asyncio.wait_for(fetched.wait(), 60)
            await asyncio.sleep(0.1 + 0.02 * (i % 10))  # at varying points of in-flight requests
            t0 = time.perf_counter_ns()
            await c.cancel(cmd.op_id)
            await asyncio.wait_for(cancelled.wait(), 30)
            if not t_stored:
                raise RuntimeError("the load ended before the cancel reached it")
            out.append((t_stored[0] - t0) / 1e6)
            await sub.unsubscribe()
        cancels = st.gw.cancels

    return {"p50_ms": pct(out, 50), "p99_ms": pct(out, 99), "max_ms": max(out), "runs": runs,
            "gateway_cancels_seen": cancels, "target": "p99 <= 50 ms"}


async def main() -> dict[str, Any]:
    assert lookup("AAPL") is not None and max_request(parse_timeframe("1h")).days == 30
    results: dict[str, Any] = {}
    with BenchServer("data") as srv:
        results["load_2y_1h_latency_0.2s"] = await concurrency(srv, latency=0.2, rounds=3)
        results["load_2y_1h_latency_2s"] = await concurrency(srv, latency=2.0, rounds=1)
        results["pacing_bound_1m_90d"] = await pacing_bound(srv)
        results["cancel_latency_load"] = await cancel_latency(srv)
    return results
