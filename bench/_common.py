"""Shared benchmark plumbing: a private nats-server with the project's nats.conf, percentiles, output,
and processes measured from outside (/proc: resident memory, its peak, CPU time)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from events import subjects
from events.codec import encode
from ktrdr.config import Settings
from ktrdr.embedded import free_port, start_nats_server
from ktrdr.transport import publish

RESULTS = Path(__file__).parent / "results"


class BenchServer:
    def __init__(self, name: str, **overrides: Any) -> None:
        self.name = name
        self.overrides = overrides

    def __enter__(self) -> BenchServer:
        self.tmp = Path(tempfile.mkdtemp(prefix=f"ktrdr-bench-{self.name}-"))
        port = free_port()
        self.proc = start_nats_server(self.tmp / "store", port, self.tmp / "nats.log")
        self.url = f"nats://127.0.0.1:{port}"
        (self.tmp / "home").mkdir()
        kwargs: dict[str, Any] = {"home": self.tmp / "home", "nats_url": self.url, "heartbeat_s": 0.5}
        kwargs.update(self.overrides)
        self.settings = Settings(**kwargs)
        # The streams first, as the orchestrator or `ktrdr up` provisions them: other actors only
        # check that they exist. In a thread of its own, since benchmarks enter this from a running loop.
        provision = threading.Thread(target=asyncio.run, args=(self._provision(),))
        provision.start()
        provision.join()
        return self

    async def _provision(self) -> None:
        from ktrdr.client import Client

        async with Client(self.settings) as c:
            await c.ensure_streams()

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.tmp, ignore_errors=True)


def time_calls(owner: Any, attr: str, on_end: Callable[[float, float], None], is_async: bool = True) -> None:
    """Wrap `owner.attr` so each call reports its wall-clock start and end to `on_end(t0, t1)`, for
    the step timers (bench/_steps_actor.py in a backtester process, bench/stall.py in its own). What
    runs is still the wrapped code."""
    f: Callable[..., Any] = getattr(owner, attr)
    if is_async:
        @functools.wraps(f)
        async def timed(*a: Any, **k: Any) -> Any:
            t0 = time.time()
            try:
                return await f(*a, **k)
            finally:
                on_end(t0, time.time())
    else:
        @functools.wraps(f)
        def timed(*a: Any, **k: Any) -> Any:
            t0 = time.time()
            try:
                return f(*a, **k)
            finally:
                on_end(t0, time.time())
    setattr(owner, attr, timed)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _fmt(v: Any) -> str:
    if isinstance(v, dict | list):
        return json.dumps(v, default=str)
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def report(name: str, results: dict[str, Any]) -> None:
    print(f"== {name}")
    for section, figures in results.items():
        print(f"  {section}:")
        for k, v in figures.items():
            print(f"    {k:<28} {_fmt(v)}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2, default=str))


# --- processes from outside: memory and CPU from /proc, each actor in a process of its own ---------

ROOT = Path(__file__).resolve().parents[1]


def proc_status_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a live process in MiB: resident now and its peak."""
    rss = hwm = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    return rss, hwm


