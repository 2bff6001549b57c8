"""A seeded fuzzer of hostile messages over every subject the actors listen on, and 60 concurrent mixed
operations. Afterwards: every actor is alive, nothing bogus was created, nothing is stuck or left in
the work streams, nothing ran twice, and the stack serves a normal operation."""

from __future__ import annotations

import asyncio
import json
import random

import msgspec
import pytest

from events import subjects
from events.codec import encode
from events.messages import (
    COMMANDS,
    CancelOperation,
    IbBarsRequest,
    LoadData,
    OperationStarted,
    RunDummy,
    WorkItem,
)
from tests.conftest import utc
from tests.helpers import wait_terminal

pytestmark = pytest.mark.slow
FUZZ_MESSAGES = 10_000


def hostile_payloads(rng: random.Random, real_ids: list[str]) -> list[bytes]:
    """Garbage, near-misses of every message type and type confusion: what an attacker tries."""
    valid = [encode(RunDummy(op_id=subjects.new_op_id("dummy"))), encode(CancelOperation(op_id=real_ids[0])),
             encode(IbBarsRequest(symbol="AAPL", timeframe="1h", start=utc(2024, 1, 2), end=utc(2024, 1, 3)))]
    out: list[bytes] = []
    for _ in range(64):
        base = bytearray(rng.choice(valid))
        for _ in range(rng.randint(1, 8)):  # bit flips and byte soup
            base[rng.randrange(len(base))] = rng.randrange(256)
        out.append(bytes(base))
    evil_ids = ["", ".", "*", ">", "ops.>", "data-x", "nope-20261128T174900123456-3f9a1c", *real_ids,
                "dummy-20261128T174900123456-3f9a1c" * 50]
    for op_id in evil_ids:
        for t in ("RunDummy", "LoadData", "StartTraining", "CancelOperation", "WorkItem", "OperationCompleted",
                  "IbBarsRequest", "Heartbeat", "Nope"):
            out.append(json.dumps({"type": t, "op_id": op_id, "iterations": rng.choice([0, -1, 10**12, "x"]),
                                   "symbol": rng.choice(["../../etc", "A" * 5000, None, 1]),
                                   "strategy_yaml": "a: &a [1]\nb: *a", "command": {"type": "RunDummy"}}).encode())
    out += [b"", b"null", b"[]", b"[" * 5000, b'{"type":' * 2000, "ü".encode() * 1000, b"\xff\xfe\x00"]
    return out


def hostile_subjects(real_ids: list[str]) -> list[str]:
    out = [subjects.command(c) for c in COMMANDS] + ["cmd.nope.run", "cmd.dummy"]
    out += [subjects.work(c.domain) for c in COMMANDS] + [subjects.work(c.domain, "gpu") for c in COMMANDS]
    for op_id in real_ids:
        out += [subjects.cancel(op_id), subjects.ops(op_id, "completed"), subjects.ops(op_id, "progress"),
                subjects.ops(op_id, "started")]
    out += ["ib.bars", "ib.contract", "ib.head", f"$KV.{subjects.ACTORS_BUCKET}.dummy.forged"]
    return out


