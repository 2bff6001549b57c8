"""The caller's side of ib.*: one request, interim pacing notices, a typed answer or a typed error.

Used by the job-manager (and any client); the ib actor serves the other side. Requests retry with
backoff while no ib actor answers yet; cancelling the awaiting task abandons the request, and the
ib actor cancels it at IB through the operation's cancel broadcast.

Abandoned requests: the ib actor asks, before a request takes a pacing slot and now and then while
it waits or runs, whether its caller is still there (`CallerWatch`). The question is a message with
the `Ktrdr-Probe` header published to the caller's reply inbox with a reply subject of its own: while
the caller waits, its inbox subscription exists and the probe is delivered (IbRequester ignores it;
no answer is needed, so the caller needs no permission to publish); once the caller has gone, the
server answers "no responders" (status 503) at once, and the actor drops the request. A flush (one
PING/PONG) tells the two apart without a timeout: the server sends its 503 before its PONG.

Stopped ib actors, the other way round: the ib actor sends a keepalive (`subjects.WORKING_HEADER`,
its actor id) as it takes a request and every IB_KEEPALIVE_S until it answers. IbRequester fails a
request whose ib actor it has heard nothing from (no keepalive, probe, pacing notice or answer) for
IB_SILENCE_S with DisconnectedError ("ib actor ... stopped answering"), a retryable failure, instead
of waiting out the 120 s idle timeout: a paused (SIGSTOP), hung or cut-off ib actor keeps its NATS
subscription, so its queue group goes on handing it requests and nothing else would tell. A silence
measured by a loop of ours that was itself held up is not counted, and before blaming the ib actor
one PING/PONG asks whether NATS itself still answers (the message says which it was).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from events import subjects
from events.bounds import IB_SILENCE_S, Timeframe
from events.codec import DecodeError, decode, decode_ib_reply, encode
from events.messages import (
    PACING_HISTORY_MAX,
    ContractInfo,
    IbBarsRequest,
    IbContractRequest,
    IbHeadRequest,
    IbReply,
    IbRequest,
    PacingHistory,
    PacingStamp,
)
from ktrdr import tracing
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
from ktrdr.transport.publish import retrying

if TYPE_CHECKING:
    import pandas as pd
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

    from ktrdr.ib.pacing import PacingLimiter

ERRORS: dict[str, type[KtrdrError]] = {
    "unknown_symbol": UnknownSymbolError, "no_data": NoDataError, "pacing": PacingError,
    "disconnected": DisconnectedError, "ib": IbError, "validation": ValidationError,
}
OnWait = Callable[[float, str], None]
PROBE_HEADER = "Ktrdr-Probe"  # "is the caller of this request still there?" (ignored by the caller)
NO_RESPONDERS = "503"
LOOP_LAG_S = 0.5  # a silence check this late: our own loop was held up, so the silence may be ours
SERVER_CHECK_S = 2.0  # how long NATS gets to answer a PING before a silence is put down to it
log = logging.getLogger("ktrdr.ib")


class _NoResponders(Exception):
    pass


@dataclass
class _Heard:
    """What the caller of one request heard from its ib actor: when last (loop time), and who it is."""

    at: float
    responder: str = ""


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
    def __init__(self, nc: NATS, *, idle_timeout: float = 120.0, responder_wait: float = 15.0,
                 pool: str = subjects.DEFAULT_POOL, silence_s: float | None = IB_SILENCE_S) -> None:
        self.nc = nc
        self.pool = pool  # the ib actors of one IB account/gateway (ib.<verb>.<pool>)
        self.idle_timeout = idle_timeout
        # nothing at all from the ib actor this long fails the request (None: only idle_timeout does)
        self.silence_s = silence_s
        self.responder_wait = responder_wait  # an ib actor that is (re)starting gets this long to appear

    async def request(self, req: IbRequest, on_wait: OnWait | None = None) -> IbReply:
        """Retry with backoff while no ib actor answers; a cancel of the calling task interrupts."""
        try:
            return await retrying(lambda: self._request_once(req, on_wait), retry_for=self.responder_wait,
                                  errors=(_NoResponders,))
        except _NoResponders:
            raise DisconnectedError(f"no ib actor is serving {subjects.ib(req, self.pool)} (waited "
                                    f"{self.responder_wait:g} s)",
                                    hint="start one: ktrdr up, or python -m hosts.ib") from None

    async def _request_once(self, req: IbRequest, on_wait: OnWait | None) -> IbReply:
        inbox = self.nc.new_inbox()
        replies: asyncio.Queue[bytes] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        heard = _Heard(loop.time())

        async def cb(m: Msg) -> None:
            heard.at = loop.time()
            headers = m.headers or {}
            if PROBE_HEADER in headers:
                return  # the ib actor checking that we are still here: being subscribed is the answer
            if subjects.WORKING_HEADER in headers:  # a keepalive: who serves it, and that it still does
                heard.responder = headers[subjects.WORKING_HEADER][:100]
                return
            if not m.data and headers.get("Status") == NO_RESPONDERS:
                replies.put_nowait(b"")
                return
            replies.put_nowait(m.data)

        subject = subjects.ib(req, self.pool)
        sub = await self.nc.subscribe(inbox, cb=cb)
        with tracing.span(f"ib {subject.split('.', 2)[1]}", req.op_id or None, attrs={"ktrdr.ib.subject": subject}):
            try:
                await self.nc.publish(subject, encode(req), reply=inbox, headers=tracing.inject(None))
                heard.at = loop.time()
                return await self._answer(subject, replies, heard, on_wait)
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _answer(self, subject: str, replies: asyncio.Queue[bytes], heard: _Heard,
                      on_wait: OnWait | None) -> IbReply:
        loop = asyncio.get_running_loop()
        tick = min(self.silence_s / 5, self.idle_timeout) if self.silence_s else self.idle_timeout
        while True:
            before = loop.time()
            try:
                data = await asyncio.wait_for(replies.get(), tick)
            except TimeoutError:
                now = loop.time()
                quiet = now - heard.at
                if quiet >= self.idle_timeout:
                    raise DisconnectedError(f"no answer from any ib actor on {subject} within "
                                            f"{self.idle_timeout:g} s", hint="is an ib actor running?") from None
                if self.silence_s and quiet >= self.silence_s and now - before < tick + LOOP_LAG_S:
                    raise await self._stopped_answering(subject, heard, quiet) from None
                continue
            if not data:  # "no responders" status: nobody serves ib.* right now
                raise _NoResponders
            reply = decode_ib_reply(data)
            if not reply.final:
                if on_wait is not None:
                    on_wait(reply.pacing_wait_s, reply.message)
                continue
            raise_for(reply)
            return reply

    async def _stopped_answering(self, subject: str, heard: _Heard, quiet: float) -> DisconnectedError:
        """The error for a request its ib actor went silent on, saying whether NATS still answers."""
        if await _round_trip(self.nc, SERVER_CHECK_S):
            why = "NATS answers: the ib actor is paused, hung or cut off"
        else:
            why = (f"NATS did not answer a ping within {SERVER_CHECK_S:g} s either: the server or this "
                   f"connection is away")
        if heard.responder:
            text = (f"ib actor {heard.responder} stopped answering: nothing from it for {quiet:.0f} s while "
                    f"{subject} waited")
        else:
            text = (f"the ib actor serving {subject} stopped answering: nothing for {quiet:.0f} s, not even the "
                    f"keepalive it sends as it takes a request")
        log.warning("%s (%s)", text, why)
        return DisconnectedError(f"{text} ({why})", hint="retried: another ib actor, or the same once it runs again")

    async def contract(self, symbol: str, op_id: str = "") -> tuple[ContractInfo, str]:
        r = await self.request(IbContractRequest(symbol=symbol, op_id=op_id))
        assert r.contract is not None
        return r.contract, r.source

    async def head(self, symbol: str, timeframe: Timeframe, op_id: str = "") -> datetime | None:
        return (await self.request(IbHeadRequest(symbol=symbol, timeframe=timeframe, op_id=op_id))).head

    async def bars(self, symbol: str, timeframe: Timeframe, start: datetime, end: datetime, *, op_id: str = "",
                   on_wait: OnWait | None = None) -> tuple[pd.DataFrame, str]:
        import pandas as pd

        r = await self.request(IbBarsRequest(symbol=symbol, timeframe=timeframe, start=start, end=end,
                                             op_id=op_id), on_wait)
        idx = pd.DatetimeIndex(pd.to_datetime(r.t, unit="s", utc=True), name="timestamp")
        df = pd.DataFrame({"open": r.o, "high": r.h, "low": r.lo, "close": r.c, "volume": r.vol}, index=idx,
                          dtype="float64")
        return df, r.source


_ROUND_TRIPS: set[asyncio.Task[None]] = set()


async def _round_trip(nc: NATS, timeout: float) -> bool:
    """One PING/PONG: True when the server has answered everything we sent before it. The flush runs
    in a task of its own that is never cancelled from here: nats-py (2.x) leaves a cancelled flush's
    future in its PONG queue, and the next PONG then raises InvalidStateError inside the connection's
    read loop, which stops delivering anything to this connection (seen: an ib actor that went deaf
    when a request finished while its caller probe was flushing)."""
    task = asyncio.ensure_future(nc.flush(timeout=60))
    _ROUND_TRIPS.add(task)
    task.add_done_callback(lambda t: (_ROUND_TRIPS.discard(t), t.cancelled() or t.exception()))
    done, _ = await asyncio.wait({task}, timeout=timeout)  # a cancel of ours leaves the task running
    return bool(done) and not task.cancelled() and task.exception() is None


async def caller_alive(nc: NATS, reply: str, timeout: float = 2.0) -> bool:
    """False only when `reply` (a requester's inbox) has no subscriber any more; any doubt (a slow
    server, a refused publish) answers True, so a live caller is never dropped."""
    if not reply or nc.is_closed or not nc.is_connected:
        return True
    try:
        sub = await nc.subscribe(nc.new_inbox())
    except Exception:
        return True
    try:
        await nc.publish(reply, b"", reply=sub.subject, headers={PROBE_HEADER: "1"})
        # The server sends its 503 for the probe before its PONG for a later PING.
        if not await _round_trip(nc, timeout) or sub.pending_msgs == 0:
            return True
        msg = await sub.next_msg(timeout=timeout)
        return not (msg.headers and msg.headers.get("Status") == NO_RESPONDERS)
    except Exception:
        return True
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


class CallerWatch:
    """Whether the caller of one request is still there, asked sparingly: `gate()` right before the
    request takes a pacing slot, and `run()` now and then while it waits or runs (backoff from 0.5 s
    to `max_interval_s`, since every probe is one of the replies the ib role may send per request).
    A caller found gone trips `token`, which drops the request or cancels it at IB."""

    def __init__(self, nc: NATS, reply: str, token: CancellationToken, *, max_interval_s: float = 10.0,
                 fresh_s: float = 0.25) -> None:
        self.nc, self.reply, self.token = nc, reply, token
        self.max_interval_s = max_interval_s
        self.fresh_s = fresh_s  # an answer this recent is still the answer
        self.gone = False
        self._checked_at = -1e9

    async def alive(self) -> bool:
        loop = asyncio.get_running_loop()
        if self.gone or loop.time() - self._checked_at < self.fresh_s:
            return not self.gone
        ok = await caller_alive(self.nc, self.reply)
        self._checked_at = loop.time()
        if not ok and not self.gone:
            self.gone = True
            self.token.cancel("the caller went away")
        return ok

    async def gate(self) -> None:
        """For PacingLimiter.acquire: raise, so the request is dropped uncounted, if the caller left."""
        if not await self.alive():
            raise OperationCancelledError("waiting for IB pacing", "the caller went away")

    async def run(self) -> None:
        interval = 0.5
        while not self.token.is_cancelled:
            if await self.token.sleep(interval):
                return
            if not await self.alive():
                return
            interval = min(interval * 2, self.max_interval_s)


class PacingStore:
    """A PacingLimiter's recent requests in KV PACING (key `subjects.pacing_key(...)`), so a restarted
    ib actor waits where the old one would have instead of drawing 162s from IB. `load()` once before
    the first request; `run()` writes whenever a request was counted, at most every `interval_s` (a
    kill -9 loses at most that much), and `save()` once more at stop. Stamps are wall-clock (IB's
    windows keep running while no process is there); the limiter converts them to its own clock."""

    def __init__(self, js: JetStreamContext, key: str, limiter: PacingLimiter, *, gateway: str = "",
                 interval_s: float = 0.5) -> None:
        self.js, self.key, self.limiter = js, key, limiter
        self.gateway = gateway[:300]
        self.interval_s = interval_s
        self._kv: KeyValue | None = None
        self.saves = 0

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.js.key_value(subjects.PACING_BUCKET)
        return self._kv

    async def load(self) -> int:
        """Restore the stored history into the limiter; returns how many requests still count."""
        from nats.js.errors import BucketNotFoundError, KeyDeletedError, KeyNotFoundError

        from ktrdr.ib.pacing import RequestKey

        try:
            entry = await (await self._bucket()).get(self.key)
        except (KeyNotFoundError, KeyDeletedError):
            return 0
        except BucketNotFoundError:
            log.warning("KV %s does not exist yet: IB pacing history starts empty", subjects.PACING_BUCKET)
            return 0
        try:
            history = decode(entry.value or b"", PacingHistory)
        except DecodeError as exc:
            log.warning("ignoring unreadable IB pacing history %s: %s", self.key, exc)
            return 0
        n = self.limiter.restore((st.at, RequestKey(st.contract, st.exchange, st.what_to_show, st.params))
                                 for st in history.requests)
        if n:
            log.info("IB pacing history %s: %d recent requests still count", self.key, n)
        return n

    async def save(self) -> None:
        stamps = [PacingStamp(at=max(t, 0.0), contract=k.contract[:64], exchange=k.exchange[:32],
                              what_to_show=k.what_to_show[:32], params=k.params[:256])
                  for t, k in self.limiter.history()[-PACING_HISTORY_MAX:]]
        await (await self._bucket()).put(self.key, encode(PacingHistory(gateway=self.gateway, requests=stamps)))
        self.saves += 1

    async def run(self) -> None:
        changed = self.limiter.changed
        while True:
            await changed.wait()
            changed.clear()
            try:
                await self.save()
            except Exception as exc:  # the server is away: the next change (or stop) writes again
                log.debug("saving IB pacing history failed: %s", exc)
                changed.set()
            await asyncio.sleep(self.interval_s)  # coalesce: a burst of requests is one write
