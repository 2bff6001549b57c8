"""The orchestrator's side of schedules: each firing nats-server stores on sched.fire.<name> (or a
person's `ktrdr schedule trigger`) becomes a fresh operation, or a recorded skip. Only the active
orchestrator runs this (actors/_orch_leader.py starts it with the command intake), from a durable
consumer of SCHEDULES, so a firing taken by an orchestrator that dies is redelivered to the next one.

The operation's id is derived from the schedule, the firing's stored time and its sequence
(events.subjects.schedule_op_id): a redelivered firing names the same operation, which the intake
already knows, so it is created once. What a firing does while the schedule's previous operation
runs is ktrdr.schedules.decide; each firing's outcome is recorded on sched.hist.<name> (one record per
firing and outcome: a fixed Nats-Msg-Id).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from actors._pull import Consumer, pull_loop
from events import subjects
from events.bounds import SCHEDULE_HISTORY
from events.codec import encode
from events.messages import Schedule, ScheduleFired
from ktrdr import schedules
from ktrdr.ops import OperationView
from ktrdr.transport import publish
from ktrdr.transport.schedules import decode_schedule, definition

if TYPE_CHECKING:
    from nats.js import JetStreamContext

    from actors.orchestrator import Orchestrator

FIRING_ACK_WAIT_S = 30.0  # a buffered firing is kept in progress meanwhile


class ScheduleRunner:
    def __init__(self, orch: Orchestrator) -> None:
        self.orch = orch
        self.buffered: dict[str, int] = {}  # schedule -> the sequence of the firing that waits
        self.ended = asyncio.Event()  # set whenever a scheduled operation ends (a buffered firing looks)
        self.tasks: list[asyncio.Task[None]] = []

    @property
    def js(self) -> JetStreamContext:
        assert self.orch.js is not None
        return self.orch.js

    async def start(self) -> asyncio.Task[None]:
        """The durable consumer of firings and its loop, for the leader to stop when it steps down."""
        await self.js.add_consumer(subjects.STREAM_SCHEDULES, js_api.ConsumerConfig(
            name=subjects.SCHEDULES_CONSUMER, durable_name=subjects.SCHEDULES_CONSUMER,
            filter_subject=subjects.SCHED_FIRE_ALL, ack_policy=js_api.AckPolicy.EXPLICIT,
            ack_wait=FIRING_ACK_WAIT_S, max_deliver=20, max_ack_pending=SCHEDULE_HISTORY))
        assert self.orch.nc is not None
        consumer = Consumer(self.orch.nc, subjects.STREAM_SCHEDULES, subjects.SCHEDULES_CONSUMER)
        task = self.orch.spawn(pull_loop(consumer, self.on_firing, stopped=lambda: self.orch.stopping,
                                         on_fault=self.orch.on_fault, fetch_timeout=2.0),
                               name=f"{self.orch.id}-schedules")
        return task

    def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        self.tasks.clear()

    def running(self, name: str) -> str | None:
        """The schedule's operation that has not ended (its top-level one), or None."""
        for op_id, tracked in self.orch.live.items():
            view = tracked.view
            if view.schedule_name == name and view.parent_op_id is None and not view.terminal:
                return op_id
        return None

    def op_ended(self, view: OperationView) -> None:
        if view.schedule_name is not None:
            self.ended.set()

    # ------------------------------------------------------------------ firings in
    async def on_firing(self, msg: Msg) -> None:
        name = subjects.schedule_of_subject(msg.subject)
        try:
            sched = decode_schedule(msg.data)
        except msgspec.DecodeError as exc:
            self.orch.log.warning("malformed firing on %s dropped: %s", msg.subject[:100], str(exc)[:300])
            await msg.term()
            return
        if name is None or sched.name != name:
            self.orch.log.warning("firing on %s names schedule %r: dropped", msg.subject[:100], sched.name)
            await msg.term()
            return
        meta = msg.metadata
        seq, fired_at = meta.sequence.stream, meta.timestamp.astimezone(UTC)
        manual = bool(msg.headers and msg.headers.get(schedules.H_TRIGGER))
        announced = schedules.parse_next(msg.headers.get(schedules.H_NEXT) if msg.headers else None)
        op_id = subjects.schedule_op_id(sched.command.domain, name, fired_at, seq)
        previous = await self._last_record(name)
        previous_next = previous.next_at if previous is not None else None
        base = {"name": name, "fired_at": fired_at, "seq": seq, "manual": manual}

        if await self.orch.intake.recorded(op_id):  # redelivered: its operation exists already
            await self._record(ScheduleFired(**base, outcome="started", op_id=op_id, next_at=announced))
            await msg.ack()
            return
        current = await definition(self.js, name)
        if current is None or (current.paused and not manual):
            # removed or paused after the server stored this firing (it waited for an orchestrator)
            await self._record(ScheduleFired(**base, outcome="skipped", next_at=previous_next,
                                             note="the schedule was " + ("removed" if current is None else "paused")
                                             + " after this firing"))
            await msg.ack()
            return
        if not manual and await self._newer_firing(msg.subject, seq):
            # the orchestrator was away over several firings: the newest one runs, this one is moot
            await self._record(ScheduleFired(**base, outcome="missed", next_at=previous_next,
                                             note="a newer firing of this schedule is waiting"))
            await msg.ack()
            return
        catch_up = not manual and (schedules.is_catch_up(fired_at, previous_next)
                                   or (previous is not None and previous.outcome == "missed"))
        note = ""
        if catch_up:
            n = schedules.missed_count(fired_at, previous_next, sched.spec)
            note = ("catch-up: fired once for the time(s) missed while the stack was down"
                    + (f" (~{n})" if n else ""))
        decision = schedules.decide(sched.overlap, self.running(name), name in self.buffered)
        if decision == "start":
            await self._start(sched, op_id)
            await self._record(ScheduleFired(**base, outcome="started", op_id=op_id, catch_up=catch_up,
                                             next_at=announced, note=note))
            await msg.ack()
        elif decision == "skip":
            running = self.running(name)
            await self._record(ScheduleFired(**base, outcome="skipped", catch_up=catch_up, next_at=announced,
                                             note=f"overlap {sched.overlap}: {running} is still running"))
            await msg.ack()
        else:
            self.buffered[name] = seq
            await self._record(ScheduleFired(**base, outcome="buffered", catch_up=catch_up, next_at=announced,
                                             note=f"overlap buffer-one: starts when {self.running(name)} ends"))
            self.tasks.append(self.orch.spawn(self._when_free(msg, sched, op_id, base, announced),
                                              name=f"{self.orch.id}-buffered-{name}"))

    async def _when_free(self, msg: Msg, sched: Schedule, op_id: str, base: dict[str, object],
                         announced: datetime | None) -> None:
        """A buffered firing: kept in progress (unacked: an orchestrator that dies leaves it to the next)
        until the schedule's running operation ends, then started."""
        name = sched.name
        try:
            while self.running(name) is not None and not self.orch.stopping:
                self.ended.clear()
                with contextlib.suppress(Exception):
                    await msg.in_progress()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.ended.wait(), FIRING_ACK_WAIT_S / 3)
            if self.orch.stopping:
                return
            await self._start(sched, op_id)
            await self._record(ScheduleFired(**base, outcome="started", op_id=op_id,  # type: ignore[arg-type]
                                             next_at=announced, note="buffered firing, started once the "
                                             "previous operation ended"))
            await msg.ack()
        finally:
            if self.buffered.get(name) == base["seq"]:
                self.buffered.pop(name, None)

    async def _start(self, sched: Schedule, op_id: str) -> None:
        cmd = msgspec.structs.replace(sched.command, op_id=op_id, ts=datetime.now(UTC), schedule_name=sched.name,
                                      requested_by=f"schedule {sched.name}", parent_op_id=None, deadline=None)
        await self.orch.intake.validate_and_create(cmd)

    # ------------------------------------------------------------------ SCHEDULES reads and writes
    async def _newer_firing(self, subject: str, seq: int) -> bool:
        try:
            last = await self.js.get_last_msg(subjects.STREAM_SCHEDULES, subject, direct=True)
        except (NotFoundError, NoRespondersError):
            return False
        return (last.seq or 0) > seq and not (last.headers or {}).get(schedules.H_TRIGGER)

    async def _last_record(self, name: str) -> ScheduleFired | None:
        try:
            raw = await self.js.get_last_msg(subjects.STREAM_SCHEDULES, subjects.schedule_hist(name), direct=True)
            return msgspec.json.decode(raw.data or b"", type=ScheduleFired)
        except (NotFoundError, NoRespondersError, msgspec.DecodeError):
            return None

    async def _record(self, rec: ScheduleFired) -> None:
        await publish(self.js, subjects.schedule_hist(rec.name), encode(rec),
                      subjects.schedule_fired_msg_id(rec.name, rec.seq, rec.outcome))
        self.orch.log.info("schedule %s: firing %d %s%s%s", rec.name, rec.seq, rec.outcome,
                           f" as {rec.op_id}" if rec.op_id else "", f" ({rec.note})" if rec.note else "")
