"""The caller's side of ib.*: one request, interim pacing notices, a typed answer or a typed error.

Used by the job-manager (and any client); the ib actor serves the other side. Requests retry with
backoff while no ib actor answers yet; cancelling the awaiting task abandons the request, and the
ib actor cancels it at IB through the operation's cancel broadcast.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from events import subjects
from events.codec import decode_ib_reply, encode
from events.messages import ContractInfo, IbBarsRequest, IbContractRequest, IbHeadRequest, IbReply, IbRequest
from ktrdr.errors import (
    DisconnectedError,
    IbError,
    KtrdrError,
    NoDataError,
    OperationCancelledError,
    PacingError,
    UnknownSymbolError,
    ValidationError,
)

if TYPE_CHECKING:
    import pandas as pd

ERRORS: dict[str, type[KtrdrError]] = {
    "unknown_symbol": UnknownSymbolError, "no_data": NoDataError, "pacing": PacingError,
    "disconnected": DisconnectedError, "ib": IbError, "validation": ValidationError,
}
OnWait = Callable[[float, str], None]


class _NoResponders(Exception):
    pass


def raise_for(reply: IbReply) -> None:
    """Turn a failed reply back into the typed error the ib actor caught."""
    if reply.ok:
        return
    if reply.error_code == "cancelled":
        raise OperationCancelledError("IB request", reply.error)
    cls = ERRORS.get(reply.error_code, IbError)
    if issubclass(cls, IbError):
        raise cls(reply.error, ib_code=reply.ib_code)
    raise cls(reply.error)


class IbRequester:
    def __init__(self, nc: NATS, *, idle_timeout: float = 120.0, responder_wait: float = 15.0) -> None:
        self.nc = nc
        self.idle_timeout = idle_timeout
        self.responder_wait = responder_wait  # an ib actor that is (re)starting gets this long to appear

    async def request(self, req: IbRequest, on_wait: OnWait | None = None) -> IbReply:
        """Retry with backoff while no ib actor answers; a cancel of the calling task interrupts."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.responder_wait
        delay = 0.05
        while True:
            try:
                return await self._request_once(req, on_wait)
            except _NoResponders:
                if loop.time() + delay > deadline:
                    raise DisconnectedError(f"no ib actor is serving {subjects.ib(req)} (waited "
                                            f"{self.responder_wait:g} s)",
                                            hint="start one: ktrdr up, or python -m hosts.ib") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _request_once(self, req: IbRequest, on_wait: OnWait | None) -> IbReply:
        inbox = self.nc.new_inbox()
        replies: asyncio.Queue[bytes] = asyncio.Queue()

        async def cb(m: Msg) -> None:
            replies.put_nowait(m.data)

        subject = subjects.ib(req)
        sub = await self.nc.subscribe(inbox, cb=cb)
        try:
            await self.nc.publish(subject, encode(req), reply=inbox)
            while True:
                try:
                    data = await asyncio.wait_for(replies.get(), self.idle_timeout)
                except TimeoutError:
                    raise DisconnectedError(f"no answer from any ib actor on {subject} within "
                                            f"{self.idle_timeout:g} s", hint="is an ib actor running?") from None
                if not data:  # "no responders" status: nobody serves ib.* right now
                    raise _NoResponders
                reply = decode_ib_reply(data)
                if not reply.final:
                    if on_wait is not None:
                        on_wait(reply.pacing_wait_s, reply.message)
                    continue
                raise_for(reply)
                return reply
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def contract(self, symbol: str, op_id: str = "") -> tuple[ContractInfo, str]:
        r = await self.request(IbContractRequest(symbol=symbol, op_id=op_id))
        assert r.contract is not None
        return r.contract, r.source

    async def head(self, symbol: str, timeframe: str, op_id: str = "") -> datetime | None:
        return (await self.request(IbHeadRequest(symbol=symbol, timeframe=timeframe, op_id=op_id))).head

    async def bars(self, symbol: str, timeframe: str, start: datetime, end: datetime, *, op_id: str = "",
                   on_wait: OnWait | None = None) -> tuple[pd.DataFrame, str]:
        import pandas as pd

        r = await self.request(IbBarsRequest(symbol=symbol, timeframe=timeframe, start=start, end=end,
                                             op_id=op_id), on_wait)
        idx = pd.DatetimeIndex(pd.to_datetime(r.t, unit="s", utc=True), name="timestamp")
        df = pd.DataFrame({"open": r.o, "high": r.h, "low": r.lo, "close": r.c, "volume": r.vol}, index=idx,
                          dtype="float64")
        return df, r.source
