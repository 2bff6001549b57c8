"""The nemesis's load and its record: dummy operations (some cancelled mid-run) submitted through
the ktrdr Client's connection while a fault runs, every acknowledged publish recorded with the
stream and sequence its PubAck named, and a core subscriber on `ops.>` recording every event of
these operations a server passed on (bench.nemesis.checker explains how each is judged).
Afterwards, with the fault healed, `collect()` reads what the streams hold.

Acks are counted where they happen for the load generator's own publishes (the PubAck); the
workers' and the orchestrator's publishes are counted by the live subscriber, which sees what a
server accepted (an upper bound of what was acknowledged), since their acks happen inside actors/*.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass

from bench.nemesis.checker import Acked, History, Stored, superseded
from events import subjects
from events.codec import DecodeError, decode_event_on, encode
from events.messages import CancelOperation, RunDummy
from ktrdr.client import Client
from ktrdr.ops.reader import read_proven
from ktrdr.transport import publish, read_events

PUBLISH_RETRY_S = 15.0  # how long one publish of the load rides out a fault before it counts as unacked
TERMINAL_WAIT_S = 60.0  # after healing: how long the load's operations get to reach a verdict
SETTLE_S = 30.0  # a read served by a replica still catching up: read again until it settles


@dataclass(frozen=True)
class LoadShape:
    operations: int = 6
    iterations: int = 20
    interval_s: float = 0.2
    cancel_every: int = 3  # every third operation is cancelled once it has run a little
    spacing_s: float = 0.4  # between submissions


class Load:
    """`async with Load(client) as load: await load.run(shape)`; `load.history` is the record."""

    def __init__(self, client: Client, rng: random.Random | None = None) -> None:
        self.client = client
        self.history = History()
        self.op_ids: list[str] = []
        self.rng = rng or random.Random(19)
        self._sub: object | None = None

    async def __aenter__(self) -> Load:
        assert self.client.nc is not None
        self._sub = await self.client.nc.subscribe(subjects.OPS_ALL, cb=self._on_live)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()  # type: ignore[attr-defined]

    async def _on_live(self, msg) -> None:  # type: ignore[no-untyped-def]
        if msg.subject.endswith(f".{CancelOperation.name}"):
            return  # cancels live in OPS_CANCELS and are checked by their PubAck
        try:
            ev = decode_event_on(msg.subject, msg.data)
        except DecodeError:
            return
        if ev.op_id in self._mine:
            self.history.seen.add((msg.subject, ev.actor, getattr(ev, "seq", 0)))

    @property
    def _mine(self) -> set[str]:
        return set(self.op_ids)

    async def _publish(self, kind: str, op_id: str, subject: str, payload: bytes, msg_id: str) -> bool:
        try:
            ack = await publish(self.client.js, subject, payload, msg_id, retry_for=PUBLISH_RETRY_S)
        except Exception:
            self.history.unacked += 1
            return False
        self.history.acked.append(Acked(kind, op_id, subject, ack.stream, ack.seq))
        return True

    async def submit(self, iterations: int, interval_s: float) -> str:
        cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=iterations, interval_s=interval_s)
        self.op_ids.append(cmd.op_id)
        await self._publish("command", cmd.op_id, subjects.command(cmd), encode(cmd),
                            subjects.command_msg_id(cmd.op_id))
        return cmd.op_id

    async def cancel(self, op_id: str) -> None:
        cancel = CancelOperation(op_id=op_id, reason="nemesis load", requested_by="nemesis")
        await self._publish("cancel", op_id, subjects.cancel(op_id), encode(cancel), subjects.user_cancel_msg_id(op_id))

    async def run(self, shape: LoadShape) -> None:
        """Submit the shape's operations, cancelling some after a short run; returns once all its
        publishes were acknowledged or gave up."""
        tasks = []
        for i in range(shape.operations):
            op_id = await self.submit(shape.iterations, shape.interval_s)
            if shape.cancel_every and i % shape.cancel_every == shape.cancel_every - 1:
                tasks.append(asyncio.create_task(self._cancel_later(op_id, shape)))
            await asyncio.sleep(shape.spacing_s * (0.5 + self.rng.random()))
        await asyncio.gather(*tasks)

    async def _cancel_later(self, op_id: str, shape: LoadShape) -> None:
        await asyncio.sleep(shape.interval_s * shape.iterations * self.rng.uniform(0.2, 0.6))
        await self.cancel(op_id)

    async def wait_verdicts(self, timeout: float = TERMINAL_WAIT_S) -> None:
        """Until every operation of the load has a verdict, or `timeout` (the checker says which did not)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pending = [a.op_id for a in self.history.acked if a.kind == "command"]
        while pending and loop.time() < deadline:
            views = []
            for op in pending:
                with contextlib.suppress(Exception):
                    views.append((op, await self.client.view(op)))
            done = {op for op, v in views if v.terminal}
            pending = [op for op in pending if op not in done]
            if pending:
                await asyncio.sleep(0.5)

    async def normal_operation(self, healed_at: float, timeout: float = TERMINAL_WAIT_S) -> None:
        """A short dummy after healing: its status, and the time from heal to its verdict."""
        loop = asyncio.get_running_loop()
        cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=3, interval_s=0.1)
        try:
            await publish(self.client.js, subjects.command(cmd), encode(cmd), subjects.command_msg_id(cmd.op_id),
                          retry_for=timeout)
        except Exception as exc:
            self.history.after_heal_status = f"unsubmitted ({type(exc).__name__})"
            return
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            with contextlib.suppress(Exception):
                view = await self.client.view(cmd.op_id)
                if view.terminal:
                    self.history.after_heal_status = view.status
                    if view.status == "completed":
                        self.history.recover_s = loop.time() - healed_at
                    return
            await asyncio.sleep(0.2)
        self.history.after_heal_status = "still running"

    async def collect(self) -> Stored:
        """What the streams hold for the load's operations, read until the reads settle."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_S
        while True:
            stored = await self._read()
            held = set(stored.raw)
            missing = [k for k in self.history.seen - held if not superseded(k, held)]
            if not missing or loop.time() > deadline:
                return stored
            await asyncio.sleep(0.5)

    async def _read(self) -> Stored:
        stored = Stored()
        mine = self._mine

        def on_raw(subject: str, data: bytes) -> None:
            try:
                ev = decode_event_on(subject, data)
            except DecodeError:
                return
            if ev.op_id in mine:
                stored.raw.append((subject, ev.actor, getattr(ev, "seq", 0)))

        await read_events(self.client.js, [subjects.OPS_ALL], on_raw)
        for op in self.op_ids:
            stored.proven[op] = list(await read_proven(self.client.js, op))
        for a in self.history.acked:
            if a.kind != "cancel":
                continue
            with contextlib.suppress(Exception):
                msg = await self.client.js.get_msg(a.stream, a.seq)
                if msg.subject == a.subject:
                    stored.cancels_held.add((a.stream, a.seq))
        return stored
