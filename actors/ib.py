"""ib: the seed's IbDataAdapter + IB host service as an actor. Owns one ib_async connection
(IB_HOST, IB_PORT, IB_CLIENT_ID), read-only, and serves `ib.contract`, `ib.head` and `ib.bars` in the
queue group "ib", so several ib actors (different client ids) share the load. Pacing is enforced in
the client (PacingLimiter) and every wait is sent to the caller as an interim reply ("waiting 12 s
for IB pacing") before the answer. A cancel of the operation cancels its in-flight IB requests.
Errors go back typed (error_code + IB's code), never as text to parse.

`IbRequester` is the caller's side (used by the job-manager): a request with interim replies.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pandas as pd
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from actors.runtime import Actor, handles
from events import subjects
from events.codec import DecodeError, decode_ib_reply, decode_ib_request, encode
from events.messages import CancelOperation, ContractInfo, IbBarsRequest, IbContractRequest, IbHeadRequest, IbReply
from ktrdr.cancellation import CancellationToken
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
from ktrdr.ib.client import IbClient
from ktrdr.ib.pacing import PacingRules

ERRORS: dict[str, type[KtrdrError]] = {
    "unknown_symbol": UnknownSymbolError, "no_data": NoDataError, "pacing": PacingError,
    "disconnected": DisconnectedError, "ib": IbError, "validation": ValidationError,
}


class IbActor(Actor):
    role = "ib"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client: IbClient | None = None
        self.inflight: dict[str, set[CancellationToken]] = {}

    async def on_start(self) -> None:
        s = self.settings
        port = s.ib_port or 4002
        self.client = IbClient(s.ib_host, port, s.ib_client_id, pacing=PacingRules(time_scale=s.ib_time_scale),
                               connect_timeout=30.0)
        try:
            await self.client.connect()
        except Exception as exc:  # keep serving: requests answer "disconnected" until it is back
            self.log.error("IB gateway %s:%s not reachable yet (%s); will keep trying", s.ib_host, port, exc)
            self._bg.append(asyncio.create_task(self._reconnect_forever()))

    async def _reconnect_forever(self) -> None:
        assert self.client is not None
        while not self.client.is_connected:
            with contextlib.suppress(Exception):
                await self.client.connect()

    async def on_stop(self) -> None:
        if self.client is not None:
            await self.client.close()

    async def on_cancel_request(self, op_id: str, cancel: CancelOperation) -> None:
        for token in list(self.inflight.get(op_id, ())):
            token.cancel(cancel.reason, cancel.requested_by)

    @handles("ib.contract", queue=subjects.IB_QUEUE_GROUP)
    async def on_contract(self, msg: Msg) -> None:
        self._spawn(msg)

    @handles("ib.head", queue=subjects.IB_QUEUE_GROUP)
    async def on_head(self, msg: Msg) -> None:
        self._spawn(msg)

    @handles("ib.bars", queue=subjects.IB_QUEUE_GROUP)
    async def on_bars(self, msg: Msg) -> None:
        self._spawn(msg)

    def _spawn(self, msg: Msg) -> None:
        # Callbacks of one subscription run one at a time: serve each request in its own task so
        # requests overlap (pacing decides how much).
        task = asyncio.create_task(self._serve(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, msg: Msg) -> None:
        try:
            req = decode_ib_request(msg.data)
        except DecodeError as exc:
            await self._reply(msg, IbReply(ok=False, error_code="validation", error=f"malformed IB request: {exc}"))
            return
        token = CancellationToken()
        self.inflight.setdefault(req.op_id, set()).add(token)
        if req.op_id and req.op_id in self._recent_cancels:
            token.cancel("cancel requested")
        try:
            reply = await self._answer(msg, req, token)
        except OperationCancelledError as exc:
            reply = IbReply(ok=False, error_code="cancelled", error=str(exc))
        except IbError as exc:
            reply = IbReply(ok=False, error_code=exc.code, error=str(exc), ib_code=exc.ib_code)
        except KtrdrError as exc:
            reply = IbReply(ok=False, error_code=exc.code, error=str(exc))
        except Exception as exc:
            await self.on_fault(exc, msg.subject)
            reply = IbReply(ok=False, error_code="ib", error=f"ib actor error: {type(exc).__name__}: {exc}")
        finally:
            tokens = self.inflight.get(req.op_id)
            if tokens is not None:
                tokens.discard(token)
                if not tokens:
                    self.inflight.pop(req.op_id, None)
        await self._reply(msg, reply)

    async def _answer(self, msg: Msg, req: IbBarsRequest | IbContractRequest | IbHeadRequest,
                      token: CancellationToken) -> IbReply:
        client = self.client
        if client is None or not client.is_connected:
            raise DisconnectedError("IB gateway not connected", hint="is IB Gateway/TWS running? see the ib log")
        if isinstance(req, IbContractRequest):
            return IbReply(ok=True, contract=await client.qualify(req.symbol), source=client.source)
        if isinstance(req, IbHeadRequest):
            return IbReply(ok=True, head=await client.head_timestamp(req.symbol), source=client.source)

        def on_wait(wait_s: float, why: str) -> None:
            note = IbReply(ok=True, final=False, pacing_wait_s=wait_s, message=why)
            if msg.reply and self.nc is not None:
                task = asyncio.ensure_future(self.nc.publish(msg.reply, encode(note)))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

        df = await client.bars(req.symbol, req.timeframe, req.start, req.end, cancel=token, on_wait=on_wait)
        ts = (df.index.asi8 // 1_000_000_000).tolist() if len(df) else []
        return IbReply(ok=True, source=str(df.attrs.get("source", client.source)),
                       pacing_wait_s=float(df.attrs.get("pacing_wait_s", 0.0)), t=ts,
                       o=df["open"].tolist(), h=df["high"].tolist(), lo=df["low"].tolist(), c=df["close"].tolist(),
                       vol=df["volume"].tolist())

    async def _reply(self, msg: Msg, reply: IbReply) -> None:
        if msg.reply and self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.publish(msg.reply, encode(reply))


class _NoResponders(Exception):
    pass


class IbRequester:
    """Caller side of ib.*: one request, interim pacing notices, a typed answer or a typed error.
    Cancelling the awaiting task abandons the request (the ib actor cancels it through the
    operation's cancel broadcast)."""

    def __init__(self, nc: NATS, *, idle_timeout: float = 120.0, responder_wait: float = 15.0) -> None:
        self.nc = nc
        self.idle_timeout = idle_timeout
        self.responder_wait = responder_wait  # an ib actor that is (re)starting gets this long to appear

    async def _request(self, subject: str, payload: Any,
                       on_wait: Callable[[float, str], None] | None = None) -> IbReply:
        """Retry with backoff while no ib actor answers (the seed's adapter retries); a cancel of the
        calling task interrupts the wait."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.responder_wait
        delay = 0.05
        while True:
            try:
                return await self._request_once(subject, payload, on_wait)
            except _NoResponders:
                if loop.time() + delay > deadline:
                    raise DisconnectedError(f"no ib actor is serving {subject} (waited {self.responder_wait:g} s)",
                                            hint="start one: ktrdr up, or python -m hosts.ib") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _request_once(self, subject: str, payload: Any,
                            on_wait: Callable[[float, str], None] | None) -> IbReply:
        inbox = self.nc.new_inbox()
        replies: asyncio.Queue[bytes] = asyncio.Queue()

        async def cb(m: Msg) -> None:
            replies.put_nowait(m.data)

        sub = await self.nc.subscribe(inbox, cb=cb)
        try:
            await self.nc.publish(subject, encode(payload), reply=inbox)
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
                if not reply.ok:
                    if reply.error_code == "cancelled":
                        raise OperationCancelledError("IB request", reply.error)
                    cls = ERRORS.get(reply.error_code, IbError)
                    if issubclass(cls, IbError):
                        raise cls(reply.error, ib_code=reply.ib_code)
                    raise cls(reply.error)
                return reply
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def contract(self, symbol: str, op_id: str = "") -> tuple[ContractInfo, str]:
        r = await self._request("ib.contract", IbContractRequest(symbol=symbol, op_id=op_id))
        assert r.contract is not None
        return r.contract, r.source

    async def head(self, symbol: str, timeframe: str, op_id: str = "") -> datetime | None:
        return (await self._request("ib.head", IbHeadRequest(symbol=symbol, timeframe=timeframe, op_id=op_id))).head

    async def bars(self, symbol: str, timeframe: str, start: datetime, end: datetime, *, op_id: str = "",
                   on_wait: Callable[[float, str], None] | None = None) -> tuple[pd.DataFrame, str]:
        r = await self._request("ib.bars", IbBarsRequest(symbol=symbol, timeframe=timeframe, start=start, end=end,
                                                         op_id=op_id), on_wait)
        idx = pd.DatetimeIndex(pd.to_datetime(r.t, unit="s", utc=True), name="timestamp")
        df = pd.DataFrame({"open": r.o, "high": r.h, "low": r.lo, "close": r.c, "volume": r.vol}, index=idx,
                          dtype="float64")
        return df, r.source
