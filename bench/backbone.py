"""Backbone benchmarks, each against raw nats-py measured in the same run on the same server:
progress latency, cancel latency, replay throughput, publish throughput, CLI cold start."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

from nats.js import api as js_api

from actors.runtime import Actor
from bench._common import BenchServer, pct, report
from events import proof, subjects
from events.bounds import SIGN_INTERVAL_S
from events.codec import encode
from events.messages import DummyContext, OperationProgress, OperationStarted, ProgressState, RunDummy
from ktrdr.client import Client
from ktrdr.ops import OperationView
from ktrdr.ops.reader import fold_message, settle
from ktrdr.transport import read_events


class _Emitter(Actor):
    role = "bench"


async def progress_latency(srv: BenchServer, n: int = 2000) -> dict[str, Any]:
    settings = srv.settings
    actor = _Emitter(settings)
    await actor.start()
    async with Client(settings) as c:
        await c.ensure_streams()
        # ours: actor.emit_progress -> CLI-side ordered consumer + decode + fold
        op_id = subjects.new_op_id("dummy")
        lat: list[float] = []
        got = asyncio.Event()
        view = OperationView(op_id=op_id)
        # the grant, as the orchestrator publishes it: the emitter's key, so its progress counts
        grant = OperationStarted(op_id=op_id, actor="orchestrator-bench", worker=actor.id, key=actor.public_key)
        await c.js.publish(subjects.event(grant), encode(grant))
        seen: set[str] = set()

        async def cb(msg: Any) -> None:
            # the verifying path every reader takes: an event counts once the holder's signature reaches it
            for ev in fold_message(view, msg.subject, msg.data, msg.headers.get(proof.HEADER) if msg.headers else None):
                if isinstance(ev, OperationProgress) and ev.progress.message not in seen:  # (a seal repeats one)
                    seen.add(ev.progress.message)
                    lat.append(time.perf_counter_ns() - int(ev.progress.message))
            if len(lat) >= n:
                got.set()

        sub = await c.js.subscribe(subjects.ops(op_id), cb=cb, ordered_consumer=True,
                                   deliver_policy=js_api.DeliverPolicy.ALL)
        for i in range(n):
            actor.emit_progress(op_id, ProgressState(percentage=i / n * 100, message=str(time.perf_counter_ns()),
                                                     context=DummyContext(iteration=i, iterations=n)))
            await asyncio.sleep(0.0005)  # a paced stream, as progress is
        await asyncio.wait_for(got.wait(), 30)
        await sub.unsubscribe()
        # raw: js.publish_async of bytes -> ordered consumer, no decode
        raw: list[float] = []
        raw_done = asyncio.Event()
        subj = f"ops.dummy.{subjects.new_op_id('dummy')}.progress"

        async def raw_cb(msg: Any) -> None:
            raw.append(time.perf_counter_ns() - int(msg.data))
            if len(raw) >= n:
                raw_done.set()

        sub = await c.js.subscribe(subj, cb=raw_cb, ordered_consumer=True, deliver_policy=js_api.DeliverPolicy.ALL)
        for _ in range(n):
            await c.js.publish_async(subj, str(time.perf_counter_ns()).encode())
            await asyncio.sleep(0.0005)
        await asyncio.wait_for(raw_done.wait(), 30)
        await sub.unsubscribe()
    await actor.stop()
    ours, base = [x / 1e6 for x in lat], [x / 1e6 for x in raw]
    return {"p50_ms": pct(ours, 50), "p99_ms": pct(ours, 99), "raw_p50_ms": pct(base, 50),
            "raw_p99_ms": pct(base, 99), "n": n, "target": "p99 <= 2 ms"}


async def cancel_latency(srv: BenchServer, runs: int = 30) -> dict[str, Any]:
    from actors.dummy import DummyWorker
    from actors.orchestrator import Orchestrator

    actors = [Orchestrator(srv.settings), DummyWorker(srv.settings)]
    for a in actors:
        await a.start()
    out: list[float] = []
    async with Client(srv.settings) as c:
        await c.ensure_streams()
        for _ in range(runs):
            cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=10, interval_s=30.0)
            started, cancelled = asyncio.Event(), asyncio.Event()
            t_cancel: list[int] = []

            async def cb(msg: Any, started: asyncio.Event = started, cancelled: asyncio.Event = cancelled,
                         t_cancel: list[int] = t_cancel) -> None:
                if msg.subject.endswith(".started"):
                    started.set()
                elif msg.subject.endswith(".cancelled"):
                    t_cancel.append(time.perf_counter_ns())
                    cancelled.set()

            # Stored events only: an ordered consumer sees `cancelled` once it is in the stream.
            sub = await c.js.subscribe(subjects.ops(cmd.op_id), cb=cb, ordered_consumer=True,
                                       deliver_policy=js_api.DeliverPolicy.ALL)
            await c.submit(cmd)
            await asyncio.wait_for(started.wait(), 10)
            await asyncio.sleep(0.02)  # in the middle of a 30 s iteration
            t0 = time.perf_counter_ns()
            await c.cancel(cmd.op_id)
            await asyncio.wait_for(cancelled.wait(), 10)
            out.append((t_cancel[0] - t0) / 1e6)
            await sub.unsubscribe()
    for a in actors:
        await a.stop()
    return {"p50_ms": pct(out, 50), "p99_ms": pct(out, 99), "max_ms": max(out), "runs": runs,
            "target": "p99 <= 20 ms"}


async def publish_operation(c: Client, n: int, *, actor: str = "dummy-bench") -> str:
    """A stored operation of n progress events after its `started`, as an actor stores them (the
    same JSON, a Nats-Msg-Id header on each). Returns its op_id."""
    op_id = subjects.new_op_id("dummy")
    subj = subjects.ops(op_id, "progress")
    before = (await c.js.stream_info(subjects.STREAM_OPS)).state.messages
    key = proof.new_key()
    start = OperationStarted(op_id=op_id, actor="orchestrator-bench", worker=actor, attempt=1,
                             key=proof.public_key(key))
    await c.js.publish_async(subjects.ops(op_id, "started"), encode(start), headers={"Nats-Msg-Id": f"{op_id}.s"})
    t0 = start.ts
    # the holder proof as the publisher makes it: chained, signed at most every SIGN_INTERVAL_S (on the
    # publishing clock; the last one always)
    signer = proof.Signer(key, SIGN_INTERVAL_S)
    for i in range(n):
        ev = OperationProgress(op_id=op_id, actor=actor, seq=i + 1, ts=t0 + timedelta(microseconds=50 * i),
                               progress=ProgressState(
                                   percentage=i / n * 100, message=f"Working on iteration {i}/{n}", current_step=i,
                                   total_steps=n, context=DummyContext(iteration=i, iterations=n)))
        payload = encode(ev)
        value, _due = signer.proof(op_id, subj, payload, time.monotonic(), force=i == n - 1)
        await c.js.publish_async(subj, payload, headers={"Nats-Msg-Id": f"{op_id}.{i + 1}", proof.HEADER: value})
    await c.js.publish_async_completed()
    stored = (await c.js.stream_info(subjects.STREAM_OPS)).state.messages - before
    assert stored == n + 1, f"{stored} of {n + 1} events stored"  # ids are per op: none deduplicated
    return op_id


async def _raw_ordered(c: Client, op_id: str, n: int) -> float:
    """The baseline: nats-py's ordered consumer from the first event, counting only (no decode)."""
    count = 0
    done = asyncio.Event()

    async def cb(_msg: Any) -> None:
        nonlocal count
        count += 1
        if count >= n:
            done.set()

    t0 = time.perf_counter()
    sub = await c.js.subscribe(subjects.ops(op_id), cb=cb, ordered_consumer=True,
                               deliver_policy=js_api.DeliverPolicy.ALL)
    await asyncio.wait_for(done.wait(), 600)
    took = time.perf_counter() - t0
    await sub.unsubscribe()
    return n / took


