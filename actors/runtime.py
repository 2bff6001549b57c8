"""The base Actor: everything every actor gets without repeating it.

- one NATS connection that reconnects, and the streams ensured on start;
- lifecycle hooks `on_start`, `on_stop`, `on_fault`;
- presence: a heartbeat in the ACTORS key-value bucket every `heartbeat_s` listing the operations
  it is working on;
- work: a durable pull consumer on `work.<domain>` shared by replicas; the ack deadline is extended
  while the work runs and the message is acked only once a terminal event is stored;
- the cancel broadcast (`ops.*.*.cancel`) feeding a per-operation CancellationToken;
- event publishing with `Nats-Msg-Id` (terminal events share one id per operation, so at most one
  is ever stored in the dedupe window, and the fold ignores anything after the first);
- malformed or unexpected messages logged, answered with an error event where an operation is known,
  and the actor keeps running;
- graceful drain on SIGTERM/SIGINT: stop taking work, let running work finish for a while, then
  hand it back to JetStream (nak) so a replica resumes it.

Request/reply handlers are declared with one line: `@handles("ib.bars", queue="ib")`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import threading
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.kv import KeyValue

from actors._jetstream import connect, ensure_streams, msg_id_headers, read_operation
from events import subjects
from events.codec import DecodeError, decode_work, encode, sniff_op_id
from events.messages import (
    ActorError,
    AnyCommand,
    CancelOperation,
    Context,
    Event,
    Heartbeat,
    OperationCancelled,
    OperationCompleted,
    OperationFailed,
    OperationProgress,
    OperationStarted,
    ProgressState,
)
from ktrdr.cancellation import CancellationToken
from ktrdr.config import Settings
from ktrdr.errors import KtrdrError, OperationCancelledError
from ktrdr.operations import fold_all

log = logging.getLogger(__name__)

_cancel_decoder = msgspec.json.Decoder(CancelOperation)
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def handles(subject: str, *, queue: str | None = None) -> Callable[[F], F]:
    """Declare a core request/reply (or plain) handler: `async def h(self, msg: Msg) -> None`."""

    def deco(fn: F) -> F:
        fn._ktrdr_handles = (subject, queue)  # type: ignore[attr-defined]
        return fn

    return deco


class OperationContext:
    """What a work handler sees of its operation: the command, its token, and progress/events out.

    `progress()` may be called from any thread (the trainer runs its loop in a worker thread)."""

    def __init__(self, actor: Actor, op_id: str, command: AnyCommand, token: CancellationToken,
                 attempt: int) -> None:
        self.actor = actor
        self.op_id = op_id
        self.domain = subjects.domain_of(op_id)
        self.command = command
        self.token = token
        self.attempt = attempt
        self.loop = asyncio.get_running_loop()
        self.last_progress: ProgressState | None = None

    def progress(self, progress: ProgressState | None = None, /, **fields: Any) -> None:
        state = progress if progress is not None else ProgressState(**fields)
        self.last_progress = state
        if threading.get_ident() == self.actor._loop_thread:
            self.actor.emit_progress(self.op_id, state)
        else:
            self.loop.call_soon_threadsafe(self.actor.emit_progress, self.op_id, state)

    def update(self, *, message: str | None = None, context: Context | None = None, **fields: Any) -> None:
        """Re-emit the last progress with some fields changed (e.g. a pacing wait in the context)."""
        base = self.last_progress or ProgressState()
        changes: dict[str, Any] = dict(fields)
        if message is not None:
            changes["message"] = message
        if context is not None:
            changes["context"] = context
        self.progress(msgspec.structs.replace(base, **changes))

    async def sleep(self, seconds: float, where: str) -> None:
        """Sleep, but wake at once on cancel and raise OperationCancelledError(where)."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.token.wait(), seconds)
        self.token.raise_if_cancelled(where)


