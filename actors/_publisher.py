"""How an actor's events reach the OPS stream.

Lifecycle events (created, started, terminal, ...) are published one at a time with a PubAck round
trip and retried through a server restart or an election, so when `publish` returns the event is
stored. Progress events are pipelined: one task sends the queue in order, each with the reply subject
`<inbox>.<n>` under one shared wildcard subscription, so every PubAck says which event it answers
without a future, an inbox token and a JSON parse per message (what nats-py's publish_async spends
most of its time on). An event the server did not store (an error ack, or no ack within
ACK_TIMEOUT_S: a stream leader that died under it, a reconnect) is sent again with the same
Nats-Msg-Id, and again, until it is stored — once: the stream dedupes by id. So whatever a live
subscriber saw ends up in the stream. At most MAX_PENDING_ACKS are unacknowledged at a time.

Every held event (progress, verdict, error) of a worker carries the holder proof (events/proof.py) in
its `Ktrdr-Proof` header: the chain hash of the previous one and, at most every SIGN_INTERVAL_S and on
every verdict and error, a signature by this process's key; an unsigned progress is followed by a
signed one as soon as a signature is due again (plus SEAL_S; a copy of the latest progress when
nothing else came), so a reader holds it back less than SIGN_INTERVAL_S + SEAL_S. The orchestrator's
own events need no proof: they go out on its own subject tokens (OrchestratorFailed, ...), which
only its role may publish on; each carries the leader epoch `fence()` returns, and while `fence()`
raises (a standby, or a leader whose lease may have passed: actors/_orch_leader.py) nothing is
published: a lifecycle publish raises, a progress event is dropped.

Every publish carries a Nats-Msg-Id keyed with this publisher's dedupe key (events.subjects: an
keyed hash of the op, the actor and its seq; of the op for a terminal event; of the op for a creation), so a
retried publish is stored once and nobody without the key can publish one of our ids first to make
the real event a "duplicate". A worker's key is its process's own (it retries only within its life);
the orchestrator's is the same across its restarts (an orchestrator that restarts mid-command creates
the op once).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import ClassVar

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from events import proof, subjects
from events.bounds import SEAL_S, SIGN_INTERVAL_S
from events.codec import encode
from events.messages import (
    HELD_EVENTS,
    ORCHESTRATOR_EVENT,
    Event,
    OperationCreated,
    OperationProgress,
    OrchestratorProgress,
    ProgressState,
)
from ktrdr import tracing
from ktrdr.transport import publish

log = logging.getLogger(__name__)

Outgoing = tuple[str, bytes, dict[str, str]]  # subject, payload, headers


class EventPublisher:
    MAX_PENDING_ACKS: ClassVar[int] = 4000
    ACK_TIMEOUT_S: ClassVar[float] = 5.0
    GIVE_UP_S: ClassVar[float] = 110.0  # inside the stream's 120 s dedupe window: never stored twice

    def __init__(self, nc: NATS, js: JetStreamContext, actor_id: str, dedupe_key: bytes | None = None, *,
                 key: proof.SigningKey | None = None, orchestrator: bool = False) -> None:
        self.nc, self.js, self.actor_id = nc, js, actor_id
        self.ids = subjects.MsgIds(dedupe_key or subjects.new_dedupe_key())
        self.orchestrator = orchestrator
        # The orchestrator's events are proven by their subject; everyone else's held events by the chain.
        self.signer = proof.Signer(key, SIGN_INTERVAL_S) if key is not None and not orchestrator else None
        self._progress_type = OrchestratorProgress if orchestrator else OperationProgress
        self.fence: Callable[[], int] | None = None  # the orchestrator's leader epoch (raises when not the leader)
        self._last: dict[str, tuple[ProgressState, int]] = {}  # op -> its latest progress, for a seal
        self._sealing: set[str] = set()
        self._seq = 0
        self._outbox: deque[Outgoing] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._subjects: dict[str, str] = {}
        self._inbox = ""
        self._n = 0
        # n -> (first sent, last sent, event): sent, not acknowledged yet
        self._unacked: dict[int, tuple[float, float, Outgoing]] = {}
        self._first_sent: dict[str, float] = {}  # msg id -> when first sent, for events queued again
        self._room = asyncio.Event()
        self._room.set()
        self._all_acked = asyncio.Event()
        self._all_acked.set()
        self._tasks: list[asyncio.Task[None]] = []
        self.resent = 0  # progress events sent again (for measurements)
        self.given_up = 0
        self.closed = False

    async def start(self) -> None:
        self._inbox = self.nc.new_inbox()
        await self.nc.subscribe(f"{self._inbox}.*", cb=self._on_ack)
        self._tasks = [asyncio.create_task(self._send_loop(), name=f"{self.actor_id}-publisher"),
                       asyncio.create_task(self._ack_watchdog(), name=f"{self.actor_id}-acks")]

    def close(self) -> None:
        self.closed = True
        for task in self._tasks:
            task.cancel()

    def _next(self, op_id: str) -> tuple[int, str]:
        self._seq += 1
        return self._seq, self.ids.event(op_id, self.actor_id, self._seq)

    async def publish(self, event: Event) -> Event:
        """Store a lifecycle event (awaited: it is in the stream when this returns); the event as
        published (the orchestrator's own verdicts go out as their orchestrator-only versions)."""
        await self.flush()  # keep stream order: earlier progress is sent first
        if self.orchestrator and (own := ORCHESTRATOR_EVENT.get(type(event))) is not None:
            event = own(**{f: getattr(event, f) for f in event.__struct_fields__})
        if self.fence is not None and hasattr(event, "epoch"):
            event.epoch = self.fence()  # type: ignore[attr-defined]
        seq, msg_id = self._next(event.op_id)
        event.actor, event.seq = self.actor_id, seq
        kind = type(event)
        if kind.terminal:
            msg_id = self.ids.terminal(event.op_id, self.actor_id)
        elif isinstance(event, OperationCreated):
            msg_id = self.ids.created(event.op_id)
        subject, payload = subjects.event(event), encode(event)
        headers: dict[str, str] | None = None
        if self.signer is not None and kind in _HELD:
            headers = {proof.HEADER: self.signer.proof(event.op_id, subject, payload, time.monotonic(), force=True)[0]}
        headers = tracing.inject(headers)  # the span it was published in (while tracing is on)
        await publish(self.js, subject, payload, msg_id, headers=headers, check=self.fence)
        if kind.terminal and self.signer is not None:
            self.signer.forget(event.op_id)
            self._last.pop(event.op_id, None)
        return event

    def progress(self, op_id: str, state: ProgressState, attempt: int = 0) -> None:
        """Queue a progress event of `attempt` (the holder's; 0 for none, e.g. a workflow's parent);
        the send loop publishes the queue in order."""
        if not self.closed:
            self._progress(op_id, state, attempt, force=False)

    def _progress(self, op_id: str, state: ProgressState, attempt: int, *, force: bool) -> None:
        epoch = 0
        if self.fence is not None:
            try:
                epoch = self.fence()
            except Exception:
                return  # not the leader now: an orchestrator's note is not ours to publish
        seq, msg_id = self._next(op_id)
        ev = self._progress_type(op_id=op_id, actor=self.actor_id, seq=seq, progress=state, attempt=attempt)
        if epoch:
            ev.epoch = epoch  # type: ignore[attr-defined]
        subject = self._subjects.get(op_id)
        if subject is None:
            subject = self._subjects[op_id] = subjects.event(ev)
            if len(self._subjects) > 10_000:
                self._subjects.clear()
        payload = encode(ev)
        headers = {"Nats-Msg-Id": msg_id}
        if self.signer is not None:
            headers[proof.HEADER], due = self.signer.proof(op_id, subject, payload, time.monotonic(), force=force)
            if len(self._last) > 10_000:
                self._last.clear()
            self._last[op_id] = (state, attempt)
            if due > 0 and op_id not in self._sealing:  # a signed event follows once one is due again
                self._sealing.add(op_id)
                asyncio.get_running_loop().call_later(due + SEAL_S, self._seal, op_id)
        # No traceparent on progress: one per event cost 13% more CPU per event at 200,000 (README, Traces);
        # the op id ties them to the trace, and the lifecycle events (publish_event) carry it.
        self._outbox.append((subject, payload, headers))
        self._idle.clear()
        self._wake.set()

    def _seal(self, op_id: str) -> None:
        """The operation's last event went out unsigned and nothing signed followed: sign a copy of its
        latest progress, so readers need not wait for the next event to count the ones before."""
        self._sealing.discard(op_id)
        last = self._last.get(op_id)
        if self.closed or self.signer is None or last is None or not self.signer.unsealed(op_id):
            return
        self._progress(op_id, last[0], last[1], force=True)

    async def flush(self, *, acked: bool = False) -> None:
        """Wait until every queued progress event has been handed to the connection; with acked=True,
        also until the server has acknowledged storing them (for at most ACK_TIMEOUT_S)."""
        await self._idle.wait()
        if acked and self._unacked:
            try:
                await asyncio.wait_for(self._all_acked.wait(), self.ACK_TIMEOUT_S)
            except TimeoutError:
                log.info("%s: %d progress events not acknowledged at flush", self.actor_id, len(self._unacked))

    def acks_lost(self) -> None:
        """A reconnect: the acks of what was sent before will not come; send all of it again."""
        self._resend([n for n in self._unacked])

    @property
    def sent(self) -> int:
        """Progress events handed to the connection so far (resends included)."""
        return self._n

    # ------------------------------------------------------------------ acks
    async def _on_ack(self, msg: Msg) -> None:
        try:
            n = int(msg.subject.rsplit(".", 1)[1])
        except ValueError:
            return
        data = msg.data
        if not data or b'"error"' in data:  # empty: a status (503: no stream leader now) in the headers
            log.debug("%s: progress event %d not stored (%s); sending it again", self.actor_id, n,
                      data.decode(errors="replace") or (msg.headers or {}).get("Status", ""))
            self._resend([n])
            return
        self._done(n)

    def _done(self, n: int) -> None:
        if self._unacked.pop(n, None) is None:
            return
        if len(self._unacked) < self.MAX_PENDING_ACKS:
            self._room.set()
        if not self._unacked:
            self._all_acked.set()

    def _resend(self, numbers: list[int]) -> None:
        """Put these unacknowledged events back in front of the queue, oldest first (their old
        numbers are forgotten: an ack for them is for an earlier copy and no longer needed)."""
        now = time.monotonic()
        again: list[Outgoing] = []
        for n in sorted(numbers):
            item = self._unacked.pop(n, None)
            if item is None:
                continue
            first, _last, out = item
            if now - first > self.GIVE_UP_S:
                self.given_up += 1  # beyond the dedupe window a copy could be stored twice
                continue
            again.append(out)
            self._first_sent[out[2]["Nats-Msg-Id"]] = first
        if not again:
            return
        self.resent += len(again)
        self._outbox.extendleft(reversed(again))
        self._room.set()
        self._idle.clear()
        self._wake.set()

    async def _ack_watchdog(self) -> None:
        """Acks that do not come (a stream leader that died under our publishes, on a server we stay
        connected to) are written off after ACK_TIMEOUT_S and those events sent again."""
        while True:
            await asyncio.sleep(self.ACK_TIMEOUT_S / 5)
            horizon = time.monotonic() - self.ACK_TIMEOUT_S
            late = [n for n, (_first, last, _out) in self._unacked.items() if last < horizon]
            if late:
                log.info("%s: %d progress acks missing for %.0f s; sending those events again", self.actor_id,
                         len(late), self.ACK_TIMEOUT_S)
                self._resend(late)

    # ------------------------------------------------------------------ sending
    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                await self._send_one(self._outbox.popleft())
            self._idle.set()

    async def _send_one(self, out: Outgoing) -> None:
        if len(self._unacked) >= self.MAX_PENDING_ACKS:
            self._room.clear()
            await self._room.wait()
        subject, payload, headers = out
        self._n += 1
        now = time.monotonic()
        first = self._first_sent.pop(headers["Nats-Msg-Id"], now)
        self._unacked[self._n] = (first, now, out)
        self._all_acked.clear()
        try:
            await self.nc.publish(subject, payload, reply=f"{self._inbox}.{self._n}", headers=headers)
        except Exception as exc:  # server away: the watchdog sends it again once the connection is back
            log.debug("progress publish failed: %s", exc)


_HELD = frozenset(HELD_EVENTS)
