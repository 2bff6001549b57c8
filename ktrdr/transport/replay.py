"""Reading stored events back: every event of an operation, the lifecycle events of all of them, or
the last message on one subject. The same reads serve `ops replay`, `ops list`, a worker checking an
operation before it runs it, and the orchestrator rebuilding its state after a restart.

A read is an ephemeral push consumer (no acks, flow control) whose messages skip nats-py's
per-message machinery: the connection hands each one, as bytes, straight to a sink (no header
parsing, no Msg object, no queue, no task switch per message). That is what lets `ops replay`
decode and fold at the raw ordered consumer's rate (figures in bench/backbone.py). That hook wraps
nats-py's private `Client._process_msg`, so it is used only with the nats-py versions it was checked
against (`NATS_PY_PATCHED`, the same range as pyproject's dependency: a test checks they agree);
with any other version a read takes the public path, an ordinary subscription whose callback gets
each Msg (slower, same events in the same order). Two ways to read:
- `read_events(js, filters, on_msg)`: on_msg(subject, data) is called in stream order as the bytes
  arrive, on the connection's reading task; nothing is buffered beyond what the socket holds.
- `stream_events(js, filters)`: an async iterator for a consumer that goes at its own pace (`ops
  replay --speed X` sleeps between events); flow-control requests are answered only once the
  consumer has caught up, so the server stops sending and memory stays bounded by its window.

OPS caps its consumers (ops_max_consumers) and a reader key may make ephemeral ones there: a read
that finds the cap reached (someone holds them all) reads the same messages by batched direct gets
instead (`_walk`: nats-server 2.11+, no consumer, one request per BATCH messages per filter, merged in
stream order), so no key that fills the cap stops a worker's check, the orchestrator's rebuild or `ops
list`. Direct gets (`last_message`) need no consumer and go to the stream the subject is stored in
(OPS, or OPS_CANCELS for a cancel subject).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.client import __version__ as _nats_py_version
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import APIError, NotFoundError

from events import subjects
from events.codec import DecodeError, decode_event_on
from events.messages import AnyEvent
from ktrdr.transport.publish import retrying

log = logging.getLogger(__name__)
BATCH = 512  # messages per batched direct get (the read without a consumer)
_MAX_CONSUMERS = 10026  # JetStream's "maximum consumers limit reached"

# nats-py versions [lowest, first beyond) whose protocol parser calls `nc._process_msg(sid, subject,
# reply, data, headers)` through the connection object, so that wrapping it on the instance sees
# every message: read in nats-py's sources for 2.9.0-2.15.0, run by the test suite on 2.16.0.
NATS_PY_PATCHED = ((2, 9), (2, 17))


def patch_applies(version: str) -> bool:
    """Whether the dispatch hook is used with nats-py `version` (e.g. "2.16.0")."""
    try:
        release = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:  # a pre-release or local build we cannot place: the public path
        return False
    return NATS_PY_PATCHED[0] <= release < NATS_PY_PATCHED[1]


FAST_PATH = patch_applies(_nats_py_version)

# A status message's header block is "NATS/1.0 100 ..." (a space after the version); a data
# message's is "NATS/1.0\r\n..." (its own headers, e.g. Nats-Msg-Id, which a read never needs).
_HDR_VERSION_LEN = len(b"NATS/1.0")
_STALLED = b"Nats-Consumer-Stalled:"
_PROOF = b"\r\nKtrdr-Proof:"  # events.proof.HEADER: the holder proof a verifying reader asks for


def _proof_of(headers: bytes | None) -> bytes | None:
    """The holder proof's header value in a raw header block, or None."""
    if headers is None:
        return None
    i = headers.find(_PROOF)
    if i < 0:
        return None
    return headers[i + len(_PROOF):].split(b"\r\n", 1)[0].strip()

# sink(subject, reply, data, headers) -> a flow-control reply subject to answer now, or None
Sink = Callable[[bytes, bytes, bytes, bytes | None], bytes | None]