class Actor:
    """Subclass, set `role` (and `work_domain` for workers), implement the hooks you need."""

    role: ClassVar[str] = "actor"
    work_domain: ClassVar[str | None] = None
    max_concurrency: ClassVar[int] = 1

    def __init__(self, settings: Settings, *, url: str | None = None, actor_id: str | None = None) -> None:
        self.settings = settings
        self.url = url
        self.id = actor_id or f"{self.role}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self.kv: KeyValue | None = None
        self.started_at = datetime.now(UTC)
        self.tokens: dict[str, CancellationToken] = {}
        self._recent_cancels: OrderedDict[str, CancelOperation] = OrderedDict()
        self._work_msgs: dict[str, Msg] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._work_tasks: set[asyncio.Task[Any]] = set()
        self._bg: list[asyncio.Task[Any]] = []
        self._seq = 0
        self._outbox: deque[tuple[str, bytes, dict[str, str]]] = deque()
        self._outbox_wake = asyncio.Event()
        self._progress_subjects: dict[str, str] = {}
        self._outbox_idle = asyncio.Event()
        self._outbox_idle.set()
        self._ack_inbox = ""
        self._acks_pending = 0  # progress publishes whose PubAck has not come back yet
        self._acks_room = asyncio.Event()
        self._acks_room.set()
        self._acks_all = asyncio.Event()
        self._acks_all.set()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._loop_thread = threading.get_ident()
        self.log = logging.getLogger(f"ktrdr.{self.role}")

    # ------------------------------------------------------------------ lifecycle hooks
    async def on_start(self) -> None:
        """Called once connected, before any message is taken."""

    async def on_stop(self) -> None:
        """Called while stopping, after work has drained."""

    async def on_fault(self, exc: BaseException, where: str) -> None:
        """Called for an unexpected exception; the actor keeps running."""
        self.log.error("fault in %s: %s", where, exc, exc_info=exc)

    async def handle(self, op: OperationContext) -> dict[str, Any]:
        """Do the work of one operation and return its result. Raise KtrdrError to fail it,
        OperationCancelledError (e.g. via op.token.raise_if_cancelled) when cancelled."""
        raise NotImplementedError

    async def on_cancel_request(self, op_id: str, cancel: CancelOperation) -> None:
        """Every actor sees every cancel; the orchestrator overrides this to handle queued work."""

    # ------------------------------------------------------------------ start/stop
    async def start(self) -> None:
        self._loop_thread = threading.get_ident()
        self.nc = await connect(self.settings, self.id, url=self.url,
                                disconnected_cb=self._on_disconnected, reconnected_cb=self._on_reconnected,
                                error_cb=self._on_error)
        self.js = self.nc.jetstream()
        await ensure_streams(self.js, self.settings)
        self.kv = await self.js.key_value(subjects.ACTORS_BUCKET)
        self._ack_inbox = self.nc.new_inbox()
        await self.nc.subscribe(self._ack_inbox, cb=self._on_progress_ack)
        await self.nc.subscribe(subjects.CANCEL_ALL, cb=self._on_cancel_msg)
        for name in dir(type(self)):
            fn = getattr(self, name, None)
            spec = getattr(fn, "_ktrdr_handles", None)
            if spec:
                await self.nc.subscribe(spec[0], queue=spec[1] or "", cb=self._guard(fn, spec[0]))
        self._bg.append(asyncio.create_task(self._publisher(), name=f"{self.id}-publisher"))
        await self.on_start()
        await self._heartbeat()
        self._bg.append(asyncio.create_task(self._heartbeat_loop(), name=f"{self.id}-heartbeat"))
        if self.work_domain:
            self._bg.append(asyncio.create_task(self._work_loop(), name=f"{self.id}-work"))
        self.log.info("%s started (%s)", self.id, self.nc.connected_url.netloc if self.nc.connected_url else "?")

    async def stop(self, *, drain: bool = True) -> None:
        """Stop taking work; let running work finish for drain_timeout_s; then hand it back."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        for t in self._bg:
            if t.get_name().endswith("-work"):
                t.cancel()
        if self._work_tasks and drain:
            _done, pending = await asyncio.wait(self._work_tasks, timeout=self.settings.drain_timeout_s)
            for op_id, token in list(self.tokens.items()):
                token.cancel("worker shutting down", requested_by="shutdown")
                self.log.info("handing %s back for redelivery", op_id)
            if pending:
                await asyncio.wait(pending, timeout=max(self.settings.drain_timeout_s, 5.0))
        for t in list(self._work_tasks):
            t.cancel()
        with contextlib.suppress(Exception):
            await self.on_stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush_progress(acked=True), 2.0)
        for t in self._bg:
            t.cancel()
        if self.kv is not None and self.nc is not None and self.nc.is_connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.kv.delete(subjects.heartbeat_key(self.role, self.id)), 1.0)
        if self.nc is not None:
            # Flush, not drain: work still pending in our subscriptions is redelivered by JetStream,
            # and nats-py's drain waits forever on a pull subscription whose fetch was cancelled.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.flush(), 2.0)
            with contextlib.suppress(Exception):
                await self.nc.close()
        self._stopped.set()

    async def kill(self) -> None:
        """Drop everything without draining (tests: a worker that dies)."""
        self._stopping = True
        for t in [*self._bg, *self._work_tasks]:
            t.cancel()
        for token in self.tokens.values():
            token.cancel("killed", requested_by="shutdown")
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        self._stopped.set()

    # ------------------------------------------------------------------ NATS callbacks
    async def _on_disconnected(self) -> None:
        if self._stopping:
            return  # our own close
        self.log.warning("%s disconnected from NATS; reconnecting", self.id)

    async def _on_reconnected(self) -> None:
        self._acks_lost()  # acks of publishes sent before the disconnect will not come
        self.log.info("%s reconnected to NATS", self.id)

    async def _on_error(self, exc: Exception) -> None:
        self.log.debug("NATS error: %s", exc)

    def _guard(self, fn: Callable[[Msg], Awaitable[None]], where: str) -> Callable[[Msg], Awaitable[None]]:
        async def wrapped(msg: Msg) -> None:
            try:
                await fn(msg)
            except Exception as exc:
                await self.on_fault(exc, where)

        return wrapped

    # ------------------------------------------------------------------ publishing
    def _next_msg_id(self, op_id: str) -> tuple[int, str]:
        self._seq += 1
        return self._seq, f"{op_id}.{self.id}.{self._seq}"

    async def publish_event(self, event: Event, name: str) -> None:
        """Store a lifecycle event (awaited: it is in the stream when this returns)."""
        assert self.js is not None
        await self.flush_progress()  # keep stream order: earlier progress is sent first
        seq, msg_id = self._next_msg_id(event.op_id)
        event.actor, event.seq = self.id, seq
        if isinstance(event, OperationCompleted | OperationFailed | OperationCancelled):
            msg_id = f"{event.op_id}.terminal"
        elif name in ("created", "rejected"):
            msg_id = f"{event.op_id}.{name}" if name == "created" else f"{event.op_id}.terminal"
        await self.js.publish(subjects.ops(event.op_id, name), encode(event), headers=msg_id_headers(msg_id))

    def emit_progress(self, op_id: str, state: ProgressState) -> None:
        """Queue a progress event; one publisher task sends the queue in order with publish_async
        (no per-event task, no per-event round trip)."""
        if self.js is None or self._stopped.is_set():
            return
        seq, msg_id = self._next_msg_id(op_id)
        ev = OperationProgress(op_id=op_id, actor=self.id, seq=seq, progress=state)
        subject = self._progress_subjects.get(op_id)
        if subject is None:
            subject = self._progress_subjects[op_id] = subjects.ops(op_id, "progress")
            if len(self._progress_subjects) > 10_000:
                self._progress_subjects.clear()
        self._outbox.append((subject, encode(ev), {"Nats-Msg-Id": msg_id}))
        self._outbox_idle.clear()
        self._outbox_wake.set()

    # Progress goes out as JetStream publishes with one shared reply inbox: the server's PubAcks are
    # counted (and errors logged) instead of each becoming a future with its own inbox token and a JSON
    # parse, which is what nats-py's publish_async spends most of its time on. At most
    # MAX_PENDING_ACKS are outstanding; acks lost to a reconnect are written off after ACK_TIMEOUT_S.
    MAX_PENDING_ACKS: ClassVar[int] = 4000
    ACK_TIMEOUT_S: ClassVar[float] = 5.0

    async def _on_progress_ack(self, msg: Msg) -> None:
        data = msg.data
        if not data or b'"error"' in data:  # empty: a status (503 no responders) in the headers
            status = (msg.headers or {}).get("Status", "")
            log.warning("%s: a progress event was not stored: %s", self.id, data.decode() or f"status {status}")
        self._ack_received()

    def _ack_received(self) -> None:
        if self._acks_pending > 0:
            self._acks_pending -= 1
        if self._acks_pending < self.MAX_PENDING_ACKS:
            self._acks_room.set()
        if self._acks_pending == 0:
            self._acks_all.set()

    def _acks_lost(self) -> None:
        self._acks_pending = 0
        self._acks_room.set()
        self._acks_all.set()

    async def _publisher(self) -> None:
        assert self.nc is not None
        nc, inbox = self.nc, self._ack_inbox
        while True:
            await self._outbox_wake.wait()
            self._outbox_wake.clear()
            while self._outbox:
                subject, payload, headers = self._outbox.popleft()
                if self._acks_pending >= self.MAX_PENDING_ACKS:
                    self._acks_room.clear()
                    try:
                        await asyncio.wait_for(self._acks_room.wait(), self.ACK_TIMEOUT_S)
                    except TimeoutError:
                        self._acks_lost()
                try:
                    self._acks_pending += 1
                    self._acks_all.clear()
                    await nc.publish(subject, payload, reply=inbox, headers=headers)
                except Exception as exc:  # server away: progress is best effort, lifecycle is not
                    self._ack_received()
                    log.debug("progress publish failed: %s", exc)
            self._outbox_idle.set()

    async def flush_progress(self, *, acked: bool = False) -> None:
        """Wait until every queued progress event has been handed to the connection; with acked=True,
        also until the server has acknowledged storing them (or ACK_TIMEOUT_S passed without a word)."""
        await self._outbox_idle.wait()
        if acked and self._acks_pending:
            try:
                await asyncio.wait_for(self._acks_all.wait(), self.ACK_TIMEOUT_S)
            except TimeoutError:
                self._acks_lost()

    async def report_error(self, op_id: str | None, error: str, subject: str) -> None:
        """A malformed/unexpected message: log it; record an error event when the op is known."""
        self.log.warning("%s: %s", subject, error)
        if op_id and subjects.is_op_id(op_id):
            with contextlib.suppress(Exception):
                await self.publish_event(ActorError(op_id=op_id, error=error, subject=subject), "error")

    # ------------------------------------------------------------------ presence
    async def _heartbeat(self, stopping: bool = False) -> None:
        if self.kv is None:
            return
        hb = Heartbeat(actor=self.id, role=self.role, domain=self.work_domain or "", host=socket.gethostname(),
                       pid=os.getpid(), started=self.started_at, busy=list(self.tokens),
                       interval_s=self.settings.heartbeat_s, stopping=stopping)
        await self.kv.put(subjects.heartbeat_key(self.role, self.id), encode(hb))

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            try:
                await self._heartbeat()
                for msg in list(self._work_msgs.values()):
                    await msg.in_progress()  # extend the ack deadline of long work
            except Exception as exc:  # server away: the connection reconnects; keep beating
                self.log.debug("heartbeat failed: %s", exc)

    # ------------------------------------------------------------------ cancellation
    async def _on_cancel_msg(self, msg: Msg) -> None:
        parsed = subjects.parse_ops_subject(msg.subject)
        op_id = parsed[1] if parsed else ""
        try:
            cancel = _cancel_decoder.decode(msg.data)
        except DecodeError as exc:
            if self.role == "orchestrator":  # one actor answers; every actor logs
                await self.report_error(op_id, f"malformed cancel request ignored: {exc}", msg.subject)
            else:
                self.log.warning("malformed cancel on %s ignored: %s", msg.subject, exc)
            return
        if cancel.op_id != op_id:
            self.log.warning("cancel on %s names another operation (%s); ignored", msg.subject, cancel.op_id)
            return
        self._recent_cancels[op_id] = cancel
        while len(self._recent_cancels) > 1000:
            self._recent_cancels.popitem(last=False)
        token = self.tokens.get(op_id)
        if token is not None:
            token.cancel(cancel.reason, cancel.requested_by)
        try:
            await self.on_cancel_request(op_id, cancel)
        except Exception as exc:
            await self.on_fault(exc, "cancel")

    # ------------------------------------------------------------------ work
    def consumer_config(self) -> js_api.ConsumerConfig:
        assert self.work_domain
        return js_api.ConsumerConfig(
            durable_name=f"work-{self.work_domain}",
            filter_subject=subjects.work(self.work_domain),
            ack_policy=js_api.AckPolicy.EXPLICIT,
            ack_wait=self.settings.worker_timeout_s,
            max_deliver=self.settings.max_deliver,
            max_ack_pending=1000,
        )

    async def _work_loop(self) -> None:
        assert self.js is not None and self.work_domain
        cfg = self.consumer_config()
        await self.js.add_consumer(subjects.STREAM_WORK, cfg)
        psub = await self.js.pull_subscribe_bind(durable=cfg.durable_name, stream=subjects.STREAM_WORK)
        slots = asyncio.Semaphore(self.max_concurrency)
        while not self._stopping:
            await slots.acquire()
            try:
                msgs = await psub.fetch(1, timeout=5.0)
            except TimeoutError:
                slots.release()
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # server restarting: retry shortly
                slots.release()
                self.log.debug("fetch failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            task = asyncio.create_task(self._run_work(msgs[0]))
            self._work_tasks.add(task)

            def done(t: asyncio.Task[Any]) -> None:
                self._work_tasks.discard(t)
                slots.release()

            task.add_done_callback(done)

    async def _run_work(self, msg: Msg) -> None:
        try:
            item = decode_work(msg.data)
            if item.op_id != item.command.op_id or subjects.domain_of(item.op_id) != self.work_domain:
                raise DecodeError(f"work item for {item.op_id} does not belong on {msg.subject}")
        except (DecodeError, ValueError) as exc:
            await self.report_error(sniff_op_id(msg.data), f"malformed work item dropped: {exc}", msg.subject)
            await msg.term()
            return
        op_id = item.op_id
        attempt = msg.metadata.num_delivered or 1
        assert self.js is not None
        view = fold_all(await read_operation(self.js, op_id, lifecycle_only=True))
        if view.terminal:
            self.log.info("%s is already %s; dropping its work item", op_id, view.status)
            await msg.ack()
            return
        token = CancellationToken()
        self.tokens[op_id] = token
        recorded = self._recent_cancels.get(op_id)
        if view.cancel_requested or recorded is not None:
            token.cancel(recorded.reason if recorded else "cancel requested")
        self._work_msgs[op_id] = msg
        ctx = OperationContext(self, op_id, item.command, token, attempt)
        handed_back = False
        try:
            if token.is_cancelled:
                raise OperationCancelledError("queued, before it started", token.reason)
            await self.publish_event(OperationStarted(
                op_id=op_id, worker=self.id, attempt=attempt, resumed=attempt > 1,
                message=f"picked up again by {self.id} (attempt {attempt})" if attempt > 1 else ""), "started")
            result = await self.handle(ctx)
            await self.publish_event(OperationCompleted(op_id=op_id, result=result or {}), "completed")
        except OperationCancelledError as exc:
            if token.requested_by == "shutdown":
                handed_back = True
                ctx.progress(msgspec.structs.replace(
                    ctx.last_progress or ProgressState(),
                    message=f"worker {self.id} stopping at {exc.where}; handed back for redelivery"))
            else:
                where = exc.where
                await self.publish_event(OperationCancelled(
                    op_id=op_id, where=where, reason=token.reason or exc.reason,
                    message=self.cancelled_message(ctx, where)), "cancelled")
        except KtrdrError as exc:
            await self.publish_event(OperationFailed(op_id=op_id, error=str(exc), error_code=exc.code), "failed")
        except asyncio.CancelledError:
            handed_back = True  # killed: leave the message unacked so JetStream redelivers it
            raise
        except Exception as exc:
            await self.on_fault(exc, f"work {op_id}")
            await self.publish_event(OperationFailed(
                op_id=op_id, error=f"internal error in {self.role}: {type(exc).__name__}: {exc}",
                error_code="internal"), "failed")
        finally:
            self.tokens.pop(op_id, None)
            self._work_msgs.pop(op_id, None)
            with contextlib.suppress(Exception):
                await self._heartbeat()  # presence shows it idle now, not a second later
            with contextlib.suppress(Exception):
                if handed_back:
                    if not self._stopped.is_set() and self.nc is not None and self.nc.is_connected:
                        await msg.nak()
                else:
                    await msg.ack()

    def cancelled_message(self, op: OperationContext, where: str) -> str:
        return f"Operation cancelled at {where}" if where else "Operation cancelled"


async def run_actors(actors: list[Actor], *, stop: asyncio.Event | None = None) -> None:
    """Start the actors and run until SIGTERM/SIGINT (or `stop`), then drain them."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    for a in actors:
        while True:
            try:
                await a.start()
                break
            except Exception as exc:  # server not up yet: keep trying, as a supervisor would
                log.warning("%s could not start (%s); retrying in 1 s", a.role, exc)
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                    return
                except TimeoutError:
                    continue
    await stop.wait()
    await asyncio.gather(*(a.stop() for a in actors), return_exceptions=True)
