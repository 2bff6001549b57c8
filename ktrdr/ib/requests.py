"""One IB request, start to finish: its reqId, its error events, its timeout, its cancellation.

ib_async ends a failed request with an empty answer and reports the reason separately through
`ib.errorEvent(reqId, errorCode, errorString, contract)` — emitted right after the request's future
is resolved, before any awaiting coroutine resumes. `RequestTracker` allocates the reqId itself
(through ib_async's own `client.getReqId` / `wrapper.startReq`, exactly as ib_async's *Async helpers
do) so it knows which error events belong to which request, turns them into typed errors, and can
cancel the very request on the wire when a CancellationToken trips.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ib_async import IB, Contract

from ktrdr.cancellation import CancellationToken
from ktrdr.errors import DisconnectedError, IbError, OperationCancelledError
from ktrdr.ib.errors import classify, is_informational

log = logging.getLogger("ktrdr.ib")


@dataclass
class _Pending:
    failed: asyncio.Event = field(default_factory=asyncio.Event)
    errors: list[tuple[int, str]] = field(default_factory=list)


class RequestTracker:
    """Routes ib_async error events to the request they belong to. One per IB instance."""

    def __init__(self, ib: IB, *, gateway: str = "IB gateway") -> None:
        self.ib = ib
        self.gateway = gateway  # "IB gateway at host:port": named in every connection error
        self._pending: dict[int, _Pending] = {}
        self._waiting_since: float | None = None  # loop time since which some request waits for IB
        ib.errorEvent += self._on_error

    @property
    def waiting_since(self) -> float | None:
        """The loop time since which at least one sent request has been waiting for its answer (None:
        none waits). IbClient's stall watch measures the gateway's silence from here."""
        return self._waiting_since if self._pending else None

    def _on_error(self, req_id: int, code: int, text: str, _contract: Any = None) -> None:
        pending = self._pending.get(req_id)
        if pending is None or is_informational(code):
            return
        pending.errors.append((code, text))
        pending.failed.set()  # some codes (321) do not end ib_async's future: end our wait anyway

    def fail_all(self, code: int, text: str) -> None:
        """Fail every request in flight (e.g. on 1100 connectivity lost: their answers will not come)."""
        for pending in self._pending.values():
            pending.errors.append((code, text))
            pending.failed.set()

    async def run(
        self,
        send: Callable[[int], None],
        *,
        symbol: str,
        what: str,
        timeout: float,
        contract: Contract | None = None,
        container: Any = None,
        cancel: CancellationToken | None = None,
        on_abandon: Callable[[int], None] | None = None,
    ) -> Any:
        """Send one request (`send(reqId)`) and return ib_async's result for it.

        Raises the typed error of the first non-informational IB error for this reqId,
        DisconnectedError when the connection drops, OperationCancelledError as soon as `cancel`
        trips, IbError on timeout. `on_abandon(reqId)` tells IB to stop work we no longer wait for.
        """
        try:
            req_id = self.ib.client.getReqId()
        except ConnectionError:
            raise DisconnectedError(
                f"{self.gateway} not connected: cannot request {what} for {symbol}",
                hint="the client reconnects by itself; retry shortly",
            ) from None
        pending = _Pending()
        if not self._pending:
            self._waiting_since = asyncio.get_running_loop().time()
        self._pending[req_id] = pending
        future = self.ib.wrapper.startReq(req_id, contract, container)
        loop = asyncio.get_running_loop()
        cancelled = asyncio.Event()
        remove_cancel: Callable[[], None] = lambda: None  # noqa: E731
        if cancel is not None:
            # The token may be tripped from another thread: hop onto this loop to wake the wait.
            def wake() -> None:
                loop.call_soon_threadsafe(cancelled.set)

            remove_cancel = cancel.on_cancel(wake)
        failed_wait = asyncio.ensure_future(pending.failed.wait())
        cancel_wait = asyncio.ensure_future(cancelled.wait())
        try:
            send(req_id)
            done, _ = await asyncio.wait(
                {future, failed_wait, cancel_wait}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if cancel is not None and cancel.is_cancelled:
                self._abandon(req_id, on_abandon)
                raise OperationCancelledError(f"{what} for {symbol}", cancel.reason)
            if pending.errors:
                code, text = pending.errors[0]
                raise classify(code, text, symbol=symbol, what=what)
            if not done:
                self._abandon(req_id, on_abandon)
                raise IbError(
                    f"IB did not answer {what} for {symbol} within {timeout:g} s",
                    hint="the gateway may be overloaded or its data farm disconnected; retry later",
                )
            exc = future.exception()
            if isinstance(exc, ConnectionError):
                raise DisconnectedError(
                    f"{self.gateway}: connection dropped during {what} for {symbol}",
                    hint="the client reconnects by itself; retry the request",
                ) from exc
            if exc is not None:
                raise IbError(f"{what} for {symbol} failed: {exc!r}") from exc
            return future.result()
        finally:
            remove_cancel()
            self._pending.pop(req_id, None)
            failed_wait.cancel()
            cancel_wait.cancel()
            if not future.done():
                future.cancel()  # ib_async ends it later (or on reset) and ignores a done future

    def _abandon(self, req_id: int, on_abandon: Callable[[int], None] | None) -> None:
        if on_abandon is None or not self.ib.client.isConnected():
            return
        with contextlib.suppress(ConnectionError):
            on_abandon(req_id)
