"""CancellationToken: the per-operation flag that the cancel broadcast sets.

Domain code (a training loop in a worker thread, a segment loop in a coroutine) checks it cheaply:
`token.is_cancelled` is a plain attribute read. Async code can `await token.wait()`; callbacks let an
adapter cancel in-flight I/O (e.g. IB requests) the moment the cancel arrives.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from ktrdr.errors import OperationCancelledError


class CancellationToken:
    __slots__ = ("_callbacks", "_event", "_lock", "is_cancelled", "reason", "requested_by")

    def __init__(self) -> None:
        self.is_cancelled = False  # plain bool: the hot-path check in a training batch loop
        self.reason = ""
        self.requested_by = ""
        self._lock = threading.Lock()
        self._event: asyncio.Event | None = None
        self._callbacks: list[Callable[[], None]] = []

    def cancel(self, reason: str = "cancel requested", requested_by: str = "") -> bool:
        """Trip the token. Returns False if it was already tripped. Thread-safe."""
        with self._lock:
            if self.is_cancelled:
                return False
            self.reason = reason
            self.requested_by = requested_by
            self.is_cancelled = True
            callbacks, self._callbacks = self._callbacks, []
            event = self._event
        if event is not None:
            event.set()
        for cb in callbacks:
            cb()
        return True

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run `callback` when cancelled (at once if already). Returns a function that unregisters it."""
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
        """Wait until cancelled (must be called from the event loop that will be woken)."""
        if self.is_cancelled:
            return
        if self._event is None:
            self._event = asyncio.Event()
            if self.is_cancelled:
                self._event.set()
        await self._event.wait()

    def raise_if_cancelled(self, where: str = "") -> None:
        if self.is_cancelled:
            raise OperationCancelledError(where, self.reason)
