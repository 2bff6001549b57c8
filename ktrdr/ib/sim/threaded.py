"""The simulated gateway on its own thread and event loop.

A real IB Gateway is another process: when it stamps a request's arrival (which is what its pacing
rules count), it does not wait for the client's event loop. A SimGateway started inside the client's
own loop does: a 30 ms stall of that loop (a cold import, a large frame) delays the gateway's read of
one request and makes it look closer to the next than it was sent, so pacing "violations" appear that
IB would never see. Tests and benchmarks that check pacing run the gateway here instead.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ktrdr.ib.sim.server import SimGateway

T = TypeVar("T")


class SimGatewayThread:
    """`with SimGatewayThread(time_scale=0.05) as gw:`; attributes read through to the SimGateway
    (port, pacing_violations, requests, latency_s ...); `call(fn, *args)` runs fn on its loop."""

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.gw: SimGateway | None = None

    def start(self) -> SimGatewayThread:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self.gw = SimGateway(**self._kwargs)
                loop.run_until_complete(self.gw.start())
            except BaseException as exc:  # reported to start()'s caller
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
                loop.run_until_complete(self.gw.stop())
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="sim-gateway", daemon=True)
        self._thread.start()
        if not ready.wait(15):
            raise RuntimeError("the simulated gateway did not start within 15 s")
        if failure:
            raise failure[0]
        return self

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(*args) on the gateway's loop and return its result."""
        assert self._loop is not None

        async def run() -> T:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def disconnect_all(self) -> int:
        assert self.gw is not None
        return self.call(self.gw.disconnect_all)

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(15)

    def __getattr__(self, name: str) -> Any:
        gw = self.__dict__.get("gw")
        if gw is None:
            raise AttributeError(name)
        return getattr(gw, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("latency_s", "pacing") and self.__dict__.get("gw") is not None:
            setattr(self.gw, name, value)  # plain attributes the gateway reads per request
        else:
            super().__setattr__(name, value)

    def __enter__(self) -> SimGatewayThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
