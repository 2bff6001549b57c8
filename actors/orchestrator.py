"""orchestrator: the ServiceOrchestrator as an actor, a shell around the decisions of ktrdr.ops.

It consumes CMD and validates each command (a bad one gets `rejected` with a reason a person can act
on), creates the operation, honours a cancel recorded before the operation existed, routes its work
to `work.<domain>.<pool>`, and runs workflows (ktrdr.ops.workflows decides each step). It supervises
every live operation (ktrdr.ops.supervision decides: a deadline passed, a worker gone silent, a pool
with nobody alive). Its state is the fold of the OPS stream, rebuilt on start: nothing lives only in
its memory. It decides nothing ktrdr.ops can decide; it applies the answers and talks to NATS. Its
helpers, one concern each: actors/_orch_intake.py (CMD in), _orch_workflows.py (the workflow runner),
_orch_supervisor.py (presence and supervision), _orch_leases.py (it alone grants operation leases and
publishes each grant as `started`). Its own progress and verdicts go out on orchestrator-only subject
tokens (OrchestratorFailed, ...); a worker's count only under the holder proof (ktrdr.ops.reader.admit).

Two or more may run: one is active through the leader lease (actors/_orch_leader.py), the others
are standbys that look at the lease and take over when it passes. Only the active one follows OPS,
takes commands, grants leases and supervises; every event it publishes carries its leader epoch
and is published only while its lease holds (EventPublisher.fence). A new active one rebuilds
everything from the log and goes on; one that finds its lease gone (it was paused or cut off past
it) steps down to standby and forgets what it knew.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Iterable

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from actors._leases import drop
from actors._orch_index import Indexer, live_views
from actors._orch_intake import CommandIntake
from actors._orch_leader import Leadership, NotLeader, Succession
from actors._orch_leases import LeaseService, unheld_cancel
from actors._orch_schedules import ScheduleRunner
from actors._orch_supervisor import Supervisor
from actors._orch_workflows import WorkflowRunner
from actors.runtime import Actor
from events import roles, subjects
from events.codec import DecodeError, decode_command, decode_event_on, encode
from events.messages import (
    AnyEvent,
    CancelOperation,
    CancelRequested,
    Command,
    Event,
    OperationCreated,
    OperationProgress,
    OperationStarted,
    OrchestratorProgress,
    StartTraining,
    WorkItem,
)
from events.proof import HEADER
from ktrdr import tracing
from ktrdr.ops import OperationView, fold, intake, verdicts
from ktrdr.ops.reader import admit, fold_trusted
from ktrdr.ops.supervision import Tracked
from ktrdr.training.checkpoint_store import CheckpointStore
from ktrdr.transport import last_message, publish

KNOWN_ENDED_MAX = 10_000  # ended operations remembered (a command for an older one asks OPS)


class RecentIds:
    """A bounded set of operation ids: the newest `size` added (oldest out)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: collections.OrderedDict[str, None] = collections.OrderedDict()

    def add(self, op_id: str) -> None:
        self._ids[op_id] = None
        self._ids.move_to_end(op_id)
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)

    def update(self, op_ids: Iterable[str]) -> None:
        for o in op_ids:
            self.add(o)

    def __contains__(self, op_id: object) -> bool:
        return op_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)


