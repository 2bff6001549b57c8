"""The cost of OpenTelemetry traces on progress publishing: an actor's progress events per second
(`emit_progress` of n events inside an operation's span, then every one acknowledged by the server, as
bench.metrics measures) and the latency of one progress event (emit -> a subscriber of its subject has
it, one at a time, 2,000 of them), with traces on (OTEL_TRACES_EXPORTER=ktrdr: spans written as JSON
lines; progress events carry no traceparent, `traceparent_on_progress` says so) against off (the
variable unset: nothing of OpenTelemetry imported), in the same run on the same server. Each
measurement is a fresh process, off and on alternating so that drift and the other load on the
machine fall on both; n at 1x, 10x and 100x (2,000, 20,000, 200,000 events); medians of the pairs.
Each "on" process also times what one span costs (start, end, its line written: the segment's, the
IB request's, the epoch's), median of 2,000. Each "on" process's span files are counted afterwards
(`spans_written`), so "on" is known to have exported.

A/A control (KTRDR_BENCH_TRACING_CONTROL=1): a third configuration, off again, measured in the same
rotation, compared with off as on is (`control_*`): how far two identical configurations differ on this
machine in this run, the spread a cost of "on" has to stand out of. KTRDR_BENCH_TRACING_SIZES
(default 2000,20000,200000) and KTRDR_BENCH_TRACING_PAIRS (default 5) shorten a run.

`python -m bench tracing`
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from typing import Any

from bench._common import BenchServer, child_env, report
from bench._harness import Child, alternate, emit_n, latency_us, purge_ops, say, start_emitter

SIZES = tuple(int(x) for x in os.environ.get("KTRDR_BENCH_TRACING_SIZES", "2000,20000,200000").split(","))
PAIRS = int(os.environ.get("KTRDR_BENCH_TRACING_PAIRS", "5"))
CONTROL = os.environ.get("KTRDR_BENCH_TRACING_CONTROL", "") == "1"
LATENCY_EVENTS = 2_000
SPANS_TIMED = 2_000


async def _child(n_sizes: list[int]) -> None:
    """One measurement process: emit, time the latency, print JSON."""
    from events import subjects
    from events.messages import OperationProgress
    from ktrdr import tracing

    actor = await start_emitter()
    out: dict[str, float] = {"on": float(tracing.enabled()),
                             "otel_imported": float(any(m.startswith("opentelemetry") for m in sys.modules))}
    for n in n_sizes:
        op_id = subjects.new_op_id("dummy")
        with tracing.span("run dummy", op_id):  # a worker's run span around its progress
            out[str(n)], out[f"cpu_us_{n}"] = await emit_n(actor, op_id, n)
    op_id = subjects.new_op_id("dummy")
    with tracing.span("run dummy", op_id):
        lat = await latency_us(actor, op_id, LATENCY_EVENTS)
    headers_seen = 0
    if tracing.enabled():  # whether the last progress went out with the span's traceparent
        last = await actor.js.get_last_msg("OPS", subjects.ops(op_id, OperationProgress.name)) if actor.js else None
        headers_seen = int(bool(last and last.headers and tracing.HEADER in last.headers))
        times = []
        for i in range(SPANS_TIMED):
            t0 = time.perf_counter()
            with tracing.span("segment", op_id, attrs={"ktrdr.segment": i}):
                pass
            times.append(time.perf_counter() - t0)
        out["span_us"] = statistics.median(times) * 1e6
    out["latency_us"] = statistics.median(lat)
    out["latency_p90_us"] = sorted(lat)[int(len(lat) * 0.9)]
    out["traceparent_on_progress"] = float(headers_seen)
    say(json.dumps(out))
    await actor.stop()


def _measure(srv: BenchServer, on: bool) -> dict[str, Any]:
    env = child_env(srv.settings)
    for k in [k for k in env if k.startswith("OTEL_")]:
        del env[k]
    traces = srv.tmp / "traces" / str(time.monotonic_ns())
    if on:
        env.update(OTEL_TRACES_EXPORTER="ktrdr", KTRDR_TRACES_DIR=str(traces))
    child = Child("bench.tracing", [str(n) for n in SIZES], env)
    figures = child.result()
    child.close(600)
    assert bool(figures["on"]) == on and bool(figures["otel_imported"]) == on, figures
    written = sum(len(p.read_text().splitlines()) for p in traces.glob("*.jsonl")) if traces.is_dir() else 0
    assert (written >= SPANS_TIMED) == on, f"on={on}: {written} spans written"
    figures["spans_written"] = written
    return figures


def _ratios(a: list[dict[str, Any]], b: list[dict[str, Any]], key: str) -> dict[str, Any]:
    xs, ys = [r[key] for r in a], [r[key] for r in b]
    pairs = [x / y for x, y in zip(xs, ys, strict=True)]
    return {"ratio_of_medians": round(statistics.median(xs) / statistics.median(ys), 4),
            "pair_ratios": [round(p, 3) for p in pairs]}


async def main() -> dict[str, Any]:
    with BenchServer("tracing") as srv:
        measures = {"off": lambda: _measure(srv, False), "on": lambda: _measure(srv, True)}
        if CONTROL:
            measures["off_again"] = lambda: _measure(srv, False)
        runs = await alternate(measures, PAIRS, before=lambda: purge_ops(srv.settings))
    off, on = runs["off"], runs["on"]
    results: dict[str, Any] = {}
    for n in SIZES:
        o, f = [r[str(n)] for r in on], [r[str(n)] for r in off]
        pair_ratios = [a / b for a, b in zip(o, f, strict=True)]
        cpu_on, cpu_off = [r[f"cpu_us_{n}"] for r in on], [r[f"cpu_us_{n}"] for r in off]
        results[f"progress_publish_{n}"] = {
            "tracing_off_events_per_s": statistics.median(f), "tracing_on_events_per_s": statistics.median(o),
            "on_vs_off": statistics.median(o) / statistics.median(f),
            "median_pair_ratio": statistics.median(pair_ratios), "pair_ratios": [round(x, 3) for x in pair_ratios],
            "cpu_us_per_event_off": statistics.median(cpu_off), "cpu_us_per_event_on": statistics.median(cpu_on),
            "cpu_on_vs_off": statistics.median(cpu_on) / statistics.median(cpu_off),
            "pairs": PAIRS, "target": "on_vs_off >= 0.95 (under 5% cost)"}
    lat_on, lat_off = [r["latency_us"] for r in on], [r["latency_us"] for r in off]
    results["progress_latency"] = {
        "events_per_measurement": LATENCY_EVENTS, "off_median_us": statistics.median(lat_off),
        "on_median_us": statistics.median(lat_on), "on_vs_off": statistics.median(lat_on) / statistics.median(lat_off),
        "off_p90_us": statistics.median(r["latency_p90_us"] for r in off),
        "on_p90_us": statistics.median(r["latency_p90_us"] for r in on),
        "pair_ratios": [round(a / b, 3) for a, b in zip(lat_on, lat_off, strict=True)]}
    results["spans"] = {"us_per_span_with_json_lines_export": statistics.median(r["span_us"] for r in on),
                        "timed_per_process": SPANS_TIMED, "cpus": os.cpu_count(),
                        # progress events go out without the span's traceparent (0: none of the "on" runs' did)
                        "traceparent_on_progress": max(r["traceparent_on_progress"] for r in on),
                        "spans_written_per_on_process": statistics.median(r["spans_written"] for r in on)}
    if CONTROL:  # off again against off: the noise floor of each figure in this run
        again = runs["off_again"]
        for n in SIZES:
            results[f"control_{n}"] = {"events_per_s_again_vs_off": _ratios(again, off, str(n)),
                                       "cpu_us_again_vs_off": _ratios(again, off, f"cpu_us_{n}"),
                                       "on_vs_off_for_comparison": _ratios(on, off, str(n)),
                                       "cpu_on_vs_off_for_comparison": _ratios(on, off, f"cpu_us_{n}")}
        results["control_latency"] = {"again_vs_off": _ratios(again, off, "latency_us"),
                                      "on_vs_off_for_comparison": _ratios(on, off, "latency_us")}
    results["machine"] = {"load_avg_1m_at_end": round(os.getloadavg()[0], 2)}
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        asyncio.run(_child([int(a) for a in sys.argv[2:]]))
    else:
        report("tracing", asyncio.run(main()))
