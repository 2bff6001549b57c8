"""The cost of Prometheus metrics on progress publishing: an actor's progress events per second
(`emit_progress` of n events, then every one acknowledged by the server, as bench.backbone's
publish_throughput) with its /metrics server on and scraped, against the same with metrics off
(KTRDR_METRICS_PORT=off), in the same run on the same server. Each measurement is a fresh process
(the server, once started, lives as long as its process), off and on alternating so that drift and
the other load on the machine fall on both; n at 1x, 10x and 100x (2,000, 20,000, 200,000 events);
medians of the pairs. While "on" runs, this process scrapes it every SCRAPE_EVERY_S (Prometheus's
default is 15 s: this is 60x harder) and parses each scrape with prometheus-client's parser. Each
"on" process also times what one scrape costs it (the collectors and the text format, median of 200),
a figure the machine's noise does not blur.

Besides throughput, each process reports its own CPU time per event (all its threads, the metrics
server's included), which other load on the machine blurs less than wall-clock throughput.

`python -m bench metrics`
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any

from bench._common import ROOT, BenchServer, child_env, cpu_s, report

SIZES = (2_000, 20_000, 200_000)
PAIRS = 5
SCRAPE_EVERY_S = 0.25


async def _child(n_sizes: list[int]) -> None:
    """One measurement process: print the metrics URL (or "-"), wait for the go line, emit, print JSON."""
    from actors.runtime import Actor
    from events import subjects
    from events.messages import DummyContext, ProgressState
    from ktrdr.config import Settings

    class Emitter(Actor):
        role = "bench"

    actor = Emitter(Settings())
    await actor.start()
    print(actor.metrics_url or "-", flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # the scraper is running
    state = ProgressState(percentage=50.0, message="Working on iteration 5/10", context=DummyContext(iteration=5))
    out: dict[str, float] = {}
    for n in n_sizes:
        op_id = subjects.new_op_id("dummy")
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            actor.emit_progress(op_id, state)
        await actor.flush_progress(acked=True)
        out[str(n)] = n / (time.perf_counter() - t0)
        # this process's CPU (every thread: the metrics server's scrapes too) per event: what other
        # load on the machine blurs far less than wall-clock throughput
        out[f"cpu_us_{n}"] = (time.process_time() - c0) / n * 1e6
    if actor.metrics_url:  # what one scrape costs this process: the collectors and the text format
        from prometheus_client import generate_latest

        from actors import _metrics

        times = []
        for _ in range(200):
            t0 = time.perf_counter()
            generate_latest(_metrics.REGISTRY)
            times.append(time.perf_counter() - t0)
        out["scrape_ms"] = statistics.median(times) * 1e3
    print(json.dumps(out), flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # the parent's scrapes of an idle process are done
    await actor.stop()


class _Scraper:
    """Scrapes a URL every SCRAPE_EVERY_S on a thread of its own, parsing each answer."""

    def __init__(self, url: str) -> None:
        self.url, self.scrapes, self.series = url, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        while not self._stop.is_set():
            with urllib.request.urlopen(self.url, timeout=10) as resp:
                text = resp.read().decode()
            self.series = sum(len(f.samples) for f in text_string_to_metric_families(text))
            self.scrapes += 1
            self._stop.wait(SCRAPE_EVERY_S)

    def __enter__(self) -> _Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


SCRAPES_TIMED = 300


def _cpu_per_scrape(pid: int, url: str) -> tuple[float, float]:
    """CPU seconds the idle process `pid` spends per HTTP scrape (its server's request thread, the
    collectors, the text format), less what it spends idle over the same wall time; and that idle rate."""
    t0, c0 = time.perf_counter(), cpu_s(pid)
    for _ in range(SCRAPES_TIMED):
        with urllib.request.urlopen(url, timeout=10) as resp:
            resp.read()
    wall, used = time.perf_counter() - t0, cpu_s(pid) - c0
    c1 = cpu_s(pid)
    time.sleep(wall)
    idle = cpu_s(pid) - c1
    return max(used - idle, 0.0) / SCRAPES_TIMED, idle / wall


def _measure(srv: BenchServer, on: bool) -> tuple[dict[str, float], int, int]:
    env = child_env(srv.settings, KTRDR_METRICS_PORT="0" if on else "off")
    proc = subprocess.Popen([sys.executable, "-m", "bench.metrics", "--child", *map(str, SIZES)], cwd=ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    url = proc.stdout.readline().strip()
    assert (url != "-") == on, url
    scraper = _Scraper(url) if on else None
    if scraper is not None:
        scraper.__enter__()
    try:
        proc.stdin.write("go\n")
        proc.stdin.flush()
        figures = json.loads(proc.stdout.readline())
    finally:
        if scraper is not None:
            scraper.__exit__()
    if on:
        per_scrape, idle_share = _cpu_per_scrape(proc.pid, url)
        figures["cpu_ms_per_scrape"], figures["idle_cpu_share"] = per_scrape * 1e3, idle_share
    proc.stdin.write("stop\n")
    proc.stdin.flush()
    assert proc.wait(60) == 0
    return figures, scraper.scrapes if scraper else 0, scraper.series if scraper else 0


async def main() -> dict[str, Any]:
    with BenchServer("metrics") as srv:
        off: list[dict[str, float]] = []
        on: list[dict[str, float]] = []
        scrapes, series = 0, 0
        for _ in range(PAIRS):
            off.append((await asyncio.to_thread(_measure, srv, False))[0])
            figures, s, k = await asyncio.to_thread(_measure, srv, True)
            on.append(figures)
            scrapes, series = scrapes + s, max(series, k)
    results: dict[str, Any] = {}
    for n in SIZES:
        o = [r[str(n)] for r in on]
        f = [r[str(n)] for r in off]
        pair_ratios = [a / b for a, b in zip(o, f, strict=True)]
        cpu_on, cpu_off = [r[f"cpu_us_{n}"] for r in on], [r[f"cpu_us_{n}"] for r in off]
        results[f"progress_publish_{n}"] = {
            "metrics_off_events_per_s": statistics.median(f), "metrics_on_events_per_s": statistics.median(o),
            "on_vs_off": statistics.median(o) / statistics.median(f),
            "median_pair_ratio": statistics.median(pair_ratios), "pair_ratios": [round(x, 3) for x in pair_ratios],
            "cpu_us_per_event_off": statistics.median(cpu_off), "cpu_us_per_event_on": statistics.median(cpu_on),
            "cpu_on_vs_off": statistics.median(cpu_on) / statistics.median(cpu_off),
            "cpu_pair_ratios": [round(a / b, 3) for a, b in zip(cpu_on, cpu_off, strict=True)],
            "pairs": PAIRS, "target": "on_vs_off >= 0.99 (under 1% cost)"}
    scrape_ms = statistics.median(r["scrape_ms"] for r in on)
    http_ms = statistics.median(r["cpu_ms_per_scrape"] for r in on)
    results["scrapes"] = {"while_on": scrapes, "every_s": SCRAPE_EVERY_S, "series_per_scrape": series,
                          "render_ms": scrape_ms, "cpu_ms_per_http_scrape": http_ms,
                          "idle_process_cpu_share": statistics.median(r["idle_cpu_share"] for r in on),
                          "share_of_one_core_at_15s": http_ms / 1e3 / 15.0}
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        asyncio.run(_child([int(a) for a in sys.argv[2:]]))
    else:
        report("metrics", asyncio.run(main()))
