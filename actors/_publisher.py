"""How an actor's events reach the OPS stream.

Lifecycle events (created, started, terminal, ...) are published one at a time with a PubAck round
trip and retried through a server restart or an election, so when `publish` returns the event is
stored. Progress events are pipelined: one task sends the queue in order with one shared reply
inbox, and the server's PubAcks are counted (errors logged) instead of each becoming a future with
its own inbox token and a JSON parse, which is what nats-py's publish_async spends most of its time
on. At most MAX_PENDING_ACKS are outstanding; acks lost to a reconnect are written off after
ACK_TIMEOUT_S. A progress event the server did not store (an error ack, a missing ack, a reconnect: what a
stream-leader election looks like) is sent again with the same Nats-Msg-Id, together with everything
sent shortly before it, so whatever a live subscriber saw ends up stored (once: the stream dedupes
by id). A lost lifecycle event is not allowed to happen either: it is retried until stored.

Every publish carries a Nats-Msg-Id: `<op_id>.<actor>.<seq>`; a terminal event's is
`<op_id>.<actor>.<secret>.terminal`, with a secret this process never shows before it publishes the
terminal event itself (a retried terminal is stored once; nobody else can publish that id first and
so make the real verdict a "duplicate"); a creation's `<op_id>.created` (an orchestrator that restarts
mid-command creates the op once).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from typing import Any, ClassVar

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from events import subjects
from events.codec import encode
from events.messages import Event, OperationCreated, OperationProgress, ProgressState
from ktrdr.transport import publish

log = logging.getLogger(__name__)


class EventPublisher:
    MAX_PENDING_ACKS: ClassVar[int] = 4000
    ACK_TIMEOUT_S: ClassVar[float] = 5.0
    RESEND_WINDOW_S: ClassVar[float] = 60.0  # inside the stream's 120 s dedupe window

    def __init__(self, nc: NATS, js: JetStreamContext, actor_id: str) -> None:
        self.nc, self.js, self.actor_id = nc, js, actor_id
        self._seq = 0
        self._outbox: deque[tuple[str, bytes, dict[str, str]]] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._subjects: dict[str, str] = {}
        self._inbox = ""
        self._pending = 0  # progress publishes whose PubAck has not come back yet
        self._room = asyncio.Event()
        self._room.set()
        self._all_acked = asyncio.Event()
        self._all_acked.set()
        self._task: asyncio.Task[None] | None = None
        self._recent: deque[tuple[float, str, bytes, dict[str, str]]] = deque(maxlen=self.MAX_PENDING_ACKS)
        self._resend = False
        self._last_ack = time.monotonic()
        self._watchdog: asyncio.Task[None] | None = None
        self.resent = 0  # progress events sent again after a failed or missing ack (for measurements)
        self.closed = False
        self._secret = secrets.token_hex(8)

    async def start(self) -> None:
        self._inbox = self.nc.new_inbox()
        await self.nc.subscribe(self._inbox, cb=self._on_ack)
        self._task = asyncio.create_task(self._send_loop(), name=f"{self.actor_id}-publisher")
        self._watchdog = asyncio.create_task(self._ack_watchdog(), name=f"{self.actor_id}-acks")

    def close(self) -> None:
        self.closed = True
        for task in (self._task, self._watchdog):
            if task is not None:
                task.cancel()

    async def _ack_watchdog(self) -> None:
        """Acks that stop coming without an error (a stream leader that died under our publishes, on
        a server we stay connected to) are written off after ACK_TIMEOUT_S and the recent events
        sent again."""
        while True:
            await asyncio.sleep(self.ACK_TIMEOUT_S / 5)
            if self._pending and time.monotonic() - self._last_ack > self.ACK_TIMEOUT_S:
                log.info("%s: %d progress acks missing for %.0f s; sending the recent events again", self.actor_id,
                         self._pending, self.ACK_TIMEOUT_S)
                self.acks_lost()

    def _next(self, op_id: str) -> tuple[int, str]:
        self._seq += 1
        return self._seq, f"{op_id}.{self.actor_id}.{self._seq}"

    async def publish(self, event: Event) -> None:
        """Store a lifecycle event (awaited: it is in the stream when this returns)."""
        await self.flush()  # keep stream order: earlier progress is sent first
        seq, msg_id = self._next(event.op_id)
        event.actor, event.seq = self.actor_id, seq
        if type(event).terminal:
            msg_id = f"{event.op_id}.{self.actor_id}.{self._secret}.terminal"
        elif isinstance(event, OperationCreated):
            msg_id = f"{event.op_id}.created"
        await publish(self.js, subjects.event(event), encode(event), msg_id)

    def progress(self, op_id: str, state: ProgressState) -> None:
        """Queue a progress event; the send loop publishes the queue in order."""
        if self.closed:
            return
        seq, msg_id = self._next(op_id)
        ev = OperationProgress(op_id=op_id, actor=self.actor_id, seq=seq, progress=state)
        subject = self._subjects.get(op_id)
        if subject is None:
            subject = self._subjects[op_id] = subjects.event(ev)
            if len(self._subjects) > 10_000:
                self._subjects.clear()
        self._outbox.append((subject, encode(ev), {"Nats-Msg-Id": msg_id}))
        self._idle.clear()
        self._wake.set()

    async def flush(self, *, acked: bool = False) -> None:
        """Wait until every queued progress event has been handed to the connection; with acked=True,
        also until the server has acknowledged storing them (or ACK_TIMEOUT_S passed without a word)."""
        await self._idle.wait()
        if acked and self._pending:
            try:
                await asyncio.wait_for(self._all_acked.wait(), self.ACK_TIMEOUT_S)
            except TimeoutError:
                self.acks_lost()

    def acks_lost(self) -> None:
        """Acks of publishes sent before a disconnect will not come: stop waiting for them, and send
        the recent ones again (stored once: same Nats-Msg-Id)."""
        self._pending = 0
        self._room.set()
        self._all_acked.set()
        self._schedule_resend()

    def _schedule_resend(self) -> None:
        if self.closed or not self._recent:
            return
        self._resend = True
        self._idle.clear()
        self._wake.set()

    async def _on_ack(self, msg: Msg) -> None:
        data = msg.data
        if not data or b'"error"' in data:  # empty: a status (503 no responders) in the headers
            status = (msg.headers or {}).get("Status", "")
            log.info("%s: a progress event was not stored (%s); sending the recent ones again", self.actor_id,
                     data.decode(errors="replace") or f"status {status}")
            self._schedule_resend()
        self._acked()

    def _acked(self) -> None:
        self._last_ack = time.monotonic()
        if self._pending > 0:
            self._pending -= 1
        if self._pending < self.MAX_PENDING_ACKS:
            self._room.set()
        if self._pending == 0:
            self._all_acked.set()

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._resend:
                self._resend = False
                self._requeue_recent()
            while self._outbox:
                await self._send_one(*self._outbox.popleft())
            self._idle.set()

    def _requeue_recent(self) -> None:
        """Put the recently sent events back in front of the queue, oldest first."""
        horizon = time.monotonic() - self.RESEND_WINDOW_S
        again = [(subject, payload, headers) for at, subject, payload, headers in self._recent if at >= horizon]
        self._recent.clear()
        self.resent += len(again)
        self._outbox.extendleft(reversed(again))

    async def _send_one(self, subject: str, payload: bytes, headers: dict[str, Any]) -> None:
        if self._pending >= self.MAX_PENDING_ACKS:
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), self.ACK_TIMEOUT_S)
            except TimeoutError:
                self.acks_lost()
                self._requeue_recent()
        try:
            if not self._pending:
                self._last_ack = time.monotonic()  # the clock for missing acks starts now
            self._pending += 1
            self._all_acked.clear()
            self._recent.append((time.monotonic(), subject, payload, headers))
            await self.nc.publish(subject, payload, reply=self._inbox, headers=headers)
        except Exception as exc:  # server away: it goes again once the connection is back
            self._acked()
            log.debug("progress publish failed: %s", exc)
