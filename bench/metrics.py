"""The cost of Prometheus metrics on progress publishing, at the rates Prometheus scrapes: an actor
emitting progress events for WINDOW_S seconds (in chunks, every one acknowledged by the server at the
end: events per second and the process's CPU per event) and then the latency of one event at a time
(emit -> a core subscriber of its subject has it, LATENCY_EVENTS of them), with its /metrics server
off (KTRDR_METRICS_PORT=off) and on, scraped every 15 s (Prometheus's default `scrape_interval`) and
every 1 s, each scrape parsed with prometheus-client's parser. Each measurement is a fresh process
(bench._harness) publishing into an emptied OPS stream, the three configurations in turn ROUNDS times,
the order rotated each round, so that drift and the other load on the machine fall on all of them;
medians and ranges, and the ratio of each on to the off of its round.
The scraper's first scrape falls at a random point of its interval, as Prometheus spreads its targets.
Each "on" process also times what a scrape costs it: rendering the text (median of 200) and, idle,
the CPU of 300 HTTP scrapes less its idle CPU over the same time.

`python -m bench metrics` (`python -m bench.metrics --window S --rounds N`: shorter, for a try)
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import threading
import time
import urllib.request
from typing import Any

from bench._common import BenchServer, child_env, cpu_s, pct, report
from bench._harness import Child, alternate, compare, emit_for, hear, latency_us, purge_ops, say, start_emitter

INTERVALS_S = (15.0, 1.0)
WINDOW_S = 15.0
ROUNDS = 5
LATENCY_EVENTS = 2_000
SCRAPES_TIMED = 300


async def _child(window_s: float) -> None:
    """One measurement process: print the metrics URL (or "-"), wait for the go line, emit, time the
    latency, print JSON; then wait for the parent's idle scrapes to end."""
    import json

    from events import subjects

    actor = await start_emitter()
    say(actor.metrics_url or "-")
    await hear()  # the scraper is running
    out: dict[str, float] = await emit_for(actor, subjects.new_op_id("dummy"), window_s)
    lat = await latency_us(actor, subjects.new_op_id("dummy"), LATENCY_EVENTS)
    out.update(latency_us=statistics.median(lat), latency_p90_us=pct(lat, 90), latency_p99_us=pct(lat, 99))
    if actor.metrics_url:  # what rendering one scrape costs this process: the collectors and the text format
        from prometheus_client import generate_latest

        from actors import _metrics

        times = []
        for _ in range(200):
            t0 = time.perf_counter()
            generate_latest(_metrics.REGISTRY)
            times.append(time.perf_counter() - t0)
        out["render_ms"] = statistics.median(times) * 1e3
    say(json.dumps(out))
    await hear()
    await actor.stop()


class _Scraper:
    """Scrapes a URL every `every` seconds on a thread of its own (the first at a random point of the
    interval), parsing each answer; `at` holds each scrape's time.time()."""

    def __init__(self, url: str, every: float) -> None:
        self.url, self.every, self.series = url, every, 0
        self.at: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        if self._stop.wait(random.uniform(0, self.every)):
            return
        while True:
            self.at.append(time.time())
            with urllib.request.urlopen(self.url, timeout=10) as resp:
                text = resp.read().decode()
            self.series = sum(len(f.samples) for f in text_string_to_metric_families(text))
            if self._stop.wait(max(self.at[-1] + self.every - time.time(), 0.0)):
                return

    def __enter__(self) -> _Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


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


def _measure(srv: BenchServer, every: float | None, window_s: float) -> dict[str, Any]:
    """One fresh process: metrics off (every=None) or on and scraped every `every` seconds."""
    child = Child("bench.metrics", [str(window_s)],
                  child_env(srv.settings, KTRDR_METRICS_PORT="off" if every is None else "0"))
    url = child.line()
    assert (url != "-") == (every is not None), url
    if every is None:
        child.send("go")
        figures = child.result()
    else:
        with _Scraper(url, every) as scraper:
            child.send("go")
            figures = child.result()
        figures["scrapes_in_window"] = sum(figures["window_start"] <= t <= figures["window_end"] for t in scraper.at)
        figures["series"] = scraper.series
        per_scrape, idle_share = _cpu_per_scrape(child.pid, url)
        figures["cpu_ms_per_scrape"], figures["idle_cpu_share"] = per_scrape * 1e3, idle_share
    child.send("stop")
    child.close()
    return figures


async def main(window_s: float = WINDOW_S, rounds: int = ROUNDS) -> dict[str, Any]:
    with BenchServer("metrics") as srv:
        runs = await alternate({"off": lambda: _measure(srv, None, window_s),
                                **{f"on_{e:g}s": (lambda e=e: _measure(srv, e, window_s)) for e in INTERVALS_S}},
                               rounds, before=lambda: purge_ops(srv.settings))
    off = runs.pop("off")
    results: dict[str, Any] = {}
    all_on = [r for rs in runs.values() for r in rs]
    http_ms = statistics.median(r["cpu_ms_per_scrape"] for r in all_on)
    emitter_core = statistics.median(r["cpu_us"] * r["events_per_s"] / 1e6 for r in off)  # its share of a core
    for name, on in runs.items():
        every = float(name[3:-1])
        results[f"scraped_every_{every:g}s"] = {
            "window_s": window_s, "rounds": rounds,
            "events_per_s": compare(on, off, "events_per_s"),
            "cpu_us_per_event": compare(on, off, "cpu_us"),
            "latency_median_us": compare(on, off, "latency_us"),
            "latency_p90_us": compare(on, off, "latency_p90_us"),
            "latency_p99_us": compare(on, off, "latency_p99_us"),
            "scrapes_in_window": [r["scrapes_in_window"] for r in on],
            # what the scrapes cost by the idle timing: a share of one core, and of what the emitter uses
            "scrape_cpu_share_of_core": http_ms / 1e3 / every,
            "scrape_cpu_vs_emitter": http_ms / 1e3 / every / emitter_core,
            "target": "under 1%: events/s on/off >= 0.99, CPU and latency on/off <= 1.01"}
    results["scrapes"] = {"series_per_scrape": max(r["series"] for r in all_on),
                          "render_ms": statistics.median(r["render_ms"] for r in all_on),
                          "cpu_ms_per_http_scrape": http_ms,
                          "idle_process_cpu_share": statistics.median(r["idle_cpu_share"] for r in all_on),
                          "emitter_cpu_share_of_core": emitter_core}
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        asyncio.run(_child(float(sys.argv[2])))
    else:
        import argparse

        p = argparse.ArgumentParser(prog="python -m bench.metrics")
        p.add_argument("--window", type=float, default=WINDOW_S)
        p.add_argument("--rounds", type=int, default=ROUNDS)
        a = p.parse_args()
        report("metrics", asyncio.run(main(a.window, a.rounds)))
