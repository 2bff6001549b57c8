"""The orchestrators' leader lease: of two or more orchestrators exactly one is active at a time.

The lease is one key in LEASES (events.subjects.LEADER_KEY, an events.messages.Leader) handled by the
same LeaseBucket the operation leases use: taken with create or compare-and-set, renewed with
compare-and-set on the holder's own revision every quarter of `leader_ttl_s`, and taken over by a
standby only once its revision stayed the same for a whole `leader_ttl_s` on the standby's own clock
(no clock is compared across machines). Every holder takes the next `epoch` (never reset: the key is
never deleted; a leader that steps down writes an empty holder), and every event an orchestrator
publishes carries it (the fold ignores an older epoch once a newer one acted on an operation).

Fencing on the holder's side: `epoch()` says whether this process may act now. It may while less
than FENCE_FRACTION of `leader_ttl_s` has passed on its own monotonic clock since it *sent* the
renewal that last succeeded: a standby waits a whole ttl from when it first *saw* that revision,
which is later, so an active orchestrator has stopped acting before anyone can take over. A process
paused with SIGSTOP (or starved of CPU) past that finds, when it runs again, that it may not act,
and its next renewal fails once a standby took over: it steps down (actors/orchestrator.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.kv import KeyValue

from actors._orch_leases import LeaseService
from actors._pull import Consumer, pull_loop
from events import subjects
from events.codec import DecodeError, decode, encode, sniff_op_id
from events.messages import Leader, OperationCreated
from ktrdr import tracing
from ktrdr.transport.leases import Entry, LeaseBucket

if TYPE_CHECKING:
    from actors.orchestrator import Orchestrator

FENCE_FRACTION = 0.8  # of the ttl since the last renewal was sent: past it the holder stops acting
RENEW_FRACTION = 0.25  # the holder renews this often (of the ttl)
POLL_FRACTION = 0.125  # a standby looks at the lease this often (of the ttl)
# A command taken by an orchestrator that died before acking it goes to the next one after this long
# (the intake marks one in progress while it handles it, actors/_orch_intake.py).
CMD_ACK_WAIT_S = 2.0
ACTIVATE_RETRY_FIRST_S, ACTIVATE_RETRY_MAX_S = 0.2, 5.0  # a failed activation is tried again after these


class NotLeader(Exception):
    """This orchestrator may not act now (a standby, or a leader whose lease may have passed)."""


def _leader(entry: Entry | None) -> Leader | None:
    if entry is None:
        return None
    try:
        return decode(entry.value, Leader)
    except DecodeError:
        return Leader()  # unreadable: nobody's; the epoch is lost, so take the revision as a floor


class Leadership:
    """One orchestrator's side of the leader lease. `clock` is monotonic seconds (tests pass their own)."""

    def __init__(self, kv: KeyValue, actor_id: str, ttl_s: float, *, clock: Callable[[], float] = time.monotonic):
        self.bucket = LeaseBucket(kv, ttl_s, clock=clock)
        self.actor_id, self.ttl_s, self.clock = actor_id, ttl_s, clock
        self.current = 0  # the epoch held (0: not the leader)
        self._revision: int | None = None
        self._valid_until = float("-inf")
        self.holder = ""  # the leader as last read (for status and logs)
        self.took_over_at: float | None = None  # when this process last became the leader (monotonic)

    @property
    def renew_every(self) -> float:
        return self.ttl_s * RENEW_FRACTION

    @property
    def poll_every(self) -> float:
        return self.ttl_s * POLL_FRACTION

    @property
    def active(self) -> bool:
        return self.current > 0 and self.clock() < self._valid_until

    def epoch(self) -> int:
        """The epoch this process may act under now; NotLeader when it may not."""
        if not self.active:
            raise NotLeader(f"{self.actor_id} does not hold the leader lease now")
        return self.current

    async def try_acquire(self) -> bool:
        """Become the leader if nobody holds the lease, or its holder handed it back, or left it
        unrenewed for a whole ttl on this clock; True when this process is the leader now."""
        sent = self.clock()
        entry = await self.bucket.read(subjects.LEADER_KEY)
        lease = _leader(entry)
        if entry is not None and lease is not None and lease.holder:
            self.holder = lease.holder
            if lease.holder != self.actor_id and self.bucket.silent_for(subjects.LEADER_KEY, entry) > 0:
                return False
        if entry is None or lease is None:
            epoch = 1
        else:  # an unreadable value lost its epoch: the revision is a floor (every epoch wrote one)
            epoch = (lease.epoch or entry.revision) + 1
        rev = await self.bucket.claim(subjects.LEADER_KEY, encode(Leader(holder=self.actor_id, epoch=epoch)),
                                      over=entry)
        if rev is None:
            return False
        self.current, self._revision, self.holder = epoch, rev, self.actor_id
        self._valid_until = sent + self.ttl_s * FENCE_FRACTION
        self.took_over_at = self.clock()
        return True

    async def renew(self) -> bool:
        """Keep the lease: False when it moved (a standby took over while we could not renew): from
        then on this process may not act. A server that does not answer raises (no verdict)."""
        if self._revision is None:
            return False
        sent = self.clock()
        rev = await self.bucket.renew(subjects.LEADER_KEY, encode(Leader(holder=self.actor_id, epoch=self.current)),
                                      self._revision)
        if rev is None:
            entry = await self.bucket.read(subjects.LEADER_KEY)
            lease = _leader(entry)
            if entry is not None and lease is not None and (lease.holder, lease.epoch) == (self.actor_id, self.current):
                # Our own earlier renewal, stored after all (its answer was lost: a leader change of
                # the bucket's stream mid-request): still ours. Its revision is taken, the fence not
                # moved (when it was stored is not known): the next renewal extends it.
                self._revision = entry.revision
                return True
            self.lost()
            return False
        self._revision = rev
        self._valid_until = sent + self.ttl_s * FENCE_FRACTION
        return True

    def lost(self) -> None:
        self.current, self._revision, self._valid_until = 0, None, float("-inf")

    async def step_down(self) -> None:
        """Hand the lease back (a clean stop): a standby takes it at once, with the next epoch."""
        if self._revision is None:
            return
        revision, epoch = self._revision, self.current
        self.lost()
        await self.bucket.renew(subjects.LEADER_KEY, encode(Leader(holder="", epoch=epoch)), revision)


