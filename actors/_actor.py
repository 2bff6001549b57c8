"""The base Actor: a connection, lifecycle hooks, presence, the cancel broadcast, typed request
handlers and (for workers) the work runner. Each piece lives in its own module; this class wires
them and holds the hooks a subclass overrides:

- `on_start` / `on_stop` / `on_fault(exc, where)`: lifecycle;
- `handle(op) -> result`: a worker's operation (work_domain set);
- `on_cancel_request(op_id, cancel)`: every actor sees every cancel (the orchestrator ends queued
  work, the ib actor cancels in-flight requests);
- `on_malformed_cancel(op_id, subject, error)`: only the orchestrator answers those with an event (a
  flood is counted: the hook is called at most once per operation per malformed_cancel_every_s, and
  at most MALFORMED_REPORTS_PER_WINDOW times per window for all operations together, its error
  saying how many it stands for);
- `cancelled_message(op, where)`: the words of a worker's `cancelled` event;
- `pools()`: the work pools a worker joins;
- `reply_for_error(exc, text)`: the reply to a request whose handler raised (or that was malformed).
Request/reply handlers are one line: `@handles(IbBarsRequest, queue="ib")` on
`async def bars(self, req: IbBarsRequest, call: Call) -> IbReply`, or for any other subject
`@handles(EchoRequest, subject="svc.echo")` on `async def echo(self, req: EchoRequest) -> EchoReply`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from actors import _metrics
from actors._discovery import Discovery, Endpoint
from actors._presence import Presence
from actors._publisher import EventPublisher
from actors._requests import Call, RequestHandler, request_handlers
from actors._work import OperationContext, WorkRunner
from events import proof, roles, subjects
from events.codec import DecodeError, decode_event_on
from events.messages import ActorError, CancelOperation, CancelRequested, Event, Message, ProgressState
from events.roles import actor_id_prefix
from ktrdr import tracing
from ktrdr.config import Settings
from ktrdr.errors import KtrdrError
from ktrdr.transport import check_streams, connect, ensure_streams

log = logging.getLogger(__name__)
# However many operations a flood of malformed cancels names, the hook answers at most this many of
# them per window (the rest are counted and logged in one line): one ActorError per named operation
# would let a flood over many (made-up) op ids write as many events into OPS.
MALFORMED_REPORTS_PER_WINDOW = 20


def dedupe_key_path(settings: Settings, role: str) -> Path:
    """Where a role keeps its lasting dedupe key when it has no NKEY seed to derive it from."""
    return settings.home / f"{role}.dedupe-key"


def lasting_dedupe_key(settings: Settings, role: str) -> bytes:
    """A dedupe key that outlives the process (the orchestrator's: a restarted one still dedupes what
    it published before): derived from the role's NKEY seed when it has one, else from a 0600 file of
    its own in KTRDR_HOME, made at the first start."""
    try:
        opts = settings.connect_options(role)
    except KtrdrError:
        opts = {}
    seed: str | None = opts.get("nkeys_seed_str")
    if seed is None and opts.get("nkeys_seed"):
        seed = Path(opts["nkeys_seed"]).read_text().strip()
    if seed:
        return subjects.derived_dedupe_key(seed.encode())
    path = dedupe_key_path(settings, role)
    settings.home.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(subjects.DEDUPE_KEY_BYTES))
    return subjects.derived_dedupe_key(path.read_bytes().strip())


class Actor:
    """Subclass, set `role` (and `work_domain` for workers), implement the hooks you need."""

    role: ClassVar[str] = "actor"
    work_domain: ClassVar[str | None] = None
    max_concurrency: ClassVar[int] = 1
    provisions: ClassVar[bool] = False  # creates the streams and buckets (the orchestrator); others bind

    def __init__(self, settings: Settings, *, url: str | list[str] | None = None, actor_id: str | None = None) -> None:
        self.settings = settings
        self.url = url or settings.nats_url
        self.id = actor_id or f"{actor_id_prefix(self.role)}{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self.started_at = datetime.now(UTC)
        self.log = logging.getLogger(f"ktrdr.{self.role}")
        self.recent_cancels: OrderedDict[str, CancelOperation | CancelRequested] = OrderedDict()
        self.dropped_cancels = 0  # messages on a cancel subject that were not a well-formed cancel of it
        # malformed cancels: op id -> (when last reported, how many since); the window's report count
        self._malformed: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._malformed_window = (0.0, 0, 0)  # (window start, reports in it, suppressed beyond them)
        # The ids this actor publishes with (events.subjects.MsgIds): keyed with its own dedupe key,
        # random per process; the orchestrator's outlives it (set in start).
        self.ids = subjects.MsgIds(subjects.new_dedupe_key())
        self.work: WorkRunner | None = None
        self.publisher: EventPublisher | None = None
        # This process's own key (the holder proof, events/proof.py): made here, never stored; its
        # public half travels in the lease grant, and the fold counts our held events only signed by it.
        self.key = proof.new_key()
        self.public_key = proof.public_key(self.key)
        self.presence: Presence | None = None
        self.served_pools: list[str] = []  # the pools a request/reply service answers in
        # The NATS services instance (`$SRV.PING|INFO|STATS`): counters of what this actor handles.
        self.discovery = Discovery(self)
        self.metrics_url = ""  # where this process serves /metrics (actors/_metrics.py), "" when off
        self._bg: list[asyncio.Task[Any]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._stopped = asyncio.Event()

    # ------------------------------------------------------------------ hooks
    async def on_start(self) -> None:
        """Called once connected, before any message is taken."""

    async def on_stop(self) -> None:
        """Called while stopping, after work has drained."""

    async def on_connection_lost(self) -> None:
        """Called when the connection to NATS drops (nats-py is reconnecting)."""

    async def on_connection_back(self) -> None:
        """Called when the connection to NATS is back, before the streams are re-ensured."""

    async def on_fault(self, exc: BaseException, where: str) -> None:
        """Called for an unexpected exception; the actor keeps running."""
        self.log.error("fault in %s: %s", where, exc, exc_info=exc)

    async def handle(self, op: OperationContext) -> dict[str, Any]:
        """Do the work of one operation and return its result. Raise KtrdrError to fail it,
        OperationCancelledError (e.g. via op.token.raise_if_cancelled) when cancelled."""
        raise NotImplementedError

    async def on_cancel_request(self, op_id: str, cancel: CancelOperation | CancelRequested) -> None:
        """Every actor sees every cancel; override to act on it beyond tripping a running op's token."""

    async def on_malformed_cancel(self, op_id: str, subject: str, error: str) -> None:
        self.log.warning("malformed cancel on %s ignored: %s", subject, error)

    def cancelled_message(self, op: OperationContext, where: str) -> str:
        return f"Operation cancelled at {where}" if where else "Operation cancelled"

    def reply_for_error(self, exc: BaseException, text: str | None) -> Message | None:
        """The reply to a request that failed: `text` says what was wrong with a malformed request
        (exc is the decode error), else `exc` is what the handler raised. None, the default, answers
        with NATS's service-error headers (Nats-Service-Error, Nats-Service-Error-Code 400 or 500) and
        Ktrdr-Error-Code (the KtrdrError's code, "validation" or "internal") on an empty body; an actor
        whose callers expect its own reply type overrides it (the ib actor answers an IbReply)."""
        if text is None and not isinstance(exc, KtrdrError):
            self.log.error("%s: request handler error: %s", self.id, exc, exc_info=exc)
        return None

    def presence_state(self) -> str:
        """One line about this actor's own link, shown by `ktrdr status` (the ib actor: its gateway)."""
        return ""

    def pools(self) -> list[str]:
        """The work pools this worker takes work from (always including the default pool)."""
        pools = [p for p in self.settings.pools if subjects.is_token(p)]
        return list(dict.fromkeys([*pools, subjects.DEFAULT_POOL]))

    # ------------------------------------------------------------------ start/stop
    async def start(self) -> None:
        """Connect and start everything; on failure leave nothing running, so start() can be retried."""
        try:
            await self._start()
        except BaseException:
            await self._abort_start()
            raise

    async def _abort_start(self) -> None:
        _metrics.leave(self)
        if self.work is not None:
            self.work.stop_taking()
        if self.publisher is not None:
            self.publisher.close()
        for t in self._bg:
            t.cancel()
        self._bg.clear()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        self.nc = self.js = self.work = self.publisher = self.presence = None

    async def _start(self) -> None:
        if not self.url:
            raise RuntimeError(f"{self.role}: no NATS URL (set NATS_URL or pass url=)")
        tracing.setup(self.role, self.settings.home)  # on only with OTEL_TRACES_EXPORTER (ktrdr/tracing.py)
        self.nc = await connect(self.url, self.settings, self.id, role=self.role, disconnected_cb=self._on_disconnected,
                                reconnected_cb=self._on_reconnected, error_cb=self._on_error)
        self.js = self.nc.jetstream()
        if self.provisions:
            await ensure_streams(self.js, self.settings, upgrade=True)
            self.ids = subjects.MsgIds(await asyncio.to_thread(lasting_dedupe_key, self.settings, self.role))
        else:
            await check_streams(self.js)  # not there yet: start() fails and is tried again
        self.publisher = EventPublisher(self.nc, self.js, self.id, self.ids.key, key=self.key,
                                        orchestrator=self.role == roles.ORCHESTRATOR)
        await self.publisher.start()
        # The users' cancels; and, but for the orchestrator (whose own they are), its records of the
        # cancels it honoured or made itself (deadline, parent), on a subject only it publishes on.
        followed = subjects.CANCELS_FOLLOWED if self.role != roles.ORCHESTRATOR else (subjects.CANCEL_ALL,)
        for subject in followed:
            name = "cancel" if subject == subjects.CANCEL_ALL else "cancel-records"
            await self.nc.subscribe(subject, cb=self._guard(
                self.discovery.counted(name, subject, self._on_cancel_msg), "cancel"))
        handlers = request_handlers(self)
        self.served_pools = self.pools() if handlers else []
        for spec, fn in handlers:
            # a service serves the pools it joins (the default one at least), or its one subject
            served = spec.subjects_for(self.served_pools)
            for subject in served:
                # one endpoint per subject: a handler served per pool is `<handler>-<pool>`
                pool = subject.rsplit(".", 1)[-1]
                name = fn.__name__ if isinstance(spec.subject_of, str) else f"{fn.__name__}-{pool}"
                endpoint = self.discovery.endpoint(name, subject, spec.queue or "",
                                                   request=spec.request_type.__name__)
                await self.nc.subscribe(subject, queue=spec.queue or "", cb=self._guard(
                    self._request_cb(spec, fn, endpoint), subject))
        if self.work_domain:
            self.work = WorkRunner(self, self.work_domain, self.pools(), self.max_concurrency)
        await self.on_start()
        if self.work is not None:
            await self.work.start()
        await self.discovery.start()
        self.metrics_url = await asyncio.to_thread(_metrics.serve, self)
        # Presence last: a heartbeat says this actor serves (`ktrdr up` waits for it).
        self.presence = Presence(self, await self.js.key_value(subjects.ACTORS_BUCKET))
        await self.presence.beat()
        self._bg.append(asyncio.create_task(self.presence.loop(), name=f"{self.id}-presence"))
        self.log.info("%s started (%s)", self.id, self.nc.connected_url.netloc if self.nc.connected_url else "?")

    async def stop(self, *, drain: bool = True) -> None:
        """Stop taking work; let running work finish for drain_timeout_s; then hand it back."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        if self.work is not None:
            self.work.stop_taking()
            if self.work.tasks and drain:
                _done, pending = await asyncio.wait(self.work.tasks, timeout=self.settings.drain_timeout_s)
                # to stop and hand the work back (asking again while no orchestrator answers)
                wait = self.work.shut_down(max(self.settings.drain_timeout_s, 5.0))
                if pending:
                    await asyncio.wait(pending, timeout=wait)
            for t in list(self.work.tasks):
                t.cancel()
        with contextlib.suppress(Exception):
            await self.on_stop()
        if self.publisher is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.publisher.flush(acked=True), 2.0)
            self.publisher.close()
        for t in self._bg:
            t.cancel()
        if self.presence is not None and self.nc is not None and self.nc.is_connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.presence.leave(), 1.0)
        if self.nc is not None:
            # Flush, not drain: work still pending in our subscriptions is redelivered by JetStream,
            # and nats-py's drain waits forever on a pull subscription whose fetch was cancelled.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.flush(), 2.0)
            with contextlib.suppress(Exception):
                await self.nc.close()
        _metrics.leave(self)
        self._stopped.set()

    async def kill(self) -> None:
        """Drop everything without draining (tests: a worker that dies)."""
        self._stopping = True
        if self.work is not None:
            self.work.cancel_all("killed", "shutdown")  # threads of this actor stop as a dead process's would
        tasks = [*self._bg, *(self.work.tasks if self.work else ()), *(self.work._loops if self.work else ())]
        for t in tasks:
            t.cancel()
        if self.publisher is not None:
            self.publisher.close()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        _metrics.leave(self)
        self._stopped.set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def spawn(self, coro: Awaitable[Any], name: str | None = None) -> asyncio.Task[Any]:
        """A background task the actor keeps a reference to (and cancels on stop)."""
        task = asyncio.ensure_future(coro)
        if name:
            task.set_name(name)
        self._bg.append(task)
        return task

    # ------------------------------------------------------------------ NATS callbacks
    async def _on_disconnected(self) -> None:
        if not self._stopping:
            self.log.warning("%s disconnected from NATS; reconnecting", self.id)
        await self.on_connection_lost()

    async def _on_reconnected(self) -> None:
        if self.publisher is not None:
            self.publisher.acks_lost()  # acks of publishes sent before the disconnect will not come
        self.log.info("%s reconnected to NATS", self.id)
        await self.on_connection_back()
        if self.provisions and self.js is not None:  # a server that lost its store gets it back
            self.spawn(self._reprovision(), name=f"{self.id}-reprovision")

    async def _reprovision(self) -> None:
        assert self.js is not None
        try:
            await ensure_streams(self.js, self.settings, upgrade=True)
        except Exception as exc:
            self.log.warning("could not ensure the streams after reconnecting: %s", exc)

    async def _on_error(self, exc: Exception) -> None:
        self.log.debug("NATS error: %s", exc)

    def _guard(self, fn: Callable[[Msg], Awaitable[None]], where: str) -> Callable[[Msg], Awaitable[None]]:
        async def wrapped(msg: Msg) -> None:
            try:
                await fn(msg)
            except Exception as exc:
                await self.on_fault(exc, where)

        return wrapped

    def _request_cb(self, spec: RequestHandler, fn: Callable[..., Awaitable[Message]],
                    endpoint: Endpoint) -> Callable[[Msg], Awaitable[None]]:
        async def served(msg: Msg) -> None:
            t0 = time.perf_counter_ns()
            error = await spec.serve(self, fn, Call(self, msg))
            endpoint.record(time.perf_counter_ns() - t0, error)

        async def cb(msg: Msg) -> None:
            # Callbacks of one subscription run one at a time: serve each request in its own task so
            # requests overlap.
            task = asyncio.create_task(served(msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return cb

    # ------------------------------------------------------------------ events out
    async def publish_event(self, event: Event) -> Event:
        """Store a lifecycle event (awaited: it is in the stream when this returns); the event as
        published (an orchestrator's verdict as its orchestrator-only version)."""
        assert self.publisher is not None
        return await self.publisher.publish(event)

    def emit_progress(self, op_id: str, state: ProgressState, attempt: int = 0) -> None:
        """Queue a progress event of `attempt` (no round trip; published in order by one task)."""
        if self.publisher is not None and not self._stopped.is_set():
            self.publisher.progress(op_id, state, attempt)

    async def flush_progress(self, *, acked: bool = False) -> None:
        if self.publisher is not None:
            await self.publisher.flush(acked=acked)

    async def report_error(self, op_id: str | None, error: str, subject: str) -> None:
        """A malformed/unexpected message: log it; record an error event when the op is known."""
        self.log.warning("%s: %s", subject, error)
        if op_id and subjects.is_op_id(op_id):
            with contextlib.suppress(Exception):
                await self.publish_event(ActorError(op_id=op_id, error=error[:2000], subject=subject[:200]))

    def busy(self) -> list[str]:
        return self.work.busy if self.work is not None else []

    # ------------------------------------------------------------------ cancellation
    async def _on_cancel_msg(self, msg: Msg) -> None:
        parsed = subjects.parse_ops_subject(msg.subject)
        op_id = parsed[1] if parsed else ""
        try:  # the one decode path: a cancel subject carries a CancelOperation of its own operation only
            cancel = decode_event_on(msg.subject, msg.data)
            if not isinstance(cancel, CancelOperation | CancelRequested) or not subjects.is_op_id(op_id):
                raise DecodeError(f"{msg.subject[:120]} is no operation's cancel subject")
        except DecodeError as exc:  # an OperationCompleted body, another op's id, a hand-back reason code
            self.dropped_cancels += 1
            await self._malformed_cancel(op_id, msg.subject, str(exc))
            return
        self.recent_cancels[op_id] = cancel
        while len(self.recent_cancels) > 1000:
            self.recent_cancels.popitem(last=False)
        if self.work is not None:
            self.work.on_cancel(cancel)
        await self.on_cancel_request(op_id, cancel)

    async def _malformed_cancel(self, op_id: str, subject: str, error: str) -> None:
        """Count a malformed cancel; call the hook for it unless this operation was reported within
        malformed_cancel_every_s or the window's reports are spent (then only a log line, counted)."""
        now = time.monotonic()
        every = self.settings.malformed_cancel_every_s
        last, since = self._malformed.get(op_id, (-float("inf"), 0))
        start, reports, suppressed = self._malformed_window
        if now - start >= every:
            if suppressed:
                self.log.warning("%d more malformed cancels not reported in the last %.0f s", suppressed, every)
            start, reports, suppressed = now, 0, 0
        if now - last < every or reports >= MALFORMED_REPORTS_PER_WINDOW:
            self._malformed[op_id] = (last, since + 1)
            self._malformed_window = (start, reports, suppressed + 1)
            self.log.debug("malformed cancel on %s dropped: %s", subject[:120], error[:200])
        else:
            self._malformed[op_id] = (now, 0)
            self._malformed.move_to_end(op_id)
            self._malformed_window = (start, reports + 1, suppressed)
            note = f" (and {since} more since the last report)" if since else ""
            await self.on_malformed_cancel(op_id, subject, f"{error}{note}")
        while len(self._malformed) > 10_000:
            self._malformed.popitem(last=False)