async def _decode_fold(c: Client, op_id: str, n: int) -> float:
    """Ours: the read `ops replay` does (ktrdr.transport.read_events), every event decoded and folded."""
    view = OperationView(op_id=op_id)

    def on_msg(s: str, data: bytes, proof_value: bytes | None) -> None:
        fold_message(view, s, data, proof_value, lazy=True)  # decode, the holder proof, fold

    t0 = time.perf_counter()
    await read_events(c.js, [subjects.ops(op_id)], on_msg, proofs=True)
    settle(view)
    took = time.perf_counter() - t0
    assert view.events == n and view.status == "running", view
    return n / took


async def _ops_replay(c: Client, op_id: str, n: int) -> float:
    """Ours, whole: the CLI's replay() (decode, fold, throttled lines) printing to /dev/null."""
    from ktrdr.cli._live import replay

    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        t0 = time.perf_counter()
        view = await replay(c, op_id, speed=None, json_out=False)
        took = time.perf_counter() - t0
    assert view.events == n, view.events
    return n / took


async def _watch(c: Client, op_id: str, n: int) -> float:
    """`ops watch`'s path (Client.watch: nats-py ordered consumer, decode, fold), for reference."""
    stop = asyncio.Event()

    def on_event(_ev: Any, view: OperationView) -> None:
        if view.events >= n:
            stop.set()

    t0 = time.perf_counter()
    view = await c.watch(op_id, on_event, stop=stop, idle_timeout=30)
    if view.events < n:
        raise TimeoutError(f"watch saw {view.events} of {n} events")
    return n / (time.perf_counter() - t0)