class Orchestrator(Actor):
    role = roles.ORCHESTRATOR
    provisions = True

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.live: dict[str, Tracked] = {}
        # Operations that ended lately (a command for one is a duplicate); older ones are looked up
        # in OPS (CommandIntake.recorded), so memory holds the live work, not the history.
        self.known = RecentIds(KNOWN_ENDED_MAX)
        self.rebuild_read = 0  # operations the last rebuild read from the log (the live ones, with an index)
        self.workflows = WorkflowRunner(self)
        self.intake = CommandIntake(self)
        self.supervisor = Supervisor(self)
        self.indexer = Indexer(self)
        self.schedules = ScheduleRunner(self)
        self._buffer: list[tuple[str, bytes, str | None]] | None = []
        self.leases: LeaseService | None = None
        self.dropped = 0  # live ops messages whose body its subject does not prove (the rebuild's: reader)
        self.leadership: Leadership | None = None
        self.succession = Succession(self)  # the leader lease's side: active or standby
        self.op_spans = tracing.OpSpans(self.role)  # the operations' spans while tracing is on

    def _track(self, view: OperationView) -> Tracked:
        now = time.monotonic()
        tracked = self.live[view.op_id] = Tracked(view, last_seen=now, queued_since=now)
        return tracked

    # ------------------------------------------------------------------ start
    async def on_start(self) -> None:
        assert self.js is not None and self.publisher is not None
        self.leadership = Leadership(await self.js.key_value(subjects.LEASES_BUCKET), self.id,
                                     self.settings.leader_ttl_s)
        self.publisher.fence = self.leadership.epoch  # nothing goes out unless we lead (and with our epoch)
        await self.succession.start()

    def _reset(self) -> None:
        """Forget everything derived from the log: an active orchestrator rebuilds it."""
        self.live, self.known = {}, RecentIds(KNOWN_ENDED_MAX)
        self.workflows, self.intake, self.supervisor = WorkflowRunner(self), CommandIntake(self), Supervisor(self)
        self.schedules.stop()
        self.indexer, self.schedules = Indexer(self), ScheduleRunner(self)
        self._buffer, self.leases = [], None

    async def on_stop(self) -> None:
        await self.succession.hand_back()

    def presence_state(self) -> str:
        return self.succession.state()

    async def on_fault(self, exc: BaseException, where: str) -> None:
        if isinstance(exc, NotLeader):  # a step that lost the lease half way: the next leader redoes it
            self.log.info("%s: not done, %s", where, exc)
            return
        await super().on_fault(exc, where)

    async def _rebuild(self) -> None:
        """Live operations and workflows from the stored lifecycle events (survives any restart)."""
        assert self.js is not None
        views = await live_views(self.js, self.log)
        self.rebuild_read = len(views)
        self.known.update(o for o, v in views.items() if v.terminal)
        for view in views.values():
            if not view.terminal and view.created_at is not None:
                self._track(view)
        for op_id in [o for o, t in self.live.items() if t.view.children]:
            await self.workflows.load(op_id, self.live[op_id].view, views)
        buffered, self._buffer = self._buffer or [], None
        for subject, data, proof in buffered:
            await self._apply(subject, data, proof)
        for op_id in [o for o, t in self.live.items() if t.view.status == "queued" and not t.view.children]:
            view = self.live[op_id].view
            if not view.cancel_requested and (raw := await last_message(self.js, subjects.cancel(op_id))) \
                    and (ev := self._decoded(subjects.cancel(op_id), raw)) is not None:
                fold(view, ev)  # a user's cancel (OPS_CANCELS) that no orchestrator heard: none was active
            if view.cancel_requested:  # recorded while no orchestrator ran
                await self.finish(op_id, verdicts.recorded_cancel(view))
            else:  # it may have died between creating the operation and routing it
                await self.dispatch_again(op_id)
        for op_id in list(self.workflows):
            await self.workflows.advance(op_id)

    async def dispatch_again(self, op_id: str) -> None:
        """A queued operation's work item, published again. Duplicates are harmless (same msg id within
        the window; after it, workers drop an item whose operation runs or ended)."""
        with contextlib.suppress(DecodeError):
            await self._route(decode_command(encode(self.live[op_id].view.command)))

    # ------------------------------------------------------------------ events in
    async def _on_ops_msg(self, msg: Msg) -> None:
        proof = msg.headers.get(HEADER) if msg.headers else None
        if self._buffer is not None:
            self._buffer.append((msg.subject, msg.data, proof))
            return
        await self._apply(msg.subject, msg.data, proof)

    async def _apply(self, subject: str, data: bytes, proof: str | None = None) -> None:
        parsed = subjects.parse_ops_subject(subject)
        if parsed is None or not subjects.is_op_id(parsed[1]) or parsed[2] == CancelOperation.name:
            return  # a cancel request is handled by on_cancel_request (the broadcast), not folded here
        _domain, op_id, name = parsed
        tracked = self.live.get(op_id)
        if name == OrchestratorProgress.name:  # ours (a parent's, a queued note): nothing to fold
            return
        if name == OperationProgress.name:  # the hot path: decoded only for a workflow's child
            if tracked is not None:
                tracked.last_seen = time.monotonic()
                if _progress_folded(self, tracked.view, data) and (ev := self._decoded(subject, data)) is not None:
                    for e in admit(tracked.view, subject, data, proof, ev):  # the holder's, once signed
                        fold(tracked.view, e)
                    if tracked.view.parent_op_id in self.workflows:
                        await self.workflows.child_moved(tracked.view)
            return
        if tracked is None and (name != OperationCreated.name or op_id in self.known):
            return
        ev = self._decoded(subject, data)
        if ev is None or ev.actor == self.id:
            return  # our own lifecycle events were folded when their publish returned (_publish)
        tracked = tracked or self._track(OperationView(op_id=op_id))
        for e in admit(tracked.view, subject, data, proof, ev):  # a worker's verdict only under the holder proof
            fold(tracked.view, e)
        if isinstance(ev, OperationStarted):
            tracked.last_seen = time.monotonic()
        if tracked.view.terminal:
            await self.ended(op_id, tracked)
        elif tracked.view.parent_op_id in self.workflows:
            await self.workflows.child_moved(tracked.view)

    async def ended(self, op_id: str, tracked: Tracked) -> None:
        self.live.pop(op_id, None)
        self.op_spans.end(op_id, tracked.view.status)
        self.known.add(op_id)
        # a workflow's child steps its parent first: the drops are 2-4 round trips (README, Sweeps)
        if tracked.view.parent_op_id in self.workflows:
            await self.workflows.child_moved(tracked.view)
        if self.js is not None and self.leadership is not None and self.leadership.active:
            await _release(self.js, tracked.view, self.leadership.bucket.kv)
        self.workflows.forget(op_id)
        self.schedules.op_ended(tracked.view)

    # ------------------------------------------------------------------ events out
    async def publish_own(self, ev: Event) -> None:
        """Publish one of our lifecycle events and fold it once stored; its echo is skipped (_apply).
        On publish, not on the echo: what follows a publish (honouring a recorded cancel, advancing a
        workflow) reads the view, and the echo is handled later, on the subscription's own task."""
        ev = await self.publish_event(ev)
        tracked = self.live.get(ev.op_id)
        if tracked is not None:
            fold_trusted(tracked.view, ev)  # a grant (`started`) sets the key the holder's events need

    async def finish(self, op_id: str, ev: Event) -> None:
        tracked = self.live.get(op_id)
        if tracked is not None and not tracked.view.terminal:
            await self.publish_own(ev)
            await self.ended(op_id, tracked)

    async def _route(self, cmd: Command) -> None:
        assert self.js is not None
        item = WorkItem(op_id=cmd.op_id, domain=cmd.domain, command=cmd)
        await publish(self.js, subjects.work(cmd.domain, cmd.pool, intake.priority_of(cmd)), encode(item),
                      self.ids.work(cmd.op_id),
                      headers=self.op_spans.headers(cmd.op_id))

    async def request_cancel(self, cancel: CancelRequested) -> None:
        """Its own cancel (deadline, parent): on its own subject, which every worker follows."""
        await self.on_cancel_request(cancel.op_id, cancel)

    def _decoded(self, subject: str, data: bytes) -> AnyEvent | None:
        return _decoded(self, subject, data)

    def live_view(self, op_id: str) -> OperationView | None:
        tracked = self.live.get(op_id)
        return tracked.view if tracked is not None else None

    # ------------------------------------------------------------------ cancels
    async def on_cancel_request(self, op_id: str, cancel: CancelOperation | CancelRequested) -> None:
        tracked = self.live.get(op_id)
        if tracked is None:
            self.log.info("cancel for %s: not a live operation; recorded for when it is created", op_id)
            return
        if tracked.cancel_handled:
            return
        tracked.cancel_handled = True
        await self.publish_own(CancelRequested(op_id=op_id, reason=cancel.reason, reason_code=cancel.reason_code,
                                            requested_by=cancel.requested_by))
        if op_id in self.workflows:
            await self.workflows.advance(op_id)
        elif (ended := await unheld_cancel(self.leases, tracked.view, self.supervisor.claimed(op_id), cancel)):
            await self.finish(op_id, ended)

    async def on_malformed_cancel(self, op_id: str, subject: str, error: str) -> None:
        await self.report_error(op_id, f"malformed cancel request ignored: {error}", subject)

    # ------------------------------------------------------------------ supervision
    async def on_connection_lost(self) -> None:
        self.supervisor.connection_lost()

    async def on_connection_back(self) -> None:
        self.supervisor.connection_back()


