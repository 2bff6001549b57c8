"""orchestrator: KTRDR's ServiceOrchestrator as an actor.

Consumes CMD, validates each command off the event loop (a bad one gets `rejected` with a reason a
person can act on), creates the operation, honours a cancel recorded before the operation existed,
routes its work to `work.<domain>.<pool>`, and runs workflows (a training is a parent operation with
data children, then a training child; ktrdr/workflows.py decides each step). It supervises every live
operation: a worker that stops heartbeating loses it (redelivered to a replica or failed with the
reason), a pool with no live worker is said out loud and then fails the operation, and a deadline
cancels it with reason `deadline`. Its state is the fold of the OPS stream, rebuilt on start: nothing
lives only in its memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from nats.aio.msg import Msg
from nats.js import api as js_api

from actors._leases import drop
from actors._pull import pull_loop
from actors.runtime import Actor
from events import subjects
from events.codec import DecodeError, decode_command, decode_event, decode_heartbeat, encode, sniff_op_id
from events.messages import (
    ROLE_FOR_DOMAIN,
    CancelOperation,
    CancelRequested,
    Command,
    Event,
    OperationCancelled,
    OperationCreated,
    OperationFailed,
    OperationProgress,
    OperationRejected,
    OperationStarted,
    ProgressState,
    StartTraining,
    WorkItem,
)
from ktrdr import commands, workflows
from ktrdr.errors import KtrdrError
from ktrdr.operations import OperationView, fold
from ktrdr.rendering import ProgressRenderer
from ktrdr.training.checkpoint_store import CheckpointStore
from ktrdr.transport import last_message, publish, read_events

MAX_REASON = 2000


@dataclass
class Tracked:
    """A live operation as the orchestrator follows it."""

    view: OperationView
    last_seen: float = field(default_factory=time.monotonic)
    queued_since: float = field(default_factory=time.monotonic)
    deadline_fired: bool = False
    cancel_handled: bool = False
    pool_note: str = ""
    seen: set[tuple[str, int, str]] = field(default_factory=set)


@dataclass
class Workflow:
    plan: list[Command]
    children: dict[str, OperationView] = field(default_factory=dict)
    lines: dict[str, str] = field(default_factory=dict)
    cancels_sent: set[str] = field(default_factory=set)
    last_progress: tuple[float, str] = (-1.0, "")
    last_emit: float = 0.0  # monotonic
    last_step: str = ""
    held: ProgressState | None = None  # the newest progress not yet said (throttled)
    flush: asyncio.TimerHandle | None = None


@dataclass
class LiveActor:
    role: str
    domain: str
    pools: list[str]
    busy: list[str]
    seen: float


RECONNECT_GRACE_S = 2.0  # after the orchestrator reconnects, the others get this long to reconnect too


class Orchestrator(Actor):
    role = "orchestrator"
    provisions = True

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.live: dict[str, Tracked] = {}
        self.known: set[str] = set()
        self.workflows: dict[str, Workflow] = {}
        self.actors: dict[str, LiveActor] = {}
        self._buffer: list[tuple[str, bytes]] | None = []
        self._advancing: set[str] = set()
        self._since = time.monotonic()
        self._deaf = False  # disconnected from NATS: silence from workers then says nothing about them

    # ------------------------------------------------------------------ start
    async def on_start(self) -> None:
        assert self.js is not None and self.nc is not None
        # Follow live events first (buffered), then read the stored ones, so nothing falls between.
        await self.nc.subscribe(subjects.OPS_ALL, cb=self._guard(self._on_ops_msg, subjects.OPS_ALL))
        await self.nc.subscribe(subjects.kv_updates(subjects.ACTORS_BUCKET),
                                cb=self._guard(self._on_presence, "presence"))
        await self._rebuild()
        await self.js.add_consumer(subjects.STREAM_CMD, js_api.ConsumerConfig(
            name=subjects.ORCHESTRATOR_CONSUMER, durable_name=subjects.ORCHESTRATOR_CONSUMER,
            filter_subject=subjects.CMD_ALL,
            ack_policy=js_api.AckPolicy.EXPLICIT, ack_wait=30.0, max_deliver=10))
        psub = await self.js.pull_subscribe_bind(durable=subjects.ORCHESTRATOR_CONSUMER, stream=subjects.STREAM_CMD)
        self.spawn(pull_loop(psub, self._on_command, stopped=lambda: self.stopping, on_fault=self.on_fault,
                             batch=16), name=f"{self.id}-commands")
        self.spawn(self._supervise_loop(), name=f"{self.id}-supervise")

    async def _rebuild(self) -> None:
        """Live operations and workflows from the stored lifecycle events (survives any restart)."""
        assert self.js is not None
        views: dict[str, OperationView] = {}

        def on_msg(_subject: str, data: bytes) -> None:
            try:
                ev = decode_event(data)
            except DecodeError:
                return
            if subjects.is_op_id(ev.op_id):
                fold(views.setdefault(ev.op_id, OperationView(op_id=ev.op_id)), ev)

        await read_events(self.js, subjects.lifecycle_filters(), on_msg)
        self.known.update(views)
        for op_id, view in views.items():
            if not view.terminal and view.created_at is not None:
                self.live[op_id] = Tracked(view)
        for op_id, tracked in list(self.live.items()):
            if tracked.view.children:
                await self._load_workflow(op_id, views)
        buffered, self._buffer = self._buffer or [], None
        for subject, data in buffered:
            await self._apply(subject, data)
        for op_id in [o for o, t in self.live.items() if t.view.status == "queued" and not t.view.children]:
            view = self.live[op_id].view
            if view.cancel_requested:  # recorded while no orchestrator ran
                await self._finish(op_id, OperationCancelled(
                    op_id=op_id, where="queued, before any worker started it",
                    reason=view.cancel_reason or "cancel requested",
                    reason_code=view.cancel_reason_code or "user",  # type: ignore[arg-type]
                    message="Operation cancelled before it started"))
            else:
                await self._dispatch_again(op_id)
        for op_id in list(self.workflows):
            await self._advance(op_id)

    async def _load_workflow(self, op_id: str, views: dict[str, OperationView]) -> None:
        view = self.live[op_id].view
        try:
            cmd = decode_command(encode(view.command))
            assert isinstance(cmd, StartTraining)
            symbols, timeframes = await asyncio.to_thread(commands.training_inputs, cmd)
        except (DecodeError, KtrdrError, AssertionError) as exc:
            await self._finish(op_id, OperationFailed(op_id=op_id, error=f"cannot resume the workflow: {exc}",
                                                      error_code="internal"))
            return
        wf = Workflow(workflows.plan_training(cmd, symbols, timeframes))
        for child in wf.plan:
            if child.op_id in views:
                wf.children[child.op_id] = views[child.op_id]
        self.workflows[op_id] = wf

    async def _dispatch_again(self, op_id: str) -> None:
        """A queued operation's work item, published again after a restart: the orchestrator may have
        died between creating the operation and routing it. Duplicates are harmless (same msg id
        within the window; after it, workers drop an item whose operation runs or ended)."""
        view = self.live[op_id].view
        try:
            cmd = decode_command(encode(view.command))
        except DecodeError:
            return
        await self._route(cmd)

    # ------------------------------------------------------------------ events in
    async def _on_ops_msg(self, msg: Msg) -> None:
        if self._buffer is not None:
            self._buffer.append((msg.subject, msg.data))
            return
        await self._apply(msg.subject, msg.data)

    async def _apply(self, subject: str, data: bytes) -> None:
        parsed = subjects.parse_ops_subject(subject)
        if parsed is None or not subjects.is_op_id(parsed[1]):
            return
        _domain, op_id, name = parsed
        if name == CancelOperation.name:
            return  # a cancel request is handled by on_cancel_request (the broadcast), not folded here
        tracked = self.live.get(op_id)
        if name == OperationProgress.name:
            if tracked is not None:
                tracked.last_seen = time.monotonic()
                if tracked.view.parent_op_id in self.workflows:
                    self._fold(tracked, data)
                    await self._child_progress(tracked)
            return
        if tracked is None and name == OperationCreated.name and op_id not in self.known:
            tracked = self.live[op_id] = Tracked(OperationView(op_id=op_id))
        if tracked is None:
            return
        ev = self._fold(tracked, data)
        if ev is None:
            return
        if isinstance(ev, OperationStarted):
            tracked.last_seen = time.monotonic()
        if tracked.view.terminal:
            await self._ended(op_id, tracked)
        elif tracked.view.parent_op_id in self.workflows:
            await self._child_progress(tracked)

    def _fold(self, tracked: Tracked, data: bytes) -> Event | None:
        try:
            ev = decode_event(data)
        except DecodeError:
            return None  # garbage on an ops subject is nobody's event
        if ev.op_id != tracked.view.op_id:
            return None
        key = (ev.actor, getattr(ev, "seq", 0), ev.ts.isoformat())
        if key in tracked.seen and not isinstance(ev, OperationProgress):
            return None  # our own event, applied when we published it
        tracked.seen.add(key)
        fold(tracked.view, ev)
        return ev

    async def _ended(self, op_id: str, tracked: Tracked) -> None:
        self.live.pop(op_id, None)
        self.known.add(op_id)
        if self.js is not None:
            with contextlib.suppress(Exception):
                await drop(await self.js.key_value(subjects.LEASES_BUCKET), op_id)
            if tracked.view.domain == StartTraining.domain and not tracked.view.children:
                # an ended training is never resumed: its checkpoint goes (the trainer removes it
                # itself when it ends the op; this covers a verdict of ours: worker lost, queued cancel)
                with contextlib.suppress(Exception):
                    await CheckpointStore(self.js).delete(op_id)
        parent = tracked.view.parent_op_id
        if parent in self.workflows:
            self.workflows[parent].children[op_id] = tracked.view
            await self._advance(parent)
        self.workflows.pop(op_id, None)

    async def _on_presence(self, msg: Msg) -> None:
        key = subjects.kv_key_of(subjects.ACTORS_BUCKET, msg.subject)
        op = (msg.headers or {}).get("KV-Operation")
        if op in ("DEL", "PURGE") or not msg.data:
            self.actors.pop(key, None)
            return
        try:
            hb = decode_heartbeat(msg.data)
        except DecodeError:
            return
        now = time.monotonic()
        self.actors[key] = LiveActor(hb.role, hb.domain, hb.pools, hb.busy, now)
        for op_id in hb.busy:
            live = self.live.get(op_id)
            if live is not None:
                live.last_seen = now

    # ------------------------------------------------------------------ publishing our own events
    async def _publish(self, ev: Event) -> None:
        await self.publish_event(ev)
        tracked = self.live.get(ev.op_id)
        if tracked is not None:  # apply now; the echo from the subscription is then skipped
            tracked.seen.add((ev.actor, ev.seq, ev.ts.isoformat()))
            fold(tracked.view, ev)

    async def _finish(self, op_id: str, ev: Event) -> None:
        tracked = self.live.get(op_id)
        if tracked is None or tracked.view.terminal:
            return
        await self._publish(ev)
        await self._ended(op_id, tracked)

    async def _route(self, cmd: Command) -> None:
        assert self.js is not None
        item = WorkItem(op_id=cmd.op_id, domain=cmd.domain, command=cmd)
        await publish(self.js, subjects.work(cmd.domain, cmd.pool), encode(item), f"work-{cmd.op_id}")

    # ------------------------------------------------------------------ commands
    async def _on_command(self, msg: Msg) -> None:
        try:
            cmd = decode_command(msg.data)
        except DecodeError as exc:
            await self._malformed(msg, sniff_op_id(msg.data), f"malformed command on {msg.subject[:100]}: {exc}")
            return
        op_id = cmd.op_id
        if subjects.command_for_subject(msg.subject) is not type(cmd) or not subjects.is_op_id(op_id) \
                or subjects.domain_of(op_id) != cmd.domain:
            await self._malformed(msg, op_id, f"command {type(cmd).__name__} on {msg.subject[:100]} with op_id "
                                              f"{commands.short(op_id)}: expected subject {subjects.command(cmd)} "
                                              f"and an op_id like {subjects.new_op_id(cmd.domain)}")
            return
        if op_id in self.known or op_id in self.live:
            tracked = self.live.get(op_id)
            if tracked is not None and tracked.view.status == "queued" and tracked.view.command is not None \
                    and op_id not in self.workflows:
                # Created, maybe never routed (a route that failed midway, then the created event's
                # echo tracked it again): route it again, as after a restart; the item's fixed id dedupes.
                await self._dispatch_again(op_id)
            else:
                self.log.info("duplicate command for %s ignored", op_id)
            await msg.ack()
            return
        if cmd.parent_op_id is not None:
            await self._reject(op_id, "parent_op_id: only the orchestrator creates child operations", "validation")
        else:
            try:
                if isinstance(cmd, StartTraining):  # a strategy to parse: off the loop
                    await asyncio.to_thread(commands.validate, cmd)
                else:  # a few bounded field checks: cheaper inline than a thread hop
                    commands.validate(cmd)
            except KtrdrError as exc:
                await self._reject(op_id, str(exc), exc.code, getattr(exc, "field", None))
            else:
                try:
                    await self.create(cmd)
                except BaseException:
                    # Not created as far as we can tell (a publish or a read failed, e.g. during an
                    # election): forget it, so that the redelivery this message gets (nak) creates and
                    # routes it again, rather than being ignored as a duplicate while the operation
                    # stays queued with no work item. Every publish of create() carries a fixed
                    # Nats-Msg-Id (`<op>.created`, `work-<op>`): doing it again stores nothing twice.
                    self.live.pop(op_id, None)
                    self.workflows.pop(op_id, None)
                    raise
        await msg.ack()

    async def _malformed(self, msg: Msg, op_id: str | None, reason: str) -> None:
        if op_id and subjects.is_op_id(op_id) and op_id not in self.known and op_id not in self.live:
            await self._reject(op_id, reason, "malformed")
        else:
            self.log.warning("%s (dropped)", reason[:500])
        await msg.term()

    async def _reject(self, op_id: str, reason: str, code: str, field_path: str | None = None) -> None:
        self.known.add(op_id)
        if len(reason) > MAX_REASON:
            reason = reason[:MAX_REASON] + " ..."
        await self.publish_event(OperationRejected(op_id=op_id, reason=reason, error_code=code,
                                                   field=(field_path or "")[:200] or None))

    async def create(self, cmd: Command, *, children: list[str] | None = None) -> None:
        """Create an operation (validated), then cancel it at once if a cancel was recorded for it
        before it existed, else route it (or start its workflow)."""
        assert self.js is not None
        op_id = cmd.op_id
        op_type, description = commands.describe(cmd)
        plan: list[Command] = []
        if isinstance(cmd, StartTraining) and cmd.parent_op_id is None and cmd.data_mode != "none":
            symbols, timeframes = await asyncio.to_thread(commands.training_inputs, cmd)
            plan = workflows.plan_training(cmd, symbols, timeframes)
            op_type, description = "training_workflow", f"{description} (load data, then train)"
        self.live[op_id] = Tracked(OperationView(op_id=op_id))
        # The recorded-cancel read goes beside the creation: a cancel recorded after it is read is
        # handled by on_cancel_request (the operation is live from the line above).
        _, recorded = await asyncio.gather(
            self._publish(OperationCreated(op_id=op_id, domain=cmd.domain, op_type=op_type, command=cmd,
                                           description=description, parent_op_id=cmd.parent_op_id,
                                           children=[c.op_id for c in plan])),
            last_message(self.js, subjects.cancel(op_id)))
        if recorded is not None:
            with contextlib.suppress(DecodeError):
                fold(self.live[op_id].view, decode_event(recorded))
        if self.live[op_id].view.cancel_requested:
            view = self.live[op_id].view
            await self._finish(op_id, OperationCancelled(
                op_id=op_id, where="queued, before any worker started it",
                reason=view.cancel_reason or "cancel requested",
                reason_code=view.cancel_reason_code or "user",  # type: ignore[arg-type]
                message="Operation cancelled before it started"))
            return
        if plan:
            self.workflows[op_id] = Workflow(plan)
            await self._publish(OperationStarted(op_id=op_id, worker=self.id, message="workflow started"))
            await self._advance(op_id)
        else:
            await self._route(cmd)

    # ------------------------------------------------------------------ workflows
    async def _advance(self, op_id: str) -> None:
        wf, tracked = self.workflows.get(op_id), self.live.get(op_id)
        if wf is None or tracked is None or op_id in self._advancing:
            return
        self._advancing.add(op_id)
        try:
            for child in list(wf.children.values()):  # children still live: their current views
                live_child = self.live.get(child.op_id)
                if live_child is not None:
                    wf.children[child.op_id] = live_child.view
            d = workflows.advance(tracked.view, wf.plan, wf.children, wf.lines, wf.cancels_sent)
            for child_op in d.cancel:
                wf.cancels_sent.add(child_op)
                await self._cancel_child(op_id, child_op, tracked.view)
            for cmd in d.create:
                await self.create(cmd)
                wf.children[cmd.op_id] = self.live[cmd.op_id].view if cmd.op_id in self.live else \
                    OperationView(op_id=cmd.op_id, status="queued")
            if d.finish is not None:
                await self._finish(op_id, d.finish)
            elif d.progress is not None and (d.progress.percentage, d.progress.message) != wf.last_progress:
                self._parent_progress(op_id, wf, d.progress)
        finally:
            self._advancing.discard(op_id)
        if d.create and op_id in self.workflows:
            await self._advance(op_id)  # a child that ended at once (e.g. rejected) moves it on

    PARENT_PROGRESS_EVERY_S = 0.2

    def _parent_progress(self, op_id: str, wf: Workflow, progress: ProgressState) -> None:
        """A parent mirrors its running child, at most every PARENT_PROGRESS_EVERY_S (a step change
        goes out at once); the newest state held back goes out when the interval ends."""
        now = time.monotonic()
        if now - wf.last_emit >= self.PARENT_PROGRESS_EVERY_S or progress.phase != wf.last_step:
            if wf.flush is not None:
                wf.flush.cancel()
                wf.flush = None
            wf.held = None
            wf.last_progress, wf.last_emit, wf.last_step = (progress.percentage, progress.message), now, progress.phase
            self.emit_progress(op_id, progress)
            return
        wf.held = progress
        if wf.flush is None:
            wait = self.PARENT_PROGRESS_EVERY_S - (now - wf.last_emit)
            wf.flush = asyncio.get_running_loop().call_later(max(wait, 0.0), self._flush_parent, op_id)

    def _flush_parent(self, op_id: str) -> None:
        wf = self.workflows.get(op_id)
        if wf is None:
            return
        wf.flush = None
        if wf.held is not None and op_id in self.live and not self.live[op_id].view.terminal:
            held, wf.held = wf.held, None
            wf.last_progress, wf.last_emit = (held.percentage, held.message), time.monotonic()
            self.emit_progress(op_id, held)

    async def _child_progress(self, child: Tracked) -> None:
        parent = child.view.parent_op_id
        wf = self.workflows.get(parent or "")
        if wf is None or parent is None:
            return
        wf.children[child.view.op_id] = child.view
        if child.view.context is not None:  # the child's own words, without its percentage
            wf.lines[child.view.op_id] = ProgressRenderer.for_domain(child.view.domain).progress_text(child.view)
        await self._advance(parent)

    async def _cancel_child(self, parent_id: str, child_op: str, parent: OperationView) -> None:
        assert self.js is not None
        reason = f"parent {parent_id} is ending: {parent.cancel_reason or 'a sibling failed'}"
        await publish(self.js, subjects.cancel(child_op), encode(CancelOperation(
            op_id=child_op, reason=reason, reason_code="parent", requested_by=self.id)), f"{child_op}.cancel.parent")

    # ------------------------------------------------------------------ cancels
    async def on_cancel_request(self, op_id: str, cancel: CancelOperation) -> None:
        tracked = self.live.get(op_id)
        if tracked is None:
            self.log.info("cancel for %s: not a live operation; recorded for when it is created", op_id)
            return
        if tracked.cancel_handled:
            return
        tracked.cancel_handled = True
        await self._publish(CancelRequested(op_id=op_id, reason=cancel.reason, reason_code=cancel.reason_code,
                                            requested_by=cancel.requested_by))
        if op_id in self.workflows:
            await self._advance(op_id)
        elif tracked.view.status == "queued" and not self._claimed(op_id):
            # Nobody is working on it: cancel it here; a worker that picks it up later drops it.
            await self._finish(op_id, OperationCancelled(
                op_id=op_id, where="queued, before any worker started it", reason=cancel.reason,
                reason_code=cancel.reason_code, message="Operation cancelled before it started"))

    async def on_malformed_cancel(self, op_id: str, subject: str, error: str) -> None:
        await self.report_error(op_id, f"malformed cancel request ignored: {error}", subject)

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

    async def on_connection_lost(self) -> None:
        self._deaf = True

    async def on_connection_back(self) -> None:
        """Silence the orchestrator could not have heard does not count against anyone: every worker,
        actor and queue clock starts again once the others have had time to reconnect too (their
        reconnect attempts are RECONNECT_GRACE_S apart at most; leases on the server run on their own)."""
        heard_from = time.monotonic() + RECONNECT_GRACE_S
        self._deaf = False
        self._since = max(self._since, heard_from)
        for tracked in self.live.values():
            tracked.last_seen = max(tracked.last_seen, heard_from)
            tracked.queued_since = max(tracked.queued_since, heard_from)
        for actor in self.actors.values():
            actor.seen = max(actor.seen, heard_from)

    async def supervise(self) -> None:
        if self._deaf or self.nc is None or not self.nc.is_connected:
            return  # judging workers by a silence we could not hear would fail healthy operations
        now = time.monotonic()
        stale_after = max(self.settings.heartbeat_s * 3, 1.0)
        for key in [k for k, a in self.actors.items() if now - a.seen > max(self.settings.worker_timeout_s,
                                                                             stale_after)]:
            self.actors.pop(key, None)
        wall = datetime.now(UTC)
        for op_id, tracked in list(self.live.items()):
            view = tracked.view
            if view.deadline is not None and not tracked.deadline_fired and view.parent_op_id is None \
                    and wall >= view.deadline:
                tracked.deadline_fired = True
                await self._deadline(op_id, view)
            if op_id in self.workflows:
                continue
            if view.status == "running":
                await self._check_worker(op_id, tracked, now, stale_after)
            elif view.status == "queued" and now - self._since > 2 * stale_after:
                await self._check_pool(op_id, tracked, now, stale_after)

    async def _deadline(self, op_id: str, view: OperationView) -> None:
        assert self.js is not None and view.deadline is not None and view.created_at is not None
        allowed = (view.deadline - view.created_at).total_seconds()
        await publish(self.js, subjects.cancel(op_id), encode(CancelOperation(
            op_id=op_id, reason=f"deadline of {allowed:.0f} s passed", reason_code="deadline",
            requested_by=self.id)), f"{op_id}.cancel.deadline")

    def _alive(self, domain: str, pool: str | None, now: float, stale_after: float) -> list[LiveActor]:
        return [a for a in self.actors.values() if a.domain == domain and now - a.seen <= stale_after
                and (pool is None or pool in a.pools)]

    async def _check_worker(self, op_id: str, tracked: Tracked, now: float, stale_after: float) -> None:
        view = tracked.view
        silent = now - tracked.last_seen
        if silent <= self.settings.worker_timeout_s:
            return
        role = ROLE_FOR_DOMAIN.get(view.domain, view.domain)
        if not self._alive(view.domain, view.pool, now, stale_after):
            reason = (f"worker {view.worker or '?'} stopped heartbeating {silent:.0f} s ago and no {role} actor "
                      f"is alive to take the operation over; start one and run the operation again")
        elif silent > self.settings.orphan_timeout_s:
            reason = (f"worker {view.worker or '?'} stopped heartbeating {silent:.0f} s ago and no {role} "
                      f"picked the operation up again within {self.settings.orphan_timeout_s:g} s")
        else:
            return  # a live replica will get the redelivery when the lease (ack_wait) runs out
        self.log.warning("%s: %s", op_id, reason)
        await self._finish(op_id, OperationFailed(op_id=op_id, error=reason, error_code="worker_lost"))

    async def _check_pool(self, op_id: str, tracked: Tracked, now: float, stale_after: float) -> None:
        view = tracked.view
        pool = view.pool or subjects.DEFAULT_POOL
        role = ROLE_FOR_DOMAIN.get(view.domain, view.domain)
        if self._alive(view.domain, pool, now, stale_after):
            tracked.queued_since = now
            if tracked.pool_note:
                tracked.pool_note = ""
                self.emit_progress(op_id, ProgressState(message=f"a {role} in pool {pool} is alive", phase="queued"))
            return
        note = f"waiting for a {role} in pool {pool}: none alive"
        if tracked.pool_note != note:
            tracked.pool_note = note
            self.emit_progress(op_id, ProgressState(message=note, phase="queued"))
        waited = now - tracked.queued_since
        if waited > self.settings.orphan_timeout_s:
            await self._finish(op_id, OperationFailed(
                op_id=op_id, error=f"no {role} in pool {pool} came up within {self.settings.orphan_timeout_s:g} s "
                                   f"(waited {waited:.0f} s); start one (KTRDR_POOLS={pool}) and run it again",
                error_code="no_worker"))

