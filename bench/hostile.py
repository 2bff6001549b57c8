"""How fast the orchestrator rejects hostile commands (the fuzz test's CMD share: 2,500 of its 10,000
messages): nats-server and one orchestrator in this process, the fuzz test's payloads published on
the cmd.* subjects it picks, timed until the orchestrator's CMD consumer has nothing pending or
unacknowledged; then one normal command, timed until its `created` is stored. Each round runs the
intake as it is (events.codec caches msgspec's type description) and as it was before (the cache
emptied before each explain: the description built per malformed message), alternating.

`python -m bench.hostile` prints medians and ranges (KTRDR_BENCH_HOSTILE_N, _ROUNDS: 2500, 3).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import statistics
import time
from typing import Any

from actors.registry import build
from bench._common import BenchServer
from events import codec, subjects
from events.messages import COMMANDS, CancelOperation, IbBarsRequest, RunDummy
from ktrdr.client import Client

N = int(os.environ.get("KTRDR_BENCH_HOSTILE_N", "2500"))
ROUNDS = int(os.environ.get("KTRDR_BENCH_HOSTILE_ROUNDS", "3"))


def _payloads(rng: random.Random, real_ids: list[str]) -> list[bytes]:
    """The fuzz test's kinds (tests/faults/test_fuzz_and_load.py): bit-flipped valid messages, near
    misses of every command with hostile field values, and garbage."""
    from datetime import UTC, datetime

    valid = [codec.encode(RunDummy(op_id=subjects.new_op_id("dummy"))),
             codec.encode(CancelOperation(op_id=real_ids[0])),
             codec.encode(IbBarsRequest(symbol="AAPL", timeframe="1h", start=datetime(2024, 1, 2, tzinfo=UTC),
                                        end=datetime(2024, 1, 3, tzinfo=UTC)))]
    out: list[bytes] = []
    for _ in range(64):
        base = bytearray(rng.choice(valid))
        for _ in range(rng.randint(1, 8)):
            base[rng.randrange(len(base))] = rng.randrange(256)
        out.append(bytes(base))
    import json

    for op_id in ["", "*", "data-x", *real_ids, "dummy-20261128T174900123456-3f9a1c"]:
        for t in ("RunDummy", "LoadData", "StartTraining", "CancelOperation", "WorkItem", "Nope"):
            out.append(json.dumps({"type": t, "op_id": op_id, "iterations": rng.choice([0, -1, 10**12, "x"]),
                                   "symbol": rng.choice(["../../etc", "A" * 5000, None, 1]),
                                   "strategy_yaml": "a: &a [1]\nb: *a"}).encode())
    return [*out, b"", b"null", b"[]", b"[" * 5000, "ü".encode() * 1000]


async def _round(c: Client, cached: bool, rng: random.Random) -> tuple[float, float]:
    real = [subjects.new_op_id("dummy"), subjects.new_op_id("data")]
    payloads = _payloads(rng, real)
    targets = [subjects.command(k) for k in COMMANDS] + ["cmd.nope.run", "cmd.dummy"]
    real_type_info = codec._type_info

    def uncached(type_: Any) -> Any:
        codec._TYPE_INFO.clear()
        return real_type_info(type_)

    codec._type_info = real_type_info if cached else uncached  # type: ignore[assignment]
    try:
        t0 = time.monotonic()
        futs = []
        for _ in range(N):
            futs.append(c.js.publish(rng.choice(targets), rng.choice(payloads)))
            if len(futs) >= 200:
                await asyncio.gather(*futs)
                futs = []
        await asyncio.gather(*futs)
        while True:
            ci = await c.js.consumer_info(subjects.STREAM_CMD, subjects.ORCHESTRATOR_CONSUMER)
            if ci.num_pending == 0 and ci.num_ack_pending == 0:
                break
            await asyncio.sleep(0.02)  # poll interval of the measurement
        drained = time.monotonic() - t0
        normal = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=1, interval_s=0.0)
        t1 = time.monotonic()
        await c.submit(normal)
        while not await c.exists(normal.op_id):
            await asyncio.sleep(0.005)
        return drained, time.monotonic() - t1
    finally:
        codec._type_info = real_type_info  # type: ignore[assignment]


async def main() -> dict[str, Any]:
    logging.getLogger("actors").setLevel(logging.ERROR)
    rng = random.Random(1234)
    runs: dict[str, list[tuple[float, float]]] = {"cached": [], "uncached (before)": []}
    with BenchServer("hostile") as server:
        orch = build("orchestrator", server.settings)
        await orch.start()
        try:
            async with Client(server.settings) as c:
                for _ in range(ROUNDS):
                    for mode in runs:
                        runs[mode].append(await _round(c, mode == "cached", rng))
        finally:
            await orch.stop()
    out: dict[str, Any] = {"hostile_commands": N, "rounds": ROUNDS}
    for mode, rs in runs.items():
        drains = [d for d, _ in rs]
        out[mode] = {"drain_s_median": round(statistics.median(drains), 2),
                     "drain_s_range": [round(min(drains), 2), round(max(drains), 2)],
                     "per_s_median": round(N / statistics.median(drains)),
                     "normal_created_after_s_median": round(statistics.median(n for _, n in rs), 3)}
    out["speedup"] = round(out["uncached (before)"]["drain_s_median"] / out["cached"]["drain_s_median"], 1)
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(asyncio.run(main()), indent=1))
