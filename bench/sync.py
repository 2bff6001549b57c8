"""What `sync_interval: always` costs against the default (2 min), on this machine's real disk.

For one node (an R1 stream) and a 3-node cluster on loopback (R3), the two settings alternate round by
round in one run (so drifting load on the machine hits both alike): JetStream publishes of OPS-sized
messages (300 bytes, as a progress event) with a message id each, measured as the publish-to-ack
latency of one publish at a time (p50, p99) and as the throughput of WINDOW publishes in flight (a
worker publishing progress without waiting on each ack). Medians over the rounds and the ratio
always/default are printed and written to bench/results/sync.json, with the filesystem the stores
were on. Run: `python -m bench sync` or `python -m bench.sync`.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import pct, report
from bench.nemesis import power
from ktrdr.embedded import start_nats_server

ROUNDS = 3
LATENCY_N = 500
THROUGHPUT_N = 3000
WINDOW = 64


def _filesystem(path: Path) -> str:
    res = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "--target", str(path)],
                         capture_output=True, text=True, check=False)
    return res.stdout.strip() or "unknown"


async def _measure(js: Any) -> dict[str, float]:
    payload = b"x" * power.PAYLOAD_BYTES
    lat: list[float] = []
    for i in range(LATENCY_N):
        t0 = time.perf_counter()
        await js.publish(power.SUBJECT, payload, headers={"Nats-Msg-Id": f"l{i}"})
        lat.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    for start in range(0, THROUGHPUT_N, WINDOW):
        await asyncio.gather(*(js.publish(power.SUBJECT, payload, headers={"Nats-Msg-Id": f"t{i}"})
                               for i in range(start, min(start + WINDOW, THROUGHPUT_N))))
    return {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "msgs_per_s": THROUGHPUT_N / (time.perf_counter() - t0)}


async def one_round(nodes_n: int, setting: str, base: Path) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix=f"sync-{nodes_n}-{setting}-", dir=base))
    nodes = power.nodes_for(tmp, nodes_n, power.SYNC_SETTINGS[setting])
    try:
        for node in nodes:
            node.proc = start_nats_server(node.mnt / "jetstream", node.port, node.log, conf=node.conf)
        nc = await power.connect(nodes)
        try:
            js = nc.jetstream()
            await power.create_stream(js, nodes_n)
            return await _measure(js)
        finally:
            await nc.close()
    finally:
        power.teardown(nodes)
        shutil.rmtree(tmp, ignore_errors=True)


async def run() -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="ktrdr-sync-"))
    try:
        fs = _filesystem(base)
        out: dict[str, Any] = {"setup": {"filesystem": fs, "payload_bytes": power.PAYLOAD_BYTES,
                                         "window": WINDOW, "rounds": ROUNDS}}
        for nodes_n in (1, 3):
            got: dict[str, list[dict[str, float]]] = {"always": [], "default": []}
            for r in range(ROUNDS):  # alternate, the first setting swapping every round
                for setting in (("always", "default") if r % 2 == 0 else ("default", "always")):
                    got[setting].append(await one_round(nodes_n, setting, base))
            section: dict[str, float] = {}
            for setting, rows in got.items():
                for key in ("p50_ms", "p99_ms", "msgs_per_s"):
                    section[f"{setting}_{key}"] = statistics.median(row[key] for row in rows)
            for key in ("p50_ms", "p99_ms", "msgs_per_s"):
                section[f"ratio_{key}"] = section[f"always_{key}"] / section[f"default_{key}"]
            out[f"{nodes_n} node{'s' if nodes_n > 1 else ''} (R{nodes_n})"] = section
        return out
    finally:
        shutil.rmtree(base, ignore_errors=True)


PUBLISHER_SETTINGS = {"always": "always", "1s": '"1s"', "default": '"2m"'}


async def publisher(rounds: int = ROUNDS) -> dict[str, Any]:
    """Our own progress publisher (bench/backbone.py: latency publish -> live subscriber, pipelined
    throughput) on one server per setting, the settings alternating round by round; medians, and
    each setting's ratio to the default."""
    import statistics
    import tempfile

    from bench import _common, backbone
    from ktrdr import embedded

    base = Path(embedded.nats_conf_path()).read_text()
    tmp = Path(tempfile.mkdtemp(prefix="ktrdr-sync-"))
    confs = {}
    for name, value in PUBLISHER_SETTINGS.items():
        confs[name] = tmp / f"nats-{name}.conf"
        confs[name].write_text(base.replace('sync_interval: "2m"', f"sync_interval: {value}"))
    start = _common.start_nats_server
    got: dict[str, dict[str, list[float]]] = {k: {"p50_ms": [], "p99_ms": [], "events_per_s": []} for k in confs}
    try:
        for _ in range(rounds):
            for name, conf in confs.items():
                _common.start_nats_server = lambda store, port, log, conf=conf: start(store, port, log, conf=conf)
                with _common.BenchServer(f"sync-{name}") as srv:
                    lat = await backbone.progress_latency(srv)
                    got[name]["p50_ms"].append(lat["p50_ms"])
                    got[name]["p99_ms"].append(lat["p99_ms"])
                    got[name]["events_per_s"].append((await backbone.publish_throughput(srv))["actor_events_per_s"])
    finally:
        _common.start_nats_server = start
    out: dict[str, Any] = {k: {m: statistics.median(v) for m, v in d.items()} for k, d in got.items()}
    for k in ("always", "1s"):
        out[f"{k}_over_default"] = {m: out[k][m] / out["default"][m] for m in out[k]}
    return out


async def main() -> dict[str, Any]:
    """The entry `python -m bench sync` calls (bench/__main__.py reports what it returns)."""
    return {"raw": await run(), "publisher": await publisher()}


if __name__ == "__main__":
    report("sync", asyncio.run(main()))
