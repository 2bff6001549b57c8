"""CancellationToken: the per-operation flag that the cancel broadcast sets.

Domain code (a training loop in a worker thread, a segment loop in a coroutine) checks it cheaply:
`token.is_cancelled` is a plain attribute read. Waiting is interruptible from any thread:
`await token.sleep(s)` on any event loop and `token.sleep_sync(s)` on a plain thread both return
the moment the token trips. The reason is typed (`reason_code`: user, deadline, shutdown, parent,
lease_lost) and a human text (`reason`), so a worker can tell "hand it back" from "stop for good".
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable

from events.messages import CancelReason
from ktrdr.errors import OperationCancelledError

# Reasons after which the work is handed back for another attempt, not ended.
HAND_BACK: frozenset[str] = frozenset({"shutdown", "lease_lost"})


class CancellationToken:
    __slots__ = ("_callbacks", "_lock", "_sync", "_waiters", "is_cancelled", "reason", "reason_code",
                 "requested_by")

    def __init__(self) -> None:
        self.is_cancelled = False  # plain bool: the hot-path check in a training batch loop
        self.reason = ""
        self.reason_code: CancelReason = "user"
        self.requested_by = ""
        self._lock = threading.Lock()
        self._sync = threading.Event()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._callbacks: list[Callable[[], None]] = []

    @property
    def hand_back(self) -> bool:
        """True when the work stops only because this worker cannot go on (shutdown, lease lost)."""
        return self.is_cancelled and self.reason_code in HAND_BACK

    def cancel(self, reason: str = "cancel requested", *, code: CancelReason = "user",
               requested_by: str = "") -> bool:
        """Trip the token. Returns False if it was already tripped. Thread-safe."""
        with self._lock:
            if self.is_cancelled:
                return False
            self.reason, self.reason_code, self.requested_by = reason, code, requested_by
            self.is_cancelled = True
            callbacks, self._callbacks = self._callbacks, []
            waiters, self._waiters = self._waiters, []
        self._sync.set()
        for loop, fut in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits there any more
                loop.call_soon_threadsafe(_resolve, fut)
        for cb in callbacks:
            cb()
        return True

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run `callback` (on the cancelling thread) when cancelled, at once if already. Returns a
        function that unregisters it."""
        with self._lock:
            if not self.is_cancelled:
                self._callbacks.append(callback)

                def remove() -> None:
                    with self._lock:
                        if callback in self._callbacks:
                            self._callbacks.remove(callback)

                return remove
        callback()
        return lambda: None

    async def wait(self) -> None:
        """Wait until cancelled, on whichever event loop calls it."""
        await self.sleep(None)

    async def sleep(self, seconds: float | None, *, until: asyncio.Event | None = None) -> bool:
        """Sleep `seconds` (forever with None), or until `until` is set; return True at once when the
        token trips (before or during the sleep), False otherwise."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self.is_cancelled:
                return True
            self._waiters.append((loop, fut))
        waiters: list[asyncio.Future[object]] = [fut]  # type: ignore[list-item]
        if until is not None:
            waiters.append(asyncio.ensure_future(until.wait()))
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters[1:]:
                w.cancel()
            with self._lock:
                with contextlib.suppress(ValueError):
                    self._waiters.remove((loop, fut))
        return self.is_cancelled

    def sleep_sync(self, seconds: float | None) -> bool:
        """The same for a plain thread: True when the token tripped."""
        return self._sync.wait(seconds)

    def raise_if_cancelled(self, where: str = "") -> None:
        if self.is_cancelled:
            raise OperationCancelledError(where, self.reason, self.reason_code)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
