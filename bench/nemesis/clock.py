"""A worker with a skewed clock (libfaketime): leases must not depend on clocks agreeing.

One round on one nats-server: the orchestrator and a normal dummy worker run with the real clock, a
second dummy worker runs under libfaketime (`FAKETIME="+1h"`, `"-1h"`, or a clock running at twice
the real rate, `"+0 x2"`; libfaketime skews the monotonic clock too unless told not to). The skewed
worker takes a long operation alone; the normal worker then starts and both run side by side (the
skewed holder must not be taken over while it runs, whatever its clock says); then the skewed holder
is killed with SIGKILL and the normal worker must take the operation over (then it is cancelled, to
keep the round short). Checked from the stored events: the skewed worker completes a short operation
first; one attempt while the holder lived; the takeover only after the kill (no event of the normal
worker before it); exactly two starts and one terminal event; then a fresh operation completes.
The row says how long from the kill until the takeover's start.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from events import subjects
from events.bounds import MAX_DUMMY_ITERATIONS
from events.messages import OperationStarted, RunDummy
from ktrdr.client import Client
from ktrdr.config import Settings
from ktrdr.embedded import free_port, start_nats_server

FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
SKEWS = ("+1h", "-1h", "+0 x2")
# The harness's own pace: fast heartbeats so a takeover is seconds; the operation outlasts many of them.
HEARTBEAT_S = 0.2
WORKER_TIMEOUT_S = 1.5
STEPS, STEP_S = MAX_DUMMY_ITERATIONS, 0.05
# Steps the skewed holder runs next to the normal worker before it is killed (over 2 worker timeouts).
SIDE_BY_SIDE_STEPS = 70
WAIT_S = 90.0


def unavailable() -> str | None:
    if not FAKETIME_LIB.exists():
        return f"libfaketime is not installed ({FAKETIME_LIB}; apt-get install faketime, .ci/run does)"
    return None


@dataclass
class _Round:
    tmp: Path
    settings: Settings
    procs: list[subprocess.Popen[bytes]]

    def spawn(self, role: str, faketime: str | None = None) -> subprocess.Popen[bytes]:
        env = {**os.environ, "NATS_URL": str(self.settings.nats_url), "KTRDR_HOME": str(self.settings.home),
               "KTRDR_HEARTBEAT_S": str(HEARTBEAT_S), "KTRDR_WORKER_TIMEOUT": str(WORKER_TIMEOUT_S),
               "KTRDR_DRAIN_TIMEOUT": "0.5", "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                           os.environ.get("PYTHONPATH", "")]))}
        if faketime is not None:
            env.update(LD_PRELOAD=str(FAKETIME_LIB), FAKETIME=faketime, FAKETIME_NO_CACHE="1")
        log = open(self.tmp / f"{role}-{len(self.procs)}.log", "wb")
        with log:
            proc = subprocess.Popen([sys.executable, "-m", "actors", role], env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc


async def _until(check: Any, what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"clock skew: {what} not within {timeout} s")
        await asyncio.sleep(0.05)


def _of(worker: str | None, proc: subprocess.Popen[bytes]) -> bool:
    return worker is not None and f"-{proc.pid}-" in worker


async def _skewed_worker_completes(c: Client, skewed: subprocess.Popen[bytes]) -> list[str]:
    """A short operation, the skewed worker alone: it runs and completes it."""
    op = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=3, interval_s=0.01)
    await c.submit(op)
    view = await _until(lambda: _view_if(c, op.op_id, lambda v: v.terminal), "the skewed worker's first operation")
    if view.status != "completed" or not _of(view.worker, skewed):
        return [f"the skewed worker's operation ended {view.status} on {view.worker}"]
    return []


async def _skewed_holder_then_kill(c: Client, r: _Round, faketime: str) -> tuple[list[str], float]:
    """The scenario; the problems found (empty: none) and seconds from the kill to the takeover."""
    skewed = r.spawn("dummy", faketime)
    problems = await _skewed_worker_completes(c, skewed)
    # Long enough never to end by itself: once taken over it is cancelled, which keeps the round short.
    op = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=STEPS, interval_s=STEP_S)
    await c.submit(op)
    view = await _until(lambda: _view_if(c, op.op_id, lambda v: v.current_step >= 3 or v.terminal),
                        "the skewed worker running the operation")
    if not _of(view.worker, skewed):
        problems.append(f"the operation went to {view.worker}, not the skewed worker")
    normal = r.spawn("dummy")
    await _until(lambda: _alive(c, normal.pid), "the normal worker announcing itself")
    step = (await c.view(op.op_id)).current_step
    view = await _until(lambda: _view_if(c, op.op_id, lambda v: v.current_step >= step + SIDE_BY_SIDE_STEPS
                                         or v.terminal), "the skewed holder running next to the normal one")
    if view.attempts != 1 or not _of(view.worker, skewed):
        problems.append(f"taken over while the skewed holder ran: attempt {view.attempts} by {view.worker}")
    before = len(await c.events(op.op_id))
    skewed.kill()
    killed = time.monotonic()
    view = await _until(lambda: _view_if(c, op.op_id, lambda v: (v.attempts >= 2 and v.current_step >= 1)
                                         or v.terminal), "the takeover after the kill")
    takeover_s = time.monotonic() - killed
    await c.cancel(op.op_id, reason="taken over: the round is done")
    view = await _until(lambda: _view_if(c, op.op_id, lambda v: v.terminal), "the operation's end")
    events = await c.events(op.op_id)
    starts = [e for e in events if isinstance(e, OperationStarted)]
    if any(_of(getattr(e, "worker", None) or getattr(e, "actor", None), normal) for e in events[:before]):
        problems.append("the normal worker acted before the holder was killed")
    if view.status != "cancelled" or [s.attempt for s in starts] != [1, 2] or not _of(starts[-1].worker, normal):
        problems.append(f"after the kill: {view.status}, starts {[(s.attempt, s.worker) for s in starts]}")
    if sum(1 for e in events if type(e).__name__ in ("OperationCompleted", "OperationFailed",
                                                      "OperationCancelled")) != 1:
        problems.append("not exactly one terminal event")
    return problems, takeover_s


async def _view_if(c: Client, op_id: str, cond: Any) -> Any:
    v = await c.view(op_id)
    return v if cond(v) else None


async def _alive(c: Client, pid: int) -> bool:
    return any(hb.pid == pid for hb in await c.live_actors())


async def clock_skew(faketime: str) -> dict[str, Any]:
    """One round with the skewed worker's FAKETIME; its nemesis row."""
    tmp = Path(tempfile.mkdtemp(prefix="ktrdr-clock-"))
    port = free_port()
    server = start_nats_server(tmp / "store", port, tmp / "nats.log")
    (tmp / "home").mkdir()
    settings = Settings(home=tmp / "home", nats_url=f"nats://127.0.0.1:{port}", heartbeat_s=HEARTBEAT_S,
                        worker_timeout_s=WORKER_TIMEOUT_S)
    r = _Round(tmp, settings, [])
    try:
        async with Client(settings) as c:
            await c.ensure_streams()
            r.spawn("orchestrator")
            await c.wait_ready(["orchestrator"], WAIT_S)
            problems, takeover_s = await _skewed_holder_then_kill(c, r, faketime)
            probe = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=3, interval_s=0.01)
            healed = time.monotonic()
            await c.submit(probe)
            done = await _until(lambda: _view_if(c, probe.op_id, lambda v: v.terminal), "a fresh operation")
            recover_s = time.monotonic() - healed
            if done.status != "completed":
                problems.append(f"a fresh operation ended {done.status}")
    finally:
        for p in reversed(r.procs):
            if p.poll() is None:
                p.kill()
            p.wait(10)
        server.kill()
        server.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"fault": f"clock skew of one worker ({faketime})", "sync_interval": "-", "operations": 2,
            "acked": 2, "lost": 0 if done.status == "completed" else 1, "duplicated": 0,
            "recover_s": round(recover_s, 3),
            "notes": "; ".join([f"takeover {takeover_s:.1f} s after kill -9 of the skewed holder", *problems]),
            "ok": not problems}
