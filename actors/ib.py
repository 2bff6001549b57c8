"""ib: serves IB requests over NATS (the seed's IbDataAdapter + IB host service). Owns one ib_async connection
(IB_HOST, IB_PORT, IB_CLIENT_ID), read-only, and serves `ib.contract`, `ib.head` and `ib.bars` in the
queue group "ib", so several ib actors (different client ids) share the load. Pacing is enforced in
the client (PacingLimiter) and every wait is sent to the caller as an interim reply ("waiting 12 s
for IB pacing") before the answer. A cancel of the operation cancels its in-flight IB requests.
Errors go back typed (error_code + IB's code), never as text to parse. The caller's side is
ktrdr.transport.IbRequester.

Faults it rides out:
- the gateway goes away (crash, daily restart, `ktrdr up` bringing it back on the same port): the
  client reconnects by itself forever; meanwhile requests fail at once with DisconnectedError naming
  the gateway, and `ib_state()` (logged on every change) says "... disconnected; reconnecting";
- a restart of this actor: the pacing history is kept in KV PACING and loaded before the first
  request, so IB's windows are honoured across the restart;
- a caller that went away: its request is dropped before it takes a pacing slot, or cancelled at IB
  if already sent (`abandoned` counts them).

Faults its callers ride out: this actor paused (SIGSTOP), hung or cut off while it holds their
requests. It sends a keepalive for each request it serves every IB_KEEPALIVE_S (events/bounds.py)
until its answer; a caller that hears nothing for IB_SILENCE_S fails the request as `disconnected`
(ktrdr.transport.ib.IbRequester).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

from actors.runtime import Actor, Call, handles, metrics
from events import roles, subjects
from events.bounds import IB_KEEPALIVE_S
from events.messages import (
    CancelOperation,
    CancelRequested,
    IbBarsRequest,
    IbContractRequest,
    IbHeadRequest,
    IbReply,
    IbRequest,
)
from ktrdr.cancellation import CancellationToken
from ktrdr.errors import IbError, KtrdrError, OperationCancelledError
from ktrdr.ib.client import IbClient
from ktrdr.ib.pacing import PacingRules
from ktrdr.transport.ib import CallerWatch, PacingStore


class IbActor(Actor):
    role = roles.IB

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client: IbClient | None = None
        self.pacing_store: PacingStore | None = None
        self.inflight: dict[str, set[CancellationToken]] = {}
        self.abandoned = 0  # requests dropped or cancelled because their caller went away
        self._last_state = ""

    async def on_start(self) -> None:
        s = self.settings
        port = s.ib_port or 4002
        # ready_timeout=0: while the gateway is away, requests fail at once and the caller's retry
        # policy decides how long a load waits (DataLoadingJob: gateway_wait_s).
        self.client = IbClient(s.ib_host, port, s.ib_client_id, pacing=PacingRules(time_scale=s.ib_time_scale),
                               connect_timeout=30.0, ready_timeout=0.0)
        assert self.js is not None
        self.pacing_store = PacingStore(self.js, subjects.pacing_key(s.ib_host, port, s.ib_client_id),
                                        self.client.limiter, gateway=f"{s.ib_host}:{port}/{s.ib_client_id}")
        try:
            await self.pacing_store.load()  # before the first request can take a slot
        except Exception as exc:  # a missing history costs at most a 162; never a reason not to serve
            self.log.warning("could not load the IB pacing history: %s", exc)
        if not await self.client.start():  # keeps reconnecting in the background
            self.log.error("%s not reachable yet (%s); will keep trying", self.client.gateway,
                           self.client.last_error)
        self.spawn(self.pacing_store.run(), name=f"{self.id}-pacing")
        self.spawn(self._watch_state(), name=f"{self.id}-ib-state")

    def presence_state(self) -> str:
        return self.ib_state()

    def ib_state(self) -> str:
        """Where the IB connection stands, in one line ("connected", or why not)."""
        return self.client.state if self.client is not None else "not started"

    async def _watch_state(self) -> None:
        """Log every change of the IB connection's state (a presence-visible field could carry it)."""
        while True:
            state = self.ib_state()
            if state.split(" (attempt")[0] != self._last_state.split(" (attempt")[0]:
                self.log.info("IB connection: %s", state)
            self._last_state = state
            await asyncio.sleep(self.settings.heartbeat_s)

    async def on_stop(self) -> None:
        if self.pacing_store is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pacing_store.save(), 2.0)
        if self.client is not None:
            await self.client.close()

    async def on_cancel_request(self, op_id: str, cancel: CancelOperation | CancelRequested) -> None:
        for token in list(self.inflight.get(op_id, ())):
            token.cancel(cancel.reason, code=cancel.reason_code, requested_by=cancel.requested_by)

    def reply_for_error(self, exc: BaseException, text: str | None) -> IbReply:
        """Answer in the callers' own type: an IbReply with ok=False and a typed error_code (the
        requester raises the matching IbError subclass from it)."""
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
        if self.client is None:
            raise IbError("the ib actor is not started")
        if not self.client.is_connected:
            raise self.client.down_error()
        return self.client

    @handles(IbContractRequest, queue=subjects.IB_QUEUE_GROUP, keepalive_s=IB_KEEPALIVE_S)
    async def contract(self, req: IbContractRequest, call: Call) -> IbReply:
        client = self._client()
        with _counted("contract"):
            return IbReply(ok=True, contract=await client.qualify(req.symbol), source=client.source)

    @handles(IbHeadRequest, queue=subjects.IB_QUEUE_GROUP, keepalive_s=IB_KEEPALIVE_S)
    async def head(self, req: IbHeadRequest, call: Call) -> IbReply:
        client = self._client()
        with _counted("head"):
            return IbReply(ok=True, head=await client.head_timestamp(req.symbol), source=client.source)

    @handles(IbBarsRequest, queue=subjects.IB_QUEUE_GROUP, keepalive_s=IB_KEEPALIVE_S)
    async def bars(self, req: IbBarsRequest, call: Call) -> IbReply:
        client = self._client()

        def on_wait(wait_s: float, why: str) -> None:
            self.spawn_note(call, IbReply(ok=True, final=False, pacing_wait_s=wait_s, message=why))

        assert self.nc is not None
        with self._tracked(req) as token, _counted("bars"):
            watch = CallerWatch(self.nc, call.reply_to, token)
            watcher = asyncio.ensure_future(watch.run())
            try:
                df = await client.bars(req.symbol, req.timeframe, req.start, req.end, cancel=token, on_wait=on_wait,
                                       gate=watch.gate, owner=req.op_id)
            except OperationCancelledError:
                if watch.gone:
                    self.abandoned += 1
                    self.log.info("dropped %s %s bars: the caller went away", req.symbol, req.timeframe)
                raise
            finally:
                watcher.cancel()
        ts = (df.index.asi8 // 1_000_000_000).tolist() if len(df) else []
        waited = float(df.attrs.get("pacing_wait_s", 0.0))
        if waited > 0:
            metrics.IB_PACING_WAIT.labels("bars").inc(waited)
        return IbReply(ok=True, source=str(df.attrs.get("source", client.source)), pacing_wait_s=waited, t=ts,
                       o=df["open"].tolist(), h=df["high"].tolist(), lo=df["low"].tolist(), c=df["close"].tolist(),
                       vol=df["volume"].tolist())

    def spawn_note(self, call: Call, note: IbReply) -> None:
        task = asyncio.ensure_future(call.interim(note))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


@contextlib.contextmanager
def _counted(verb: str) -> Iterator[None]:
    """Count one IB request by its outcome (ok, cancelled, error) for /metrics."""
    try:
        yield
    except OperationCancelledError:
        metrics.IB_REQUESTS.labels(verb, "cancelled").inc()
        raise
    except Exception:
        metrics.IB_REQUESTS.labels(verb, "error").inc()
        raise
    metrics.IB_REQUESTS.labels(verb, "ok").inc()
