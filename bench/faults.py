"""Faults, measured: each row kills or floods something real and reports how the stack came back.

| fault | what is measured |
|---|---|
| kill -9 of a worker process mid-operation | time until a replica started the next attempt; runs per op |
| SIGTERM of a worker process (drain) | time until the work was handed back and taken by a replica |
| kill -9 of nats-server mid-operation | time from the restart to the next progress event; runs per op |
| 10,000 hostile messages | time to consume them; bogus operations created; peak memory of the actors |
| kill -9 of the OPS leader of a 3-node cluster | time to elect; time until progress resumes; events lost |
| kill -9 of the embedded `actors` process | time until the supervisor restarted it; until a dummy completed |

Actors run as their own processes (`python -m actors`), as the embedded stack runs them. Each row
prints medians over its rounds; `bench/results/faults.json` keeps the numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import BenchServer
from events import subjects
from events.codec import DecodeError, decode_event_on, encode
from events.messages import OperationProgress, OperationStarted, RunDummy
from ktrdr.client import Client
from ktrdr.config import Settings
from ktrdr.embedded import free_port, start_nats_server
from ktrdr.transport import read_events

FAST = {"KTRDR_HEARTBEAT_S": "0.2", "KTRDR_WORKER_TIMEOUT": "1.5", "KTRDR_ORPHAN_TIMEOUT": "30",
        "KTRDR_DRAIN_TIMEOUT": "0.5"}


def actors(settings: Settings, *roles: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    e = {**os.environ, "NATS_URL": settings.nats_url or "", "KTRDR_HOME": str(settings.home), **FAST, **(env or {})}
    log = open(settings.home / f"actors-{os.urandom(3).hex()}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "actors", *roles], env=e, stdout=log, stderr=log)


def peak_rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def wait_event(c: Client, op_id: str, pred: Any, timeout: float = 60.0) -> float:
    """Monotonic time at which an event satisfying pred(event, view) was seen (watch: stored events)."""
    hit = asyncio.Event()
    at: list[float] = []

    def on(ev: Any, view: Any) -> None:
        if not at and pred(ev, view):
            at.append(time.monotonic())
            hit.set()

    await asyncio.wait_for(c.watch(op_id, on, stop=hit), timeout)
    return at[0]


async def runs_of(c: Client, op_id: str) -> int:
    return sum(isinstance(e, OperationStarted) for e in await c.events(op_id))


async def _bogus(c: Client, before: set[str], submitted: set[str]) -> int:
    """Operations stored now that were there neither before nor submitted since."""
    return len({v.op_id for v in await c.list_operations()} - before - submitted)


async def _started_dummy(c: Client, iterations: int = 400, interval: float = 0.05) -> str:
    cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=iterations, interval_s=interval)
    await c.submit(cmd)
    try:
        await wait_event(c, cmd.op_id, lambda ev, v: v.current_step >= 3)
    except TimeoutError:  # say where it stuck: never created, queued, or running without progress
        view = await c.view(cmd.op_id)
        work: Any = None
        try:  # as the orchestrator: a cli may not read consumer info
            async with Client(dataclasses.replace(c.settings, role="orchestrator"), url=c.url) as o:
                ci = await o.js.consumer_info(subjects.STREAM_WORK, subjects.work_consumer("dummy"))
                work = (f"consumer pending {ci.num_pending} ack_pending {ci.num_ack_pending} waiting "
                        f"{ci.num_waiting} delivered {ci.delivered} ack_floor {ci.ack_floor} cluster {ci.cluster}; "
                        f"stream {(await o.js.stream_info(subjects.STREAM_WORK)).state}")
        except Exception as exc:
            work = f"{type(exc).__name__}: {exc}"
        raise RuntimeError(f"{cmd.op_id} did not reach step 3 in 60 s: status {view.status}, step "
                           f"{view.current_step}, worker {view.worker}, live "
                           f"{[(h.actor, h.busy) for h in await c.live_actors()]}; work: {work}") from None
    return cmd.op_id


async def worker_kill(srv: BenchServer, rounds: int = 5, sig: int = signal.SIGKILL) -> dict[str, Any]:
    s = srv.settings
    orch = actors(s, "orchestrator")
    pool = [actors(s, "dummy")]
    recover, runs = [], []
    try:
        async with Client(s) as c:
            await c.wait_ready(["orchestrator", "dummy"], 60)
            before = {v.op_id for v in await c.list_operations()}
            submitted: set[str] = set()
            for _ in range(rounds):
                op = await _started_dummy(c)
                submitted.add(op)
                victim = pool[-1]
                pool.append(actors(s, "dummy"))  # the replica that will take it over
                await c.wait_ready(["dummy"], 60)
                t0 = time.monotonic()
                victim.send_signal(sig)
                t1 = await wait_event(c, op, lambda ev, v: isinstance(ev, OperationStarted) and ev.attempt >= 2)
                recover.append(t1 - t0)
                await wait_event(c, op, lambda ev, v: v.terminal, timeout=120)
                runs.append(await runs_of(c, op))
                await asyncio.to_thread(victim.wait, 60)
            bogus = await _bogus(c, before, submitted)
    finally:
        for p in [orch, *pool]:
            p.kill()
    return {"rounds": rounds, "recover_p50_s": statistics.median(recover), "recover_max_s": max(recover),
            "runs_per_op_max": max(runs), "bogus_ops": bogus}


async def server_kill(srv: BenchServer, rounds: int = 3) -> dict[str, Any]:
    s = srv.settings
    procs = [actors(s, "orchestrator", "dummy", "dummy")]
    recover, runs, affected, missing = [], [], 0, 0
    try:
        async with Client(s, reconnect_attempts=-1) as c:
            await c.wait_ready(["orchestrator", "dummy"], 60)
            before = {v.op_id for v in await c.list_operations()}
            submitted: set[str] = set()
            for _ in range(rounds):
                ops = [await _started_dummy(c, iterations=200) for _ in range(3)]
                submitted.update(ops)
                affected += len(ops)
                srv.proc.kill()
                srv.proc.wait()
                srv.proc = start_nats_server(srv.tmp / "store", srv.port, srv.tmp / "nats.log")
                restarted = time.time()
                for op in ops:
                    await wait_event(c, op, lambda ev, v: v.terminal, timeout=180)
                    runs.append(await runs_of(c, op))
                # when the workers' progress resumed (by the events' own timestamps, not the watcher's)
                resumed = [min(e.ts.timestamp() for e in await c.events(op) if isinstance(e, OperationProgress)
                               and e.ts.timestamp() > restarted) for op in ops]
                recover.append(max(resumed) - restarted)
                for op in ops:  # every iteration's progress event stored, across the outage
                    steps = {e.progress.current_step for e in await c.events(op) if isinstance(e, OperationProgress)}
                    missing += 200 - len(steps)
            bogus = await _bogus(c, before, submitted)
    finally:
        for p in procs:
            p.kill()
    return {"rounds": rounds, "ops_affected": affected, "progress_resumed_p50_s": statistics.median(recover),
            "progress_resumed_max_s": max(recover), "runs_per_op_max": max(runs),
            "progress_events_lost": missing, "bogus_ops": bogus}


async def fuzz(srv: BenchServer, n: int = 10_000) -> dict[str, Any]:
    s = srv.settings
    proc = actors(s, "orchestrator", "dummy")
    rng = random.Random(99)
    try:
        async with Client(s) as c:
            await c.wait_ready(["orchestrator", "dummy"], 60)
            before = {v.op_id for v in await c.list_operations()}
            base = [encode(RunDummy(op_id=subjects.new_op_id("dummy"), iterations=0)), b"{}", b"[" * 4000,
                    b"\xff\xfe", b'{"type":"RunDummy","op_id":"nope-20261128T174900123456-3f9a1c"}']
            targets = [subjects.command(RunDummy), subjects.work("dummy"), "cmd.x.y",
                       subjects.cancel(subjects.new_op_id("dummy")), "ib.bars"]
            t0 = time.monotonic()
            for _i in range(n):
                payload = bytearray(rng.choice(base))
                if payload and rng.random() < 0.5:
                    payload[rng.randrange(len(payload))] = rng.randrange(256)
                subject = rng.choice(targets)
                if subject.startswith(("cmd.", "work.")):
                    await c.js.publish(subject, bytes(payload))
                else:
                    await c.nc.publish(subject, bytes(payload))
            marker = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=1, interval_s=0.0)
            await c.submit(marker)  # commands are consumed in order: when it ends, all were seen
            await wait_event(c, marker.op_id, lambda ev, v: v.terminal, timeout=300)
            took = time.monotonic() - t0
            after = await c.list_operations()
            bogus = [v for v in after if v.op_id not in before and v.op_id != marker.op_id
                     and v.status not in ("rejected",)]
            cmd_left = (await c.js.stream_info("CMD")).state.messages
    finally:
        rss = peak_rss_mb(proc.pid)
        proc.kill()
    return {"messages": n, "consumed_s": took, "bogus_ops": len(bogus), "cmd_left": cmd_left,
            "actors_peak_rss_mb": rss}


async def cluster_leader_kill(rounds: int = 3) -> dict[str, Any]:
    """`ktrdr up --cluster 3` in a private home; a dummy runs; kill -9 the OPS leader each round."""
    import json

    tmp = Path(tempfile.mkdtemp(prefix="ktrdr-bench-cluster-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "KTRDR_", "IB_PORT"))}
    env.update({"KTRDR_HOME": str(tmp / "home"), "KTRDR_NATS_PORT": str(free_port()),
                "KTRDR_WEB_PORT": str(free_port()), "KTRDR_LOCAL_ROLES": "orchestrator,dummy"})

    def ktrdr(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ktrdr", *args], env=env, capture_output=True, text=True,
                              timeout=180)

    elect, resume, lost, affected = [], [], 0, 0
    try:
        assert ktrdr("up", "--cluster", "3").returncode == 0
        home = tmp / "home"
        url = (home / "run" / "nats.url").read_text().strip()
        settings = Settings(home=home, nats_url=url)
        seen: set[tuple[str, str, int]] = set()
        async with Client(settings, reconnect_attempts=-1) as c:
            async def live(msg: Any) -> None:
                with contextlib.suppress(DecodeError):
                    ev = decode_event_on(msg.subject, msg.data)
                    seen.add((msg.subject, ev.actor, getattr(ev, "seq", 0)))

            await c.nc.subscribe(subjects.OPS_ALL, cb=live)
            for _ in range(rounds):
                op = await _started_dummy(c, iterations=600, interval=0.05)
                affected += 1
                status = json.loads(ktrdr("status", "--json").stdout)
                leader = next(sv for sv in status["servers"] if "OPS" in sv.get("leads", []))
                t0, killed_at = time.monotonic(), time.time()
                os.kill(int(leader["pid"]), signal.SIGKILL)
                while True:  # a new leader answers stream info
                    with contextlib.suppress(Exception):
                        info = await asyncio.wait_for(c.js.stream_info("OPS"), 2)
                        if info.cluster is not None and info.cluster.leader not in (None, leader["name"]):
                            break
                    await asyncio.sleep(0.05)
                elect.append(time.monotonic() - t0)
                await wait_event(c, op, lambda ev, v: v.terminal, timeout=180)
                # the pause the worker's progress saw: the longest gap between stored progress events
                stamps = sorted(e.ts.timestamp() for e in await c.events(op) if isinstance(e, OperationProgress))
                resume.append(max(b - a for a, b in itertools.pairwise(stamps) if b > killed_at))
                assert ktrdr("up").returncode == 0  # the node comes back before the next round
            stored: set[tuple[str, str, int]] = set()

            def on_stored(subject: str, data: bytes) -> None:
                with contextlib.suppress(DecodeError):
                    ev = decode_event_on(subject, data)
                    stored.add((subject, ev.actor, getattr(ev, "seq", 0)))

            await read_events(c.js, [subjects.OPS_ALL], on_stored)
            lost = len(seen - stored)
    finally:
        ktrdr("down")
        shutil.rmtree(tmp, ignore_errors=True)
    return {"rounds": rounds, "ops_affected": affected, "elect_p50_s": statistics.median(elect),
            "elect_max_s": max(elect), "progress_pause_p50_s": statistics.median(resume),
            "events_seen_live_but_not_stored": lost}


async def actors_restart(rounds: int = 5) -> dict[str, Any]:
    """The embedded stack (`ktrdr up`, private home) with nobody but its supervisor to mend it: kill -9
    of the `actors` process; measured from the kill to the supervisor's new process, and to the
    completion of a dummy a user runs once it is back (the stack serving again). The first round
    also submits a dummy at the very moment of the kill, to show what a command sent into the gap
    waits for. Each round on a fresh stack (`down`, `up`), so every restart is a first one (backoff
    0.5 s; a process dying again within a minute waits longer)."""
    tmp = Path(tempfile.mkdtemp(prefix="ktrdr-bench-supervise-"))
    home = tmp / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "KTRDR_", "IB_PORT"))}
    env.update({"KTRDR_HOME": str(home), "KTRDR_NATS_PORT": str(free_port()),
                "KTRDR_WEB_PORT": str(free_port()), "KTRDR_LOCAL_ROLES": "orchestrator,dummy"})

    def ktrdr(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ktrdr", *args], env=env, capture_output=True, text=True,
                              timeout=180)

    restarted, served, in_gap = [], [], float("nan")
    try:
        for i in range(rounds):
            assert ktrdr("up").returncode == 0
            settings = Settings(home=home, nats_url=(home / "run" / "nats.url").read_text().strip())
            async with Client(settings, reconnect_attempts=-1) as c:
                t0, gap_op = await _kill_actors(settings, c, submit=i == 0)
                restarted.append(time.monotonic() - t0)
                cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=1, interval_s=0.01)
                await c.submit(cmd)
                served.append(await wait_event(c, cmd.op_id, lambda ev, v: v.terminal, timeout=90) - t0)
                if gap_op is not None:
                    in_gap = await wait_event(c, gap_op, lambda ev, v: v.terminal, timeout=90) - t0
            assert ktrdr("down").returncode == 0
    finally:
        ktrdr("down")
        shutil.rmtree(tmp, ignore_errors=True)
    return {"rounds": rounds, "restarted_p50_s": statistics.median(restarted),
            "serving_again_p50_s": statistics.median(served), "serving_again_max_s": max(served),
            "dummy_sent_at_the_kill_s": in_gap}


async def _kill_actors(settings: Settings, c: Client, *, submit: bool) -> tuple[float, str | None]:
    """kill -9 of the stack's `actors`; returns when the supervisor's new one runs: (the kill's
    monotonic time, the id of a dummy submitted right after the kill when `submit`)."""
    from ktrdr import embedded

    pid = embedded.read_pid(settings, "actors")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    op_id = None
    if submit:
        op_id = subjects.new_op_id("dummy")
        await c.submit(RunDummy(op_id=op_id, iterations=1, interval_s=0.01))
    while not (embedded.is_alive(settings, "actors") and embedded.read_pid(settings, "actors") != pid):
        assert time.monotonic() - t0 < 60, "the supervisor did not restart actors within 60 s"
        await asyncio.sleep(0.01)  # a local file read: the resolution of the figure
    return t0, op_id


async def main() -> dict[str, Any]:
    out: dict[str, Any] = {}
    with BenchServer("faults-kill") as srv:
        out["kill -9 worker"] = await worker_kill(srv)
    with BenchServer("faults-term") as srv:
        out["SIGTERM worker (drain)"] = await worker_kill(srv, rounds=3, sig=signal.SIGTERM)
    with BenchServer("faults-server") as srv:
        srv.port = int((srv.url or "").rsplit(":", 1)[1])
        out["kill -9 nats-server"] = await server_kill(srv)
    with BenchServer("faults-fuzz") as srv:
        out["10,000 hostile messages"] = await fuzz(srv)
    out["kill -9 OPS leader (3-node cluster)"] = await cluster_leader_kill()
    out["kill -9 embedded actors (supervisor)"] = await actors_restart()
    return out