async def replay_throughput(srv: BenchServer, n: int = 100_000, rounds: int = 5) -> dict[str, Any]:
    """Replay of an n-event operation: ours (decode + fold; and the whole `ops replay`) against the
    raw ordered consumer, in alternating order each round; medians and the per-round ratios. A
    reader that stalls (nothing new for 30 s) is recorded as a stalled round, with the client's
    errors (nats-py reports a slow consumer's dropped messages only there)."""
    errors: list[str] = []
    stalled: list[str] = []
    async with Client(srv.settings) as c:
        await c.ensure_streams()

        async def on_error(exc: Exception) -> None:
            errors.append(f"{type(exc).__name__}: {exc}"[:200])

        assert c.nc is not None
        c.nc._error_cb = on_error  # the Client swallows them; a benchmark wants to see them
        op_id = await publish_operation(c, n)
        total = n + 1
        runs: dict[str, list[float]] = {"raw": [], "decode_fold": [], "ops_replay": [], "watch": []}
        order = [("raw", _raw_ordered), ("decode_fold", _decode_fold), ("ops_replay", _ops_replay)]

        async def one(name: str, fn: Any) -> None:
            task = asyncio.ensure_future(fn(c, op_id, total))
            try:  # generous: 30 s plus 20 s per 100k events
                runs[name].append(await asyncio.wait_for(task, 30 + total / 5000))
            except TimeoutError:
                stalled.append(name)

        for r in range(rounds):
            for name, fn in order if r % 2 == 0 else order[::-1]:
                await one(name, fn)
        await one("watch", _watch)
    med = {k: statistics.median(v) if v else float("nan") for k, v in runs.items()}
    pairs = list(zip(runs["decode_fold"], runs["raw"], strict=False))
    per_round = [o / b for o, b in pairs]
    whole = [o / b for o, b in zip(runs["ops_replay"], runs["raw"], strict=False)]
    ratio = med["decode_fold"] / med["raw"]
    return {"events": total, "rounds": rounds,
            "decode_fold_events_per_s": med["decode_fold"], "ops_replay_events_per_s": med["ops_replay"],
            "raw_ordered_consumer_per_s": med["raw"], "watch_events_per_s": med["watch"],
            "ratio_decode_fold_vs_raw": ratio, "ratio_ops_replay_vs_raw": med["ops_replay"] / med["raw"],
            "per_round_ratios": [round(x, 3) for x in per_round],
            "per_round_ratios_ops_replay": [round(x, 3) for x in whole],
            "min_round_ratio": min(per_round, default=float("nan")), "stalled_rounds": stalled,
            "client_errors": errors[:5], "target": "ratio >= 0.9 (median of rounds)", "met": ratio >= 0.9}