def reset_peak(pid: int) -> bool:
    """Reset a process's VmHWM to its current RSS (Linux clear_refs 5), so a later VmHWM is the
    peak of what ran since. False where the kernel refuses (then VmHWM includes start-up)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a live process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = [int(k) for k in (task / "children").read_text().split()]
                out.extend(kids)
                todo.extend(kids)
    return out


class PeakSampler:
    """Samples the summed RSS of some processes and their descendants (e.g. a training child that
    exits before its VmHWM can be read) every `interval` seconds on a thread; `.peak_mb` per pid."""

    def __init__(self, pids: dict[str, int], interval: float = 0.05) -> None:
        self.pids, self.interval = pids, interval
        self.peak_mb: dict[str, float] = dict.fromkeys(pids, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                total = 0.0
                for p in [pid, *descendants(pid)]:
                    with contextlib.suppress(OSError):
                        total += proc_status_mb(p)[0]
                self.peak_mb[name] = max(self.peak_mb[name], total)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a process that joins the bench's stack (its settings come from here)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NATS_URL": settings.nats_url or "",
           "KTRDR_HOME": str(settings.home), "KTRDR_HEARTBEAT_S": str(settings.heartbeat_s)}
    env.update(extra)
    return env


# A process started from this (large) one inherits its peak RSS: Linux keeps the high-water mark
# across exec, and subprocess spawns through vfork, so wait4 would report at least the bench's own
# size. A small launcher forks the measured process instead and reports that child's own peak, and
# the time from fork to exit (its own start-up is not counted).
_LAUNCHER = """import os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvpe(sys.argv[2], sys.argv[2:], os.environ)
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{os.waitstatus_to_exitcode(status)} {ru.ru_maxrss} {time.perf_counter() - t0}")
"""


def run_peak(argv: list[str], env: dict[str, str], *, stdout: Any = subprocess.DEVNULL,
             timeout: float = 1800) -> tuple[int, float, float]:
    """Run a process to its end: (exit code, its peak RSS in MiB, wall seconds from its start).
    Exit codes 0 and 2 (the CLI's "nothing stored") are results; anything else raises."""
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "err", "w+b") as err:
        result = Path(tmp) / "result"
        subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, str(result), *argv], env=env, stdout=stdout,
                       stderr=err, cwd=ROOT, timeout=timeout, check=True)
        rc_s, kib, took = result.read_text().split()
        rc = int(rc_s)
        if rc not in (0, 2):
            err.seek(0)
            raise RuntimeError(f"{argv} exited {rc}: {err.read().decode(errors='replace')[-2000:]}")
    return rc, int(kib) / 1024, float(took)


class ActorProcess:
    """`python -m bench._actorproc ROLE[:CONCURRENCY]` in a process of its own, stopped with SIGTERM."""

    def __init__(self, settings: Settings, role: str, *, concurrency: int | None = None, **env: str) -> None:
        self.role = role.split(":")[0]
        spec = f"{role}:{concurrency}" if concurrency else role
        self.log = Path(tempfile.mkstemp(prefix=f"ktrdr-bench-{self.role}-", suffix=".log")[1])
        self.proc = subprocess.Popen([sys.executable, "-m", "bench._actorproc", spec], env=child_env(settings, **env),
                                     stdout=subprocess.DEVNULL, stderr=self.log.open("wb"), cwd=ROOT)
        self.pid = self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.unlink(missing_ok=True)


async def wait_alive(client: Any, roles: list[str], timeout: float = 60.0) -> None:
    """Until every role has a heartbeat in the ACTORS bucket."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            alive = {b.role for b in await client.live_actors()}
            if set(roles) <= alive:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"actors not alive within {timeout} s: {roles}")
        await asyncio.sleep(0.1)


async def submit_all(c: Any, cmds: list[Any]) -> None:
    """Publish commands as Client.submit does, without its per-command stream check."""
    await c.ensure_streams()
    await asyncio.gather(*(publish(c.js, subjects.command(cmd), encode(cmd), subjects.command_msg_id(cmd.op_id))
                           for cmd in cmds))


class Arrivals:
    """When each of some operations stored one of `events` (perf_counter seconds), seen on a core
    subscription opened before anything is submitted: `async with Arrivals(...) as a: submit; await a.wait()`."""

    def __init__(self, c: Any, op_ids: set[str], *events: str) -> None:
        self.c, self.op_ids, self.events = c, op_ids, events or ("completed",)
        self.at: dict[str, float] = {}
        self.done = asyncio.Event()
        self.subs: list[Any] = []

    async def _cb(self, msg: Any) -> None:
        parsed = subjects.parse_ops_subject(msg.subject)
        if parsed and parsed[1] in self.op_ids and parsed[1] not in self.at:
            self.at[parsed[1]] = time.perf_counter()
            if len(self.at) >= len(self.op_ids):
                self.done.set()

    async def __aenter__(self) -> Arrivals:
        self.subs = [await self.c.nc.subscribe(subjects.all_ops(e), cb=self._cb) for e in self.events]
        await self.c.nc.flush()  # the server has the subscriptions before anything is published
        if not self.op_ids:
            self.done.set()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for sub in self.subs:
            await sub.unsubscribe()

    async def wait(self, timeout: float) -> None:
        await asyncio.wait_for(self.done.wait(), timeout)
