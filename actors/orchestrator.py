"""orchestrator: the seed's ServiceOrchestrator as an actor.

Consumes CMD, validates each command (a bad one gets `rejected` with a reason a person can act on),
creates the operation, routes its work to WORK, answers cancels of queued work, and supervises
liveness: an operation whose worker stops heartbeating is picked up again by JetStream redelivery
or, when nobody picks it up in time, marked failed with the reason. No operation stays running
forever. Its table of live operations is rebuilt from the OPS stream on start: nothing to lose.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from nats.aio.msg import Msg
from nats.js import api as js_api

from actors._jetstream import read_events
from actors.runtime import Actor
from events import subjects
from events.codec import DecodeError, decode_command, decode_event, decode_heartbeat, encode, sniff_op_id
from events.messages import (
    CancelOperation,
    CancelRequested,
    OperationCancelled,
    OperationCreated,
    OperationFailed,
    OperationRejected,
    WorkItem,
)
from ktrdr import commands
from ktrdr.errors import KtrdrError

ROLE_FOR_DOMAIN = {"dummy": "dummy", "data": "job-manager", "training": "trainer"}


@dataclass
class LiveOp:
    domain: str
    status: str  # queued | running
    worker: str = ""
    last_seen: float = field(default_factory=time.monotonic)


@dataclass
class LiveActor:
    role: str
    domain: str
    busy: list[str]
    seen: float


class Orchestrator(Actor):
    role = "orchestrator"

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.live_ops: dict[str, LiveOp] = {}
        self.known_ops: set[str] = set()
        self.actors: dict[str, LiveActor] = {}

    async def on_start(self) -> None:
        assert self.js is not None and self.nc is not None
        await self._rebuild()
        for ev in ("started", "completed", "failed", "cancelled", "rejected", "created", "progress"):
            await self.nc.subscribe(f"ops.*.*.{ev}", cb=self._guard(self._on_op_event, f"ops.*.*.{ev}"))
        await self.nc.subscribe(f"$KV.{subjects.ACTORS_BUCKET}.>", cb=self._guard(self._on_presence, "presence"))
        await self.js.add_consumer(subjects.STREAM_CMD, js_api.ConsumerConfig(
            durable_name="orchestrator", filter_subject=subjects.CMD_ALL,
            ack_policy=js_api.AckPolicy.EXPLICIT, ack_wait=30.0, max_deliver=10))
        self._bg.append(asyncio.create_task(self._command_loop(), name=f"{self.id}-commands"))
        self._bg.append(asyncio.create_task(self._supervise_loop(), name=f"{self.id}-supervise"))

    async def _rebuild(self) -> None:
        """Live operations from the stored lifecycle events (survives any restart)."""
        assert self.js is not None
        filters = [f"ops.*.*.{e}" for e in ("created", "started", "completed", "failed", "cancelled", "rejected")]
        await read_events(self.js, filters, self._apply)
        now = time.monotonic()
        for op in self.live_ops.values():
            op.last_seen = now  # grace: workers get a full timeout to show up again

    def _apply(self, subject: str, data: bytes) -> None:
        parsed = subjects.parse_ops_subject(subject)
        if parsed is None:
            return
        domain, op_id, name = parsed
        if name == "progress":
            op = self.live_ops.get(op_id)
            if op is not None:
                op.last_seen = time.monotonic()
                op.status = "running"
            return
        if name == "created":
            self.known_ops.add(op_id)
            self.live_ops.setdefault(op_id, LiveOp(domain, "queued"))
        elif name == "started":
            try:
                worker = decode_event(data).actor
            except DecodeError:
                worker = ""
            op = self.live_ops.get(op_id)
            if op is not None:
                op.status, op.worker, op.last_seen = "running", worker, time.monotonic()
        elif name in ("completed", "failed", "cancelled", "rejected"):
            self.known_ops.add(op_id)
            self.live_ops.pop(op_id, None)

    async def _on_op_event(self, msg: Msg) -> None:
        self._apply(msg.subject, msg.data)

    async def _on_presence(self, msg: Msg) -> None:
        key = msg.subject.split(".", 2)[-1]
        op = (msg.headers or {}).get("KV-Operation")
        if op in ("DEL", "PURGE") or not msg.data:
            self.actors.pop(key, None)
            return
        hb = decode_heartbeat(msg.data)
        self.actors[key] = LiveActor(hb.role, hb.domain, hb.busy, time.monotonic())
        for op_id in hb.busy:
            live = self.live_ops.get(op_id)
            if live is not None:
                live.last_seen = time.monotonic()

    # ------------------------------------------------------------------ commands
    async def _command_loop(self) -> None:
        assert self.js is not None
        psub = await self.js.pull_subscribe_bind(durable="orchestrator", stream=subjects.STREAM_CMD)
        while not self._stopping:
            try:
                msgs = await psub.fetch(16, timeout=5.0)
            except TimeoutError:
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.debug("command fetch failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                try:
                    await self._on_command(msg)
                except Exception as exc:  # never let one command kill the loop; retry it later
                    await self.on_fault(exc, f"command on {msg.subject}")
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=1.0)

    async def _on_command(self, msg: Msg) -> None:
        try:
            cmd = decode_command(msg.data)
        except DecodeError as exc:
            op_id = sniff_op_id(msg.data)
            reason = f"malformed command on {msg.subject}: {exc}"
            if op_id and subjects.is_op_id(op_id) and op_id not in self.known_ops:
                await self._reject(op_id, reason, "malformed")
            else:
                self.log.warning("%s (dropped)", reason)
            await msg.term()
            return
        op_id = cmd.op_id
        expected = subjects.COMMAND_SUBJECTS.get(type(cmd).__name__)
        wrong_domain = subjects.is_op_id(op_id) and subjects.domain_of(op_id) != expected.split(".")[1]
        if not subjects.is_op_id(op_id) or msg.subject != expected or wrong_domain:
            reason = (f"command {type(cmd).__name__} on {msg.subject} with op_id {op_id!r}: expected subject "
                      f"{expected} and an op_id like {subjects.new_op_id(expected.split('.')[1])}")
            if subjects.is_op_id(op_id) and op_id not in self.known_ops:
                await self._reject(op_id, reason, "malformed")
            else:
                self.log.warning("%s (dropped)", reason)
            await msg.term()
            return
        if op_id in self.known_ops:
            self.log.info("duplicate command for %s ignored", op_id)
            await msg.ack()
            return
        try:
            commands.validate(cmd)
        except KtrdrError as exc:
            await self._reject(op_id, str(exc), exc.code, getattr(exc, "field", None))
            await msg.ack()
            return
        domain = subjects.domain_of(op_id)
        op_type, description = commands.describe(cmd)
        await self.publish_event(OperationCreated(op_id=op_id, domain=domain, op_type=op_type, command=cmd,
                                                  description=description), "created")
        self.known_ops.add(op_id)
        self.live_ops.setdefault(op_id, LiveOp(domain, "queued"))
        assert self.js is not None
        await self.js.publish(subjects.work(domain), encode(WorkItem(op_id=op_id, domain=domain, command=cmd)),
                              headers={"Nats-Msg-Id": f"work-{op_id}"})
        await msg.ack()

    async def _reject(self, op_id: str, reason: str, code: str, field_path: str | None = None) -> None:
        self.known_ops.add(op_id)
        await self.publish_event(OperationRejected(op_id=op_id, reason=reason, error_code=code, field=field_path),
                                 "rejected")

    # ------------------------------------------------------------------ cancels
    async def on_cancel_request(self, op_id: str, cancel: CancelOperation) -> None:
        op = self.live_ops.get(op_id)
        if op is None:
            self.log.info("cancel for %s: not a live operation; nothing to do", op_id)
            return
        await self.publish_event(CancelRequested(op_id=op_id, reason=cancel.reason,
                                                 requested_by=cancel.requested_by), "cancel_requested")
        if op.status == "queued" and not self._claimed(op_id):
            # Nobody is working on it: cancel it here; a worker that picks it up later drops it.
            await self.publish_event(OperationCancelled(
                op_id=op_id, where="queued, before any worker started it", reason=cancel.reason,
                message="Operation cancelled before it started"), "cancelled")
            self.live_ops.pop(op_id, None)

    def _claimed(self, op_id: str) -> bool:
        return any(op_id in a.busy for a in self.actors.values())

    # ------------------------------------------------------------------ supervision
    async def _supervise_loop(self) -> None:
        interval = max(min(self.settings.heartbeat_s, 1.0), 0.05)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.supervise()
            except Exception as exc:
                self.log.debug("supervision pass failed: %s", exc)

    async def supervise(self) -> None:
        now = time.monotonic()
        timeout, orphan = self.settings.worker_timeout_s, self.settings.orphan_timeout_s
        stale_after = max(self.settings.heartbeat_s * 3, 1.0)
        for key in [k for k, a in self.actors.items() if now - a.seen > max(timeout, stale_after)]:
            self.actors.pop(key, None)
        for op_id, op in list(self.live_ops.items()):
            if op.status != "running":
                continue
            silent = now - op.last_seen
            if silent <= timeout:
                continue
            role = ROLE_FOR_DOMAIN.get(op.domain, op.domain)
            alive = [a for a in self.actors.values() if a.domain == op.domain and now - a.seen <= stale_after]
            if not alive:
                reason = (f"worker {op.worker or '?'} stopped heartbeating {silent:.0f} s ago and no {role} actor "
                          f"is alive to take the operation over; start one and run the operation again")
            elif silent > orphan:
                reason = (f"worker {op.worker or '?'} stopped heartbeating {silent:.0f} s ago and no {role} "
                          f"picked the operation up again within {orphan:g} s")
            else:
                continue  # a live replica will get the redelivery when the lease (ack_wait) runs out
            self.log.warning("%s: %s", op_id, reason)
            await self.publish_event(OperationFailed(op_id=op_id, error=reason, error_code="worker_lost"), "failed")
            self.live_ops.pop(op_id, None)