async def publish_throughput(srv: BenchServer, n: int = 20_000, rounds: int = 3) -> dict[str, Any]:
    actor = _Emitter(srv.settings)
    await actor.start()
    assert actor.js is not None
    ours, raw, raw_hdr = [], [], []
    state = ProgressState(percentage=50.0, message="Working on iteration 5/10", context=DummyContext(iteration=5))
    payload = encode(OperationProgress(op_id="dummy-x", progress=state))
    for _ in range(rounds):
        op_id = subjects.new_op_id("dummy")
        t0 = time.perf_counter()
        for _ in range(n):
            actor.emit_progress(op_id, state)
        await actor.flush_progress(acked=True)  # every event stored (PubAck back), as for raw below
        ours.append(n / (time.perf_counter() - t0))
        subj = f"ops.dummy.{subjects.new_op_id('dummy')}.progress"
        t0 = time.perf_counter()
        for _ in range(n):
            await actor.js.publish_async(subj, payload)
        await actor.js.publish_async_completed()
        raw.append(n / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for i in range(n):  # the same bytes with the same Nats-Msg-Id header every event carries
            await actor.js.publish_async(subj, payload, headers={"Nats-Msg-Id": f"{subj}.{i}"})
        await actor.js.publish_async_completed()
        raw_hdr.append(n / (time.perf_counter() - t0))
    await actor.stop()
    o, r, rh = statistics.median(ours), statistics.median(raw), statistics.median(raw_hdr)
    return {"actor_events_per_s": o, "raw_publish_async_per_s": r, "raw_with_msg_id_per_s": rh,
            "ratio_vs_raw": o / r, "ratio_vs_raw_with_msg_id": o / rh, "target": "ratio >= 0.8"}


def fold_micro(n: int = 100_000, rounds: int = 3) -> dict[str, Any]:
    """The fold alone, no server: n stored progress events (as a holder publishes them, its proof in
    the header) decoded and folded, against the same with the holder proof checked (lazy, as a
    replay does: the chain hashed per event, one signature verified per batch). Best of rounds."""
    from events.codec import decode_event_on
    from ktrdr.ops import fold

    op_id = subjects.new_op_id("dummy")
    subj = subjects.ops(op_id, "progress")
    key = proof.new_key()
    start = OperationStarted(op_id=op_id, actor="orchestrator-bench", worker="w", key=proof.public_key(key))
    signer = proof.Signer(key, SIGN_INTERVAL_S)
    msgs: list[tuple[bytes, bytes]] = []
    for i in range(n):
        payload = encode(OperationProgress(op_id=op_id, actor="w", seq=i + 1, progress=ProgressState(
            percentage=i / n * 100, message=f"Working on iteration {i}/{n}", current_step=i, total_steps=n,
            context=DummyContext(iteration=i, iterations=n))))
        value, _due = signer.proof(op_id, subj, payload, i * 50e-6, force=i == n - 1)  # 20k events/s published
        msgs.append((payload, value.encode()))
    plain, proven = 0.0, 0.0
    for _ in range(rounds):
        view = OperationView(op_id=op_id)
        fold(view, start)
        t0 = time.perf_counter()
        for payload, _value in msgs:
            fold(view, decode_event_on(subj, payload))
        plain = max(plain, n / (time.perf_counter() - t0))
        view = OperationView(op_id=op_id)
        fold_message(view, subjects.event(start), encode(start), None, lazy=True)
        t0 = time.perf_counter()
        for payload, header in msgs:
            fold_message(view, subj, payload, header, lazy=True)
        settle(view)
        proven = max(proven, n / (time.perf_counter() - t0))
        assert view.events == n + 1, view.events
    return {"decode_fold_per_s": plain, "decode_proof_fold_per_s": proven, "ratio": proven / plain, "events": n}


# `ops list` through the typer app (what every verb but the lean one parses with), and the floor of
# any Python NATS reader: asyncio, nats-py with JetStream and msgspec imported, nothing run (as
# before issue 23 item 5, and with the CLI's start-up skips, ktrdr.cli._startup, as `ktrdr` has them).
TYPER_OPS_LIST = ("import sys; sys.modules['aiohttp'] = None; from ktrdr.cli import build_app\n"
                  "try:\n    build_app()(['ops', 'list'], standalone_mode=False)\nexcept SystemExit:\n    pass\n")
IMPORT_FLOOR = "import sys; sys.modules['aiohttp'] = None; import asyncio, nats, nats.js, msgspec"
IMPORT_FLOOR_CLI = "from ktrdr.cli import _startup; _startup.install(); import asyncio, nats, nats.js, msgspec"
IMPORT_ASYNCIO = "import asyncio"


def cold_start(srv: BenchServer, runs: int = 15) -> dict[str, Any]:
    """Each command's median wall time over `runs` rounds, and its ratio to a bare interpreter
    (`python -c pass`) measured in the same rounds; a round runs every command once, in turn, so
    that a slower minute of this shared machine weighs on all of them alike. The last command,
    bench._cold_child, is one `ops list` timed in phases inside the process (the median of each).

    The children write and read .pyc files as an installed ktrdr does (PYTHONDONTWRITEBYTECODE is
    dropped: the first round, which is not counted, writes them); with the sources compiled on
    every start, our own modules' share is about twice as large."""
    env = {**os.environ, "NATS_URL": srv.url, "KTRDR_HOME": str(srv.settings.home)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    exe = os.path.join(os.path.dirname(sys.executable), "ktrdr")
    argv0 = [exe] if os.path.exists(exe) else [sys.executable, "-m", "ktrdr"]
    commands = {"python_startup_s": [sys.executable, "-c", "pass"], "help_s": [*argv0, "--help"],
                "ops_list_s": [*argv0, "ops", "list"], "ops_list_typer_s": [sys.executable, "-c", TYPER_OPS_LIST],
                "import_floor_s": [sys.executable, "-c", IMPORT_FLOOR],
                "import_floor_cli_s": [sys.executable, "-c", IMPORT_FLOOR_CLI],
                "import_asyncio_s": [sys.executable, "-c", IMPORT_ASYNCIO],
                "phases": [sys.executable, "-m", "bench._cold_child"]}
    samples: dict[str, list[float]] = {k: [] for k in commands}
    phases: list[dict[str, float]] = []
    for i in range(runs + 1):  # the first round warms the page cache, writes the .pyc files and is dropped
        for key, argv in commands.items():
            t0 = time.perf_counter()
            done = subprocess.run(argv, env=env, capture_output=True, check=True, text=True)
            samples[key].append(time.perf_counter() - t0)
            if key == "phases" and i:
                phases.append(json.loads(done.stdout))
    out: dict[str, Any] = {k: statistics.median(v[1:]) for k, v in samples.items() if k != "phases"}
    base = out["python_startup_s"]
    for k in list(out):
        if k != "python_startup_s":
            ratios = sorted(x / b for x, b in zip(samples[k][1:], samples["python_startup_s"][1:], strict=True))
            out[f"{k[:-2]}_x"] = round(out[k] / base, 1)
            out[f"{k[:-2]}_x_range"] = f"{ratios[0]:.1f}-{ratios[-1]:.1f} (per round)"
    bare = samples["python_startup_s"][1:]
    out["python_startup_range_s"] = f"{min(bare):.3f}-{max(bare):.3f}"
    for name in phases[0]:
        if name != "rows":
            out[f"phase_{name}_ms"] = round(1000 * statistics.median(p[name] for p in phases), 1)
    out["target"] = "--help <= 4x, ops list <= 6x a bare interpreter"
    return out


async def main() -> dict[str, Any]:
    results: dict[str, Any] = {}
    results["fold_micro"] = fold_micro()
    with BenchServer("backbone") as srv:
        results["progress_latency"] = await progress_latency(srv)
        results["cancel_latency_dummy"] = await cancel_latency(srv)
        results["replay_100k"] = await replay_throughput(srv, 100_000, rounds=5)
        results["replay_1m"] = await replay_throughput(srv, 1_000_000, rounds=3)
        results["publish_throughput"] = await publish_throughput(srv)
        results["cold_start"] = cold_start(srv)
    return results


def main_cold() -> dict[str, Any]:
    with BenchServer("backbone") as srv:
        return {"cold_start": cold_start(srv)}


if __name__ == "__main__":  # `python -m bench.backbone cold`: the cold start alone
    if sys.argv[1:] == ["cold"]:
        report("backbone_cold", main_cold())
    else:
        report("backbone", asyncio.run(main()))