def _sinks(nc: NATS) -> dict[int, Sink]:
    """Route one subscription's messages to a sink, by subscription id. nats-py has no synchronous
    per-message hook, so the connection's message dispatch is wrapped while any sink is registered
    (and restored when the last one leaves): every other subscription goes through unchanged."""
    sinks: dict[int, Sink] | None = getattr(nc, "_ktrdr_sinks", None)
    if sinks is not None:
        return sinks
    sinks = {}
    original: Callable[..., Awaitable[None]] = nc._process_msg

    async def process_msg(sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        sink = sinks.get(sid)
        if sink is None:
            await original(sid, subject, reply, data, headers)
            return
        answer = sink(subject, reply, data, headers)
        if answer:
            await nc.publish(answer.decode(), b"")

    nc._process_msg = process_msg  # type: ignore[method-assign]
    nc._ktrdr_sinks = sinks  # type: ignore[attr-defined]
    return sinks


def _release(nc: NATS, sid: int) -> None:
    sinks: dict[int, Sink] | None = getattr(nc, "_ktrdr_sinks", None)
    if sinks is None:
        return
    sinks.pop(sid, None)
    if not sinks:
        del nc._process_msg  # the class's method again
        del nc._ktrdr_sinks  # type: ignore[attr-defined]


def _flow_control_reply(reply: bytes, headers: bytes) -> bytes | None:
    """The subject a status message asks us to answer: a flow-control request's reply, or the one
    named by a heartbeat that says the consumer stalled waiting for it; None for a plain heartbeat."""
    if reply:
        return reply
    i = headers.find(_STALLED)
    if i < 0:
        return None
    return headers[i + len(_STALLED):].split(b"\r\n", 1)[0].strip() or None


class ConsumersCapped(Exception):
    """The stream's consumer cap is reached: read without a consumer."""


def consumers_capped(exc: BaseException) -> bool:
    """Whether a consumer create failed because the stream has all the consumers it may have."""
    return isinstance(exc, APIError) and exc.err_code == _MAX_CONSUMERS


async def _batch(nc: NATS, filter_subject: str | None, seq: int,
                 timeout: float) -> tuple[list[tuple[int, str, bytes, bytes | None]], int]:
    """Up to BATCH stored messages on `filter_subject` from sequence `seq` on, by one batched direct get
    (no consumer), each with its holder proof header (or None), and how many more match after them."""
    got: list[tuple[int, str, bytes, bytes | None]] = []
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def on_msg(msg: Msg) -> None:
        h = msg.headers or {}
        status = h.get("Status")
        if status is None:
            proof = h.get("Ktrdr-Proof")
            got.append((int(h.get("Nats-Sequence", 0)), h.get("Nats-Subject", ""), msg.data,
                        proof.encode() if proof is not None else None))
        elif not done.done():  # 204 EOB (end of batch, with what is still pending) or 404 (none)
            done.set_result(int(h.get("Nats-Num-Pending", 0)) if status == "204" else 0)

    sub = await nc.subscribe(nc.new_inbox(), cb=on_msg)
    try:
        request: dict[str, object] = {"seq": seq, "batch": BATCH}
        if filter_subject is not None:  # (None: every message from `seq`, found by sequence alone)
            request["next_by_subj"] = filter_subject
        await nc.publish(subjects.direct_get_api(subjects.STREAM_OPS), json.dumps(request).encode(), reply=sub.subject)
        pending = await asyncio.wait_for(done, timeout)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return got, pending


async def _walk_one(nc: NATS, filter_subject: str | None, timeout: float,
                    seq: int = 1) -> AsyncGenerator[tuple[int, str, bytes, bytes | None], None]:
    while True:
        got, pending = await _batch(nc, filter_subject, seq, timeout)
        for item in got:
            yield item
        if not got or not pending:
            return
        seq = got[-1][0] + 1


async def _walk(js: JetStreamContext, filter_subjects: list[str],
                timeout: float) -> AsyncGenerator[tuple[str, bytes, bytes | None], None]:
    """Every stored OPS message matching the filters, in stream order, by batched direct gets: one walk
    per filter, merged by sequence (a message two filters match once), with its holder proof header."""
    async with contextlib.aclosing(walk_from(js, filter_subjects, 1, timeout)) as walk:
        async for _seq, subject, data, proof in walk:
            yield subject, data, proof


async def walk_tail(js: JetStreamContext, seq: int,
                    timeout: float = 10.0) -> AsyncGenerator[tuple[int, str, bytes, bytes | None], None]:
    """Every stored OPS message from stream sequence `seq` on, by sequence alone (no subject filter:
    a wildcard filter costs the server every subject it matches, so reading what came after a
    watermark by one would cost the history): (seq, subject, data, holder proof header)."""
    async with contextlib.aclosing(_walk_one(js._nc, None, timeout, seq)) as walk:
        async for item in walk:
            yield item


async def walk_from(js: JetStreamContext, filter_subjects: list[str], seq: int,
                    timeout: float = 10.0) -> AsyncGenerator[tuple[int, str, bytes, bytes | None], None]:
    """The stored OPS messages matching the filters from stream sequence `seq` on, in stream order,
    each with its sequence and holder proof header, by batched direct gets (no consumer: any reader
    key may): what the operations index reads after its watermark, and one operation's events."""
    nc: NATS = js._nc
    walks = [_walk_one(nc, f, timeout, seq) for f in filter_subjects]
    heap: list[tuple[int, int, str, bytes, bytes | None]] = []
    try:
        for i, w in enumerate(walks):
            if (first := await anext(w, None)) is not None:
                heapq.heappush(heap, (first[0], i, first[1], first[2], first[3]))
        last = 0
        while heap:
            seq, i, subject, data, proof = heapq.heappop(heap)
            if seq != last:
                last = seq
                yield seq, subject, data, proof
            if (nxt := await anext(walks[i], None)) is not None:
                heapq.heappush(heap, (nxt[0], i, nxt[1], nxt[2], nxt[3]))
    finally:
        for w in walks:
            await w.aclose()


class _PushRead:
    """One ephemeral push consumer over OPS and the sink its messages go to."""

    def __init__(self, js: JetStreamContext, filter_subjects: list[str],
                 on_msg: Callable[..., None], *, paced: bool, proofs: bool = False) -> None:
        self.js = js
        self.proofs = proofs  # on_msg(subject, data, proof): the holder proof header too
        self.nc: NATS = js._nc  # the connection behind the context; nats-py exposes no public accessor
        self.filters = filter_subjects
        self.on_msg = on_msg
        self.paced = paced  # answer flow control only when the consumer has caught up
        self.total: int | None = None
        self.delivered = 0  # data messages handed to on_msg
        self.consumed = 0  # paced: data messages the consumer has taken
        self.fc_due: list[tuple[int, bytes]] = []  # paced: (answer once consumed >= n, reply)
        self.error: BaseException | None = None
        self.changed = asyncio.Event()
        self.sub: Any = None
        self.info: js_api.ConsumerInfo | None = None

    def sink(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> bytes | None:
        # Once per stored event: kept to the few checks it needs.
        if not data and headers is not None and headers[_HDR_VERSION_LEN:_HDR_VERSION_LEN + 1] == b" ":
            return self._status(_flow_control_reply(reply, headers))
        self._data(subject.decode(), data, _proof_of(headers) if self.proofs else None)
        return None

    async def _public(self, msg: Msg) -> None:
        """The public path's callback: the same handling, from a Msg nats-py has parsed."""
        headers = msg.headers
        if not msg.data and headers is not None and headers.get("Status") == "100":  # flow control, heartbeat
            stalled = headers.get("Nats-Consumer-Stalled")
            answer = self._status(msg.reply.encode() if msg.reply else stalled.encode() if stalled else None)
            if answer:
                await self.nc.publish(answer.decode(), b"")
            return
        proof = (headers or {}).get("Ktrdr-Proof") if self.proofs else None
        self._data(msg.subject, msg.data, proof.encode() if proof is not None else None)

    def _status(self, answer: bytes | None) -> bytes | None:
        """The flow-control reply to send now (None: none, or not yet: paced and not caught up)."""
        if answer is not None and self.paced and self.consumed < self.delivered:
            if all(r != answer for _, r in self.fc_due):  # a stalled heartbeat repeats a request
                self.fc_due.append((self.delivered, answer))
            return None
        return answer

    def _data(self, subject: str, data: bytes, proof: bytes | None) -> None:
        total = self.total
        if self.error is not None or (total is not None and self.delivered >= total):
            return  # published after the read began, or the reader has already failed
        self.delivered += 1
        try:
            if self.proofs:
                self.on_msg(subject, data, proof)
            else:
                self.on_msg(subject, data)
        except BaseException as e:  # raised on the connection's reading task: hand it to the reader
            self.error = e
            self.changed.set()
            return
        if self.paced or (total is not None and self.delivered >= total):
            self.changed.set()

    async def start(self) -> bool:
        """Subscribe, then create the consumer; False when there is no OPS stream (nothing stored)."""
        if FAST_PATH:
            self.sub = await self.nc.subscribe(self.nc.new_inbox())
            _sinks(self.nc)[self.sub._id] = self.sink
        else:  # flow control bounds what is in flight, so the subscription's own limits are never reached
            self.sub = await self.nc.subscribe(self.nc.new_inbox(), cb=self._public)
        cfg = js_api.ConsumerConfig(
            deliver_subject=self.sub.subject,
            filter_subjects=self.filters if len(self.filters) > 1 else None,
            filter_subject=self.filters[0] if len(self.filters) == 1 else None,
            deliver_policy=js_api.DeliverPolicy.ALL,
            ack_policy=js_api.AckPolicy.NONE,
            flow_control=True,
            idle_heartbeat=5.0,
            mem_storage=True,
            inactive_threshold=10.0,
        )
        try:
            self.info = await retrying(lambda: self.js.add_consumer(subjects.STREAM_OPS, cfg))
        except NotFoundError:
            return False
        except APIError as exc:
            if consumers_capped(exc):
                raise ConsumersCapped(str(exc)) from exc
            raise
        # What the consumer holds for us: those it has already pushed (delivery starts before the
        # server answers, so num_pending alone misses them) plus those still pending.
        self.total = (self.info.delivered.consumer_seq or 0) + (self.info.num_pending or 0)
        if self.delivered >= self.total:
            self.changed.set()
        return True

    @property
    def done(self) -> bool:
        return self.total is not None and self.delivered >= self.total

    async def wait(self, timeout: float) -> None:
        """Until something changes; TimeoutError when nothing arrived for `timeout` seconds."""
        await asyncio.wait_for(self.changed.wait(), timeout)
        self.changed.clear()
        if self.error is not None:
            raise self.error

    async def caught_up(self) -> None:
        """Paced: answer the flow-control requests the consumer has now caught up with."""
        while self.fc_due and self.consumed >= self.fc_due[0][0]:
            await self.nc.publish(self.fc_due.pop(0)[1].decode(), b"")

    async def close(self) -> None:
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()
            _release(self.nc, self.sub._id)
        if self.info is not None:
            with contextlib.suppress(Exception):  # already gone (inactive_threshold) or server away
                await self.js.delete_consumer(subjects.STREAM_OPS, self.info.name)


async def read_events(
    js: JetStreamContext,
    filter_subjects: list[str],
    on_msg: Callable[..., None],
    *,
    timeout: float = 10.0,
    proofs: bool = False,
    linger: bool = False,
) -> int:
    """Call on_msg(subject, data) for every stored OPS message matching the filters, in stream
    order, as it arrives (on the connection's reading task: keep on_msg quick); return how many
    there were. An exception from on_msg stops the read and is raised here. TimeoutError only when
    delivery stalls for `timeout` seconds, however long the whole read takes. With `proofs`,
    on_msg(subject, data, proof) also gets the holder proof header (bytes, or None). With `linger`,
    the read returns once it has everything and its consumer is deleted after, in the background (a
    worker's check before it starts an operation: one round trip less on the way to `started`; a
    consumer whose delete is lost goes by its inactive_threshold)."""
    read = _PushRead(js, filter_subjects, on_msg, paced=False, proofs=proofs)
    try:
        try:
            if not await read.start():
                return 0  # no OPS stream yet: nothing was ever stored
        except ConsumersCapped:
            log.info("OPS has all the consumers it may have; reading by direct gets")
            n = 0
            async for subject, data, proof in _walk(js, filter_subjects, timeout):
                n += 1
                if proofs:
                    on_msg(subject, data, proof)
                else:
                    on_msg(subject, data)
            return n
        last = -1
        while not read.done:
            try:
                await read.wait(timeout)
            except TimeoutError:
                if read.delivered == last:
                    raise
                last = read.delivered
        if read.error is not None:
            raise read.error
        return read.delivered
    finally:
        if linger:
            task = asyncio.get_running_loop().create_task(read.close())
            _CLOSING.add(task)
            task.add_done_callback(_CLOSING.discard)
        else:
            await read.close()


_CLOSING: set[asyncio.Task[None]] = set()  # lingering reads' consumer deletes (held against the GC)


async def stream_events(
    js: JetStreamContext,
    filter_subjects: list[str],
    *,
    timeout: float = 10.0,
) -> AsyncIterator[tuple[str, bytes, bytes | None]]:
    """Every stored OPS message matching the filters, in stream order, at the consumer's pace:
    (subject, data, holder proof header or None). Memory is bounded by the server's flow-control
    window whatever the number of events. Close it (`contextlib.aclosing`) when leaving early."""
    pending: collections.deque[tuple[str, bytes, bytes | None]] = collections.deque()
    read = _PushRead(js, filter_subjects, lambda s, d, p: pending.append((s, d, p)), paced=True, proofs=True)
    try:
        try:
            if not await read.start():
                return
        except ConsumersCapped:
            log.info("OPS has all the consumers it may have; reading by direct gets")
            async with contextlib.aclosing(_walk(js, filter_subjects, timeout)) as walk:
                async for item in walk:
                    yield item
            return
        while pending or not read.done:
            if not pending:
                before = read.delivered
                try:
                    await read.wait(timeout)
                except TimeoutError:
                    if read.delivered == before:
                        raise
                continue
            item = pending.popleft()
            read.consumed += 1
            if read.fc_due:
                await read.caught_up()
            yield item
    finally:
        await read.close()


class ReadEvents(list[AnyEvent]):
    """Events read back in stream order, with how many messages were dropped on the way: undecodable,
    or a body that disagrees with its subject (events.codec.decode_event_on)."""

    dropped: int = 0
    first_dropped: str = ""
    unproven: int = 0  # held events no signature of the holder vouched for (ktrdr.ops.reader.read_proven)
    notes: tuple[str, ...] = ()  # set per instance by the reader that fills it


def _decoded(out: ReadEvents) -> Callable[[str, bytes], None]:
    def on_msg(subject: str, data: bytes) -> None:
        try:
            out.append(decode_event_on(subject, data))
        except DecodeError as exc:  # garbage, or a forgery, on an ops subject: not an event of this operation
            out.dropped += 1
            if not out.first_dropped:
                out.first_dropped = f"{subject[:120]}: {str(exc)[:300]}"

    return on_msg


async def read_operation(js: JetStreamContext, op_id: str) -> ReadEvents:
    """Every stored event of one operation, decoded against its subject (anything else dropped and
    counted), in stream order. It holds them all: to fold or render a long operation, stream it
    (read_events/stream_events)."""
    out = ReadEvents()
    await read_events(js, [subjects.ops(op_id)], _decoded(out))
    return out


async def last_seq(js: JetStreamContext, subject: str) -> int:
    """The stream sequence of the last stored message on one ops subject (asked of the stream's
    leader), 0 when there is none: a reader that compares two of these knows whether something was
    stored on it between, whatever it heard live."""
    try:
        raw = await retrying(lambda: js.get_last_msg(subjects.stream_of(subject), subject, direct=False),
                             errors=(nats.errors.TimeoutError, TimeoutError))
    except (NotFoundError, NoRespondersError):
        return 0
    return int(raw.seq or 0)


async def last_message(js: JetStreamContext, subject: str, *, from_leader: bool = False) -> bytes | None:
    """The last stored message on one ops subject (a direct get on the stream that stores it, OPS or
    OPS_CANCELS: one round trip), or None.

    A direct get (and a consumer) may be served by any replica, and one still catching up (a
    restarted cluster node) can lack the newest messages; `from_leader` asks the stream's leader,
    which has every message it acknowledged."""
    try:
        # "no responders" means no OPS stream at all here, so only a timeout is worth retrying
        stream = subjects.stream_of(subject)
        raw = await retrying(lambda: js.get_last_msg(stream, subject, direct=not from_leader),
                             errors=(nats.errors.TimeoutError, TimeoutError))
    except (NotFoundError, NoRespondersError):  # no such message, or no such stream (nobody answers)
        return None
    return raw.data or None