_NEXT_ATTEMPT = b'"next_attempt_at":"'  # ProgressState.next_attempt_at set (None encodes as null)


def _progress_folded(orch: Orchestrator, view: OperationView, data: bytes) -> bool:
    """Whether a progress event is decoded and folded: a workflow's child's (it moves its parent), and a
    retry's announcement (ktrdr.ops.retries: the supervisor lets the operation wait unheld); a cheap look
    at the bytes first, the hot path stays undecoded."""
    return view.parent_op_id in orch.workflows or _NEXT_ATTEMPT in data


def _decoded(orch: Orchestrator, subject: str, data: bytes) -> AnyEvent | None:
    """The event a message on an ops subject carries, or None: garbage, or a body that disagrees
    with its subject (another operation's id, another event type), is nobody's event, counted."""
    try:
        return decode_event_on(subject, data)
    except DecodeError as exc:
        orch.dropped += 1
        orch.log.debug("dropped a message on %s: %s", subject[:120], exc)
        return None


async def _release(js: JetStreamContext, view: OperationView, leases: KeyValue) -> None:
    """What an ended operation leaves behind: its lease, and a completed training's checkpoint (the
    trainer removes it itself when it saves the model; this covers a verdict of ours). A failed or
    cancelled training's checkpoint stays until `ktrdr ops retry` resumes from it or CHECKPOINTS'
    max age (KTRDR_OPS_MAX_AGE, 30 days) removes it. Best effort."""
    with contextlib.suppress(Exception):
        await drop(leases, view.op_id)
    if view.domain == StartTraining.domain and not view.children and view.status in ("completed", "rejected"):
        with contextlib.suppress(Exception):
            await CheckpointStore(js).delete(view.op_id)
