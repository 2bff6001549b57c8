"""ib: the seed's IbDataAdapter + IB host service as an actor. Owns one ib_async connection
(IB_HOST, IB_PORT, IB_CLIENT_ID), read-only, and serves `ib.contract`, `ib.head` and `ib.bars` in the
queue group "ib", so several ib actors (different client ids) share the load. Pacing is enforced in
the client (PacingLimiter) and every wait is sent to the caller as an interim reply ("waiting 12 s
for IB pacing") before the answer. A cancel of the operation cancels its in-flight IB requests.
Errors go back typed (error_code + IB's code), never as text to parse. The caller's side is
ktrdr.transport.IbRequester.
"""

from __future__ import annotations

import contextlib
from typing import Any

from actors.runtime import Actor, Call, handles
from events import subjects
from events.messages import CancelOperation, IbBarsRequest, IbContractRequest, IbHeadRequest, IbReply, IbRequest
from ktrdr.cancellation import CancellationToken
from ktrdr.errors import DisconnectedError, IbError, KtrdrError, OperationCancelledError
from ktrdr.ib.client import IbClient
from ktrdr.ib.pacing import PacingRules


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
            self.spawn(self._reconnect_forever())

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
            token.cancel(cancel.reason, code=cancel.reason_code, requested_by=cancel.requested_by)

    def reply_for_error(self, exc: BaseException, text: str | None) -> IbReply:
        """The typed error reply for whatever ended a request (the runtime's request hook)."""
        if isinstance(exc, OperationCancelledError):
            return IbReply(ok=False, error_code="cancelled", error=str(exc))
        if isinstance(exc, IbError):
            return IbReply(ok=False, error_code=exc.code, error=str(exc), ib_code=exc.ib_code)
        if isinstance(exc, KtrdrError):
            return IbReply(ok=False, error_code=exc.code, error=str(exc))
        if text is not None:  # a malformed request
            return IbReply(ok=False, error_code="validation", error=text[:2000])
        self.log.error("ib actor error: %s", exc, exc_info=exc)
        return IbReply(ok=False, error_code="ib", error=f"ib actor error: {type(exc).__name__}: {exc}")

    @contextlib.contextmanager
    def _tracked(self, req: IbRequest) -> Any:
        """A token for one request, tripped by its operation's cancel (also one that came first)."""
        token = CancellationToken()
        if req.op_id and req.op_id in self.recent_cancels:
            token.cancel("cancel requested")
        self.inflight.setdefault(req.op_id, set()).add(token)
        try:
            yield token
        finally:
            tokens = self.inflight.get(req.op_id)
            if tokens is not None:
                tokens.discard(token)
                if not tokens:
                    self.inflight.pop(req.op_id, None)

    def _client(self) -> IbClient:
        if self.client is None or not self.client.is_connected:
            raise DisconnectedError("IB gateway not connected", hint="is IB Gateway/TWS running? see the ib log")
        return self.client

    @handles(IbContractRequest, queue=subjects.IB_QUEUE_GROUP)
    async def contract(self, req: IbContractRequest, call: Call) -> IbReply:
        client = self._client()
        return IbReply(ok=True, contract=await client.qualify(req.symbol), source=client.source)

    @handles(IbHeadRequest, queue=subjects.IB_QUEUE_GROUP)
    async def head(self, req: IbHeadRequest, call: Call) -> IbReply:
        client = self._client()
        return IbReply(ok=True, head=await client.head_timestamp(req.symbol), source=client.source)

    @handles(IbBarsRequest, queue=subjects.IB_QUEUE_GROUP)
    async def bars(self, req: IbBarsRequest, call: Call) -> IbReply:
        client = self._client()

        def on_wait(wait_s: float, why: str) -> None:
            self.spawn_note(call, IbReply(ok=True, final=False, pacing_wait_s=wait_s, message=why))

        with self._tracked(req) as token:
            df = await client.bars(req.symbol, req.timeframe, req.start, req.end, cancel=token, on_wait=on_wait)
        ts = (df.index.asi8 // 1_000_000_000).tolist() if len(df) else []
        return IbReply(ok=True, source=str(df.attrs.get("source", client.source)),
                       pacing_wait_s=float(df.attrs.get("pacing_wait_s", 0.0)), t=ts,
                       o=df["open"].tolist(), h=df["high"].tolist(), lo=df["low"].tolist(), c=df["close"].tolist(),
                       vol=df["volume"].tolist())

    def spawn_note(self, call: Call, note: IbReply) -> None:
        import asyncio

        task = asyncio.ensure_future(call.interim(note))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