async def test_ten_thousand_hostile_messages_leave_the_stack_serving(start_actors, client, data_settings,
                                                                       data_stack):
    await start_actors("dummy", settings=data_settings)
    live = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=200, interval_s=0.05)
    await client.submit(live)
    rng = random.Random(1234)
    ids = [live.op_id, subjects.new_op_id("data")]
    payloads, targets = hostile_payloads(rng, ids), hostile_subjects(ids)
    before = {v.op_id for v in await client.list_operations()}
    for i in range(FUZZ_MESSAGES):
        subject, payload = rng.choice(targets), rng.choice(payloads)
        if subject.startswith(("cmd.", "work.")) or subject.endswith((".completed", ".progress", ".started")):
            await client.js.publish(subject, payload)  # stored: the consumers must deal with it
        else:
            await client.nc.publish(subject, payload)
        if i % 500 == 0:
            await client.nc.flush()
    await client.nc.flush()
    # still serving, and the live operation was not hurt
    normal = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=3, interval_s=0.01)
    await client.submit(normal)
    assert (await wait_terminal(client, normal.op_id, timeout=120)).status == "completed"
    # a well-formed cancel for it is among the hostile messages (cli may cancel anything): it ends
    # cancelled or completed, never stuck, failed or run twice
    assert (await wait_terminal(client, live.op_id, timeout=120)).status in ("completed", "cancelled")
    starts = [e for e in await client.events(live.op_id) if isinstance(e, OperationStarted)]
    assert len(starts) == 1
    load = LoadData(op_id=subjects.new_op_id("data"), symbol="AAPL", mode="full", start=utc(2024, 1, 2),
                    end=utc(2024, 2, 1))
    await client.submit(load)
    assert (await wait_terminal(client, load.op_id, timeout=120)).status == "completed"
    roles = {hb.role for hb in await client.live_actors()}
    assert {"orchestrator", "dummy", "job-manager", "ib"} <= roles
    after = await client.list_operations()
    bogus = [v for v in after if v.op_id not in before | {normal.op_id, live.op_id, load.op_id}
             and v.status != "rejected"]
    assert bogus == []  # fuzzed commands with a well-formed id are rejected, never run
    assert (await client.js.stream_info("CMD")).state.messages == 0
    # every work subject a worker here serves is drained (the training and gpu pools have nobody here:
    # their items wait for a worker, which will refuse them in turn)
    left = (await client.js.stream_info("WORK", subjects_filter="work.>")).state.subjects or {}
    assert not {s: n for s, n in left.items() if s in (subjects.work("dummy"), subjects.work("data"))}


async def test_sixty_concurrent_mixed_operations_all_end_once(start_actors, client, data_settings, data_stack):
    await start_actors("dummy", "dummy", settings=data_settings)
    rng = random.Random(7)
    cmds: list[msgspec.Struct] = []
    for _ in range(50):
        cmds.append(RunDummy(op_id=subjects.new_op_id("dummy"), iterations=rng.randint(5, 40),
                             interval_s=rng.choice([0.0, 0.01, 0.05])))
    for i, sym in enumerate(["AAPL", "MSFT", "GOOGL", "AAPL", "MSFT", "EURUSD", "AAPL", "GOOGL", "ZZZZ", "MSFT"]):
        cmds.append(LoadData(op_id=subjects.new_op_id("data"), symbol=sym, timeframe="1h", mode="full",
                             start=utc(2023, 1 + i, 2), end=utc(2023, 2 + i, 1)))
    await asyncio.gather(*(client.submit(c) for c in cmds))  # type: ignore[arg-type]
    cancelled = [c.op_id for c in cmds[:50:5]]  # every fifth dummy: cancelled wherever it is
    await asyncio.gather(*(client.cancel(op) for op in cancelled))
    views = await asyncio.gather(*(wait_terminal(client, c.op_id, timeout=240) for c in cmds))  # type: ignore[attr-defined]
    by_id = {v.op_id: v for v in views}
    assert all(v.terminal for v in views)
    assert by_id[cmds[58].op_id].status == "failed"  # ZZZZ: unknown to IB
    assert all(by_id[c.op_id].status == "completed" for c in cmds[50:58] + cmds[59:])
    assert all(by_id[op].status in ("cancelled", "completed") for op in cancelled)
    for c in cmds:
        starts = [e for e in await client.events(c.op_id) if isinstance(e, OperationStarted)]  # type: ignore[attr-defined]
        assert len(starts) <= 1, (c.op_id, [(type(e).__name__, e.actor, e.seq, e.ts.isoformat()[11:23],
                                             getattr(e, "attempt", None)) for e in await client.events(c.op_id)
                                            if type(e).__name__ != "OperationProgress"])  # nothing ran twice
    for name in ("CMD", "WORK"):
        assert (await client.js.stream_info(name)).state.messages == 0
    async def idle() -> bool:
        return not any(hb.busy for hb in await client.live_actors())

    for _ in range(100):  # nothing stuck: every worker's next heartbeat says idle
        if await idle():
            break
        await asyncio.sleep(0.1)
    assert await idle()
    _ = WorkItem  # (the fuzzer above sends WorkItem shapes too)
