"""The actor runtime's public surface: subclass `Actor`, declare request handlers with `@handles`,
implement `handle(op)` for a worker's operations, and run actors with `run_actors`.

The machinery lives in private modules: _actor (wiring and hooks), _publisher (events out),
_presence (heartbeats), _discovery (NATS services), _metrics (Prometheus: `metrics` here, for the
actors' own figures), _work (work items, leases, terminal events), _leases, _pull (the one pull
loop), _requests (typed request/reply).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from actors import _metrics as metrics
from actors._actor import Actor
from actors._requests import Call, handles
from actors._work import OperationContext

__all__ = ["Actor", "Call", "OperationContext", "handles", "metrics", "run_actors"]

log = logging.getLogger(__name__)


async def run_actors(actors: list[Actor], *, stop: asyncio.Event | None = None) -> None:
    """Start the actors and run until SIGTERM/SIGINT (or `stop`), then drain them."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    for a in actors:
        while True:
            try:
                await a.start()
                break
            except Exception as exc:  # server not up yet: keep trying, as a supervisor would
                log.warning("%s could not start (%s); retrying in 1 s", a.role, exc)
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                    return
                except TimeoutError:
                    continue
    await stop.wait()
    await asyncio.gather(*(a.stop() for a in actors), return_exceptions=True)
