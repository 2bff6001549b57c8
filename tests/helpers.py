"""Test helpers: waiting on events with timeouts (never fixed sleeps); discovery answers and metrics
scrapes of a running stack."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from prometheus_client.parser import text_string_to_metric_families

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


async def gather_answers(nc: NATS, subject: str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Publish one discovery request and collect `count` answers on one inbox (a plain request takes
    only the first); fails when fewer arrive within `timeout`."""
    got: list[dict[str, Any]] = []
    enough = asyncio.Event()

    async def cb(msg: Msg) -> None:
        got.append(json.loads(msg.data))
        if len(got) >= count:
            enough.set()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=cb)
    await subscribed(nc)
    await nc.publish(subject, b"", reply=inbox)
    try:
        await asyncio.wait_for(enough.wait(), timeout)
    finally:
        await sub.unsubscribe()
    return got


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        return resp.read().decode()


async def scrape(url: str) -> Samples:
    text = await asyncio.to_thread(_get, url)
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape_until(url: str, done: Callable[[Samples], bool], timeout: float = 30.0) -> Samples:
    """Scrape until `done` holds: the worker counts an operation once its verdict is out and its lease
    released, a moment after a watcher sees the verdict."""
    async with asyncio.timeout(timeout):
        while not done(samples := await scrape(url)):
            await asyncio.sleep(0.05)
    return samples
