"""Test helpers: waiting on events with timeouts (never fixed sleeps)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable

from nats.aio.client import Client as NATS

from events.messages import AnyEvent
from ktrdr.client import Client
from ktrdr.ops import OperationView


async def wait_for_event(client: Client, op_id: str, predicate: Callable[[AnyEvent, OperationView], bool],
                         timeout: float = 10.0) -> OperationView:
    """Watch op_id (replay + live) until predicate(event, view) holds; TimeoutError otherwise."""
    hit = asyncio.Event()

    def on_event(ev: AnyEvent, view: OperationView) -> None:
        if predicate(ev, view):
            hit.set()

    view = await client.watch(op_id, on_event, stop=hit, idle_timeout=timeout)
    if not hit.is_set():
        raise TimeoutError(f"{op_id}: condition not met within {timeout} s (status {view.status})")
    return view


async def wait_terminal(client: Client, op_id: str, timeout: float = 20.0) -> OperationView:
    return await wait_for_event(client, op_id, lambda ev, v: v.terminal, timeout)


async def eventually(check: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> object:
    """Poll a cheap local condition (not a server) until truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if result:
            return result
        if loop.time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(interval)


async def subscribed(nc: NATS) -> None:
    """Return once the server holds every subscription made so far on `nc`, so that a message
    another connection publishes next reaches it. One `flush()` does not promise that: nats-py
    (2.16) writes flush's PING to the socket at once, while the SUB still waits in the pending
    buffer for the flusher task, so the PONG can come back before the server has read the SUB (a
    request then gets "no responders" or a listener misses the message). By the time that first
    PONG is read the flusher has written the SUB, so a second PING goes out behind it."""
    await nc.flush()
    await nc.flush()


def run_ktrdr(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m ktrdr ARGS` as a user runs it, with this environment; output captured as text."""
    return subprocess.run([sys.executable, "-m", "ktrdr", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