class Succession:
    """The orchestrator's side of the lease: become active when it may (Orchestrator._activate), keep
    the lease while active, step down to standby when it moved, hand it back on a clean stop. What
    runs only while active (`tasks`, `subs`) is stopped on stepping down."""

    def __init__(self, orch: Orchestrator) -> None:
        self.orch = orch
        self.tasks: list[asyncio.Task[Any]] = []
        self.subs: list[Subscription | JetStreamContext.PullSubscription] = []
        self.takeovers = 0  # times this process became the active orchestrator
        self.ready = False  # the current activation finished (it rebuilt, takes commands, grants leases)

    @property
    def lead(self) -> Leadership:
        assert self.orch.leadership is not None
        return self.orch.leadership

    async def start(self) -> None:
        """Become active at once when the lease is free (a first start, a clean hand-over), else a standby."""
        acquired = await self._try_acquire()
        self.orch.spawn(self.loop(), name=f"{self.orch.id}-leader")  # renews from now on, also while rebuilding
        if acquired:
            try:  # inline the first time: a fresh stack serves as soon as start returns
                await self.activate()
                self.takeovers += 1
            except Exception as exc:
                self.orch.log.warning("%s could not become active (%s: %s); trying again", self.orch.id,
                                      type(exc).__name__, exc)
                await self._undo()
                self.tasks.append(self.orch.spawn(self._activate(), name=f"{self.orch.id}-activate"))
        else:
            self.orch.log.info("%s is a standby: %s holds the leader lease", self.orch.id, self.lead.holder or "?")

    async def _activate(self) -> None:
        """Activate, trying again while we lead: an attempt that fails (a stream with no leader yet
        mid-election, a consumer not answering) leaves nothing half done, and holding the lease
        without acting would keep every other orchestrator from taking over."""
        delay = ACTIVATE_RETRY_FIRST_S
        while self.lead.current and not self.orch.stopping:
            try:
                await self.activate()
                self.takeovers += 1
                return  # (activate sets ready)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.orch.log.warning("%s could not become active (%s: %s); trying again in %.1f s", self.orch.id,
                                      type(exc).__name__, exc, delay)
                await self._undo()
                await asyncio.sleep(delay)
                delay = min(delay * 2, ACTIVATE_RETRY_MAX_S)

    async def activate(self) -> None:
        """Become the active orchestrator: follow live events first (buffered), then read the stored
        ones, so nothing falls between; then grant leases, take commands and supervise."""
        orch = self.orch
        assert orch.js is not None and orch.nc is not None and orch.leadership is not None
        started = time.monotonic()
        orch._reset()
        self.subs += [
            await orch.nc.subscribe(subjects.OPS_ALL, cb=orch._guard(orch._on_ops_msg, subjects.OPS_ALL)),
            await orch.nc.subscribe(subjects.kv_updates(subjects.ACTORS_BUCKET),
                                    cb=orch._guard(orch.supervisor.on_presence, "presence"))]
        await orch._rebuild()
        await resume_spans(orch)
        await orch.indexer.start()  # the operations index follows OPS from its watermark
        self.subs.append(await orch.nc.subscribe(subjects.REINDEX, cb=orch._guard(
            orch.discovery.counted("reindex", subjects.REINDEX, orch.indexer.on_reindex), "reindex")))
        orch.leases = await LeaseService.serve(orch)  # once the live operations are known
        self.subs.append(orch.leases.sub)
        await orch.js.add_consumer(subjects.STREAM_CMD, js_api.ConsumerConfig(
            name=subjects.ORCHESTRATOR_CONSUMER, durable_name=subjects.ORCHESTRATOR_CONSUMER,
            filter_subject=subjects.CMD_ALL, ack_policy=js_api.AckPolicy.EXPLICIT, ack_wait=CMD_ACK_WAIT_S,
            max_deliver=10))
        on_command = orch.discovery.counted("commands", subjects.CMD_ALL, orch.intake.on_command,
                                            subjects.ORCHESTRATOR_CONSUMER, kind="jetstream-pull",
                                            consumer=subjects.ORCHESTRATOR_CONSUMER)
        commands = Consumer(orch.nc, subjects.STREAM_CMD, subjects.ORCHESTRATOR_CONSUMER)
        self.tasks += [
            orch.spawn(pull_loop(commands, on_command, stopped=lambda: orch.stopping, on_fault=orch.on_fault,
                                 batch=orch.settings.orch_cmd_batch or 16,
                                 key=command_key if orch.settings.orch_cmd_batch else None),
                       name=f"{orch.id}-commands"),
            orch.spawn(orch.supervisor.loop(), name=f"{orch.id}-supervise")]
        self.tasks.append(await orch.schedules.start())  # firings of nats-server's message schedules
        self.ready = True
        orch.log.info("%s is the active orchestrator (leader epoch %d; %d live operations, %d read from the log; "
                      "ready in %.2f s)", orch.id, orch.leadership.current, len(orch.live), orch.rebuild_read,
                      time.monotonic() - started)

    async def _try_acquire(self) -> bool:
        try:
            return await self.lead.try_acquire()
        except Exception as exc:  # the server away: no verdict, look again
            self.orch.log.debug("leader lease not readable: %s", exc)
            return False

    async def loop(self) -> None:
        """Keep the leader lease while active (stepping down when it moved), take it when it passes."""
        lead = self.lead
        while not self.orch.stopping:
            await asyncio.sleep(lead.renew_every if lead.current else lead.poll_every)
            if lead.current:
                try:
                    kept = await lead.renew()
                except Exception as exc:  # no answer: no verdict; the fence lapses by itself meanwhile
                    self.orch.log.debug("leader lease not renewed: %s", exc)
                    continue
                if not kept:
                    await self.step_down("another orchestrator took the leader lease over")
            elif await self._try_acquire():
                self.tasks.append(self.orch.spawn(self._activate(), name=f"{self.orch.id}-activate"))

    async def step_down(self, why: str) -> None:
        """Stop acting at once (it may already not publish: the fence lapsed) and become a standby that
        knows nothing: the next time it leads it rebuilds from the log."""
        self.orch.log.warning("%s steps down to standby: %s", self.orch.id, why)
        self.lead.lost()
        await self._undo()  # (called from the lease loop, which is not one of `tasks`)

    async def _undo(self) -> None:
        """What an activation set up (subscriptions, the command loop, supervision), stopped; what it
        knew, forgotten."""
        for task in [t for t in self.tasks if t is not asyncio.current_task()]:
            task.cancel()
            self.tasks.remove(task)
        for sub in self.subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self.subs.clear()
        self.ready = False
        self.orch.op_spans.hand_over()  # the next leader continues them
        self.orch._reset()

    async def hand_back(self) -> None:
        """A clean stop: a standby takes over at once instead of after a lease time (and continues the
        operation spans ended here)."""
        self.orch.op_spans.hand_over()
        if self.orch.leadership is not None and self.lead.current:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.lead.step_down(), 1.0)

    def state(self) -> str:
        """What `ktrdr status` shows of this orchestrator."""
        if self.orch.leadership is None:
            return ""
        lead = self.lead
        if not lead.active:
            return f"standby (leader: {lead.holder or '?'})"
        return f"active, leader epoch {lead.current}" + ("" if self.ready else " (starting)")


def command_key(msg: Msg) -> str | None:
    """The operation a command is for (None when it does not say: handled alone): a batch's commands
    for one operation are handled one after another, in the order CMD holds them."""
    return sniff_op_id(msg.data)


async def resume_spans(orch: Orchestrator) -> None:
    """While tracing is on: each live operation this leader took over continues its operation span, a
    child of the one its `created` event's traceparent names (one read of OPS per live operation, only
    while tracing is on); parents first, so a child without one hangs under its parent's."""
    if not tracing.enabled():
        return
    assert orch.js is not None

    def depth(op_id: str) -> int:
        n, parent = 0, orch.live[op_id].view.parent_op_id
        while parent in orch.live and n < len(orch.live):
            n, parent = n + 1, orch.live[parent].view.parent_op_id
        return n

    for op_id in sorted(orch.live, key=depth):
        view = orch.live[op_id].view
        traceparent = None
        with contextlib.suppress(Exception):
            msg = await orch.js.get_last_msg(subjects.STREAM_OPS, subjects.ops(op_id, OperationCreated.name))
            traceparent = tracing.of_headers(msg.headers)
        orch.op_spans.resume(op_id, view.domain, getattr(view.command, "pool", "") or "", view.parent_op_id,
                             traceparent, orch.id)
