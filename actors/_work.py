"""The worker side of an actor: take work items from WORK and run each operation at most once at a
time in the whole system.

A worker joins one durable pull consumer per pool and priority (`work-<domain>-<pool>` on
`work.<domain>.<pool>` for normal, `work-high-<domain>-<pool>` on `work.<domain>.<pool>.high`, ...) and
takes high before normal before low (actors/_pull.py priority_pull_loop). For each item it:
1. decodes it and checks it belongs on this subject (else terminates it: a poison message never
   stays in the stream);
2. ignores it when this worker already runs that operation (a redelivery after a server restart);
3. reads the operation's stored lifecycle: runs only what the orchestrator created (a work item
   published by anyone else is dropped), drops what already ended, honours a recorded cancel, and
   runs the command as the orchestrator recorded and validated it (re-validated here);
4. asks the orchestrator for the operation's lease (actors/_leases.py): granted, the orchestrator
   publishes the `started` event naming this process's key; when another live worker holds it (or
   the orchestrator does not answer), hands the item back with a delay;
5. runs the actor's `handle()`, extends the ack deadline and renews the lease on every heartbeat,
   and publishes exactly one terminal event while it still holds the lease, then acks. Every held
   event it publishes carries the holder proof (actors/_publisher.py), so only this attempt's worker
   process can move or end the operation, whatever another process of its role publishes.
A cancel for shutdown or a lost lease hands the work back instead of ending it; those are this
worker's own reasons, never a cancel read from the wire or the log (one that said so made a worker hand
an operation back on every redelivery, forever: issue 18, F10).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec
from nats.aio.msg import Msg
from nats.js import api as js_api

from actors import _metrics
from actors._leases import Busy, Held, Leases, LeaseUnavailable
from actors._pull import Level, priority_pull_loop
from events import roles, subjects
from events.bounds import LEASE_REQUEST_TIMEOUT_S, MAX_REASON, PRIORITIES
from events.codec import DecodeError, decode_event_on, decode_work, short, sniff_op_id
from events.messages import (
    AnyCommand,
    AnyEvent,
    CancelOperation,
    CancelReason,
    CancelRequested,
    Context,
    Event,
    OperationCreated,
    OperationFailed,
    ProgressState,
)
from ktrdr import commands, tracing
from ktrdr.cancellation import HAND_BACK, CancellationToken
from ktrdr.errors import KtrdrError, OperationCancelledError
from ktrdr.ops import fold_all, retries, verdicts
from ktrdr.ops.reader import read_proven
from ktrdr.transport import last_message
from ktrdr.transport.connection import unavailable

log = logging.getLogger(__name__)
STILL_OURS_RETRY_S = 0.25  # how often a finished operation asks an orchestrator that did not answer
# An answer to "still ours?" asked ahead of the verdict (by the handler once its result is nearly
# ready, OperationContext.confirm_ours_early) stands for the verdict when it is at most this old; older, it is asked
# again. A renewal just granted holds the lease for a whole worker_timeout_s, so this is far inside it.
CONFIRM_FRESH_S = 1.0

if TYPE_CHECKING:
    from actors._actor import Actor


class OperationContext:
    """What a work handler sees of its operation: the command, its token, and progress out.

    `progress()` may be called from any thread (the trainer's loop runs outside the event loop)."""

    def __init__(self, actor: Actor, op_id: str, command: AnyCommand, token: CancellationToken,
                 attempt: int) -> None:
        self.actor = actor
        self.op_id = op_id
        self.domain = subjects.domain_of(op_id)
        self.command = command
        self.token = token
        self.attempt = attempt
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.last_progress: ProgressState | None = None

    def progress(self, progress: ProgressState | None = None, /, **fields: Any) -> None:
        state = progress if progress is not None else ProgressState(**fields)
        self.last_progress = state
        if threading.get_ident() == self._loop_thread:
            self.actor.emit_progress(self.op_id, state, self.attempt)
        else:
            self.loop.call_soon_threadsafe(self.actor.emit_progress, self.op_id, state, self.attempt)

    def update(self, *, message: str | None = None, context: Context | None = None, **fields: Any) -> None:
        """Re-emit the last progress with some fields changed (e.g. a pacing wait in the context)."""
        changes: dict[str, Any] = dict(fields)
        if message is not None:
            changes["message"] = message
        if context is not None:
            changes["context"] = context
        self.progress(msgspec.structs.replace(self.last_progress or ProgressState(), **changes))

    def confirm_ours_early(self) -> None:
        """Ask the orchestrator now whether the operation is still this worker's, while the handler
        finishes its last steps (the backtester: encoding and storing its curve), so the verdict need
        not wait for that round trip after them. The verdict still goes out only on a "yes"."""
        work = self.actor.work
        if work is not None:
            work.confirm_early(self.op_id)

    async def sleep(self, seconds: float, where: str) -> None:
        """Sleep, but wake at once on cancel and raise OperationCancelledError(where)."""
        if seconds > 0:
            await self.token.sleep(seconds)
        self.token.raise_if_cancelled(where)


@dataclass
class _Running:
    """An operation this worker has taken: from the first delivery on (before its lease is held), so a
    second delivery of the same item that arrives meanwhile is recognised and never runs beside it."""

    op_id: str
    msg: Msg  # the newest delivery: the one to ack, nak or extend
    held: Held | None = None
    token: CancellationToken = field(default_factory=CancellationToken)
    finishing: bool = False  # the verdict is being published: the heartbeat leaves the lease alone
    error: str | None = None  # why it failed (its verdict a failure), for the discovery counters
    confirming: asyncio.Task[bool] | None = None  # "still ours?" asked ahead of the verdict (confirm_early)
    confirmed_at: float = 0.0  # the loop time its answer came


class WorkRunner:
    def __init__(self, actor: Actor, domain: str, pools: list[str], max_concurrency: int) -> None:
        self.actor, self.domain, self.pools = actor, domain, pools
        self.slots = asyncio.Semaphore(max_concurrency)
        self.running: dict[str, _Running] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = False
        self.leases: Leases | None = None
        self._hand_back_by: float | None = None  # loop time a shutdown's hand-backs must be done by
        self.hand_backs_retried = 0  # hand-back requests asked again because no orchestrator answered

    @property
    def busy(self) -> list[str]:
        return list(self.running)

    async def start(self) -> None:
        a = self.actor
        assert a.js is not None and a.nc is not None
        self.leases = Leases(a.nc, self.domain, a.id, a.key, a.settings.worker_timeout_s)
        levels: dict[str, list[Level]] = {pool: [] for pool in self.pools}
        configs: list[js_api.ConsumerConfig] = []
        for pool in self.pools:
            for rank, prio in enumerate(PRIORITIES):  # one consumer per priority (events.subjects.work)
                name = subjects.work_consumer(self.domain, pool, prio)
                configs.append(js_api.ConsumerConfig(
                    # name + filter: the create call's subject carries both, which is all a worker's
                    # credentials allow (it cannot create a consumer that reads another domain's work)
                    name=name, durable_name=name,
                    filter_subject=subjects.work(self.domain, pool, prio),
                    ack_policy=js_api.AckPolicy.EXPLICIT, ack_wait=a.settings.worker_timeout_s,
                    max_deliver=a.settings.max_deliver, max_ack_pending=1000))
                levels[pool].append(Level(prio, rank, subjects.STREAM_WORK, name))
        # all at once: three per pool, and a replica that starts must be alive before a lost worker's
        # lease runs out (the supervisor fails the operation when nobody in its pool is)
        await asyncio.gather(*(a.js.add_consumer(subjects.STREAM_WORK, cfg) for cfg in configs))
        for cfg in configs:
            # discovery: one endpoint per consumer; a request per work item taken (its time: the run)
            name = cfg.durable_name or ""
            a.discovery.endpoint(name, cfg.filter_subject or "", name, kind="jetstream-pull", consumer=name)
        for pool in self.pools:
            self._loops.append(asyncio.create_task(
                priority_pull_loop(a.nc, a.js, levels[pool], self._spawn, stopped=lambda: self._stopping,
                                   on_fault=a.on_fault, slots=self.slots, aging_s=a.settings.priority_aging_s),
                name=f"{a.id}-work-{pool}"))

    def stop_taking(self) -> None:
        self._stopping = True
        for t in self._loops:
            t.cancel()

    def cancel_all(self, reason: str, code: Any) -> None:
        for run in self.running.values():
            run.token.cancel(reason, code=code, requested_by=self.actor.id)

    def shut_down(self, grace_s: float) -> float:
        """Stop the running work for this worker's shutdown: each operation hands its lease back,
        asking again while no orchestrator answers, for up to `grace_s`; how long the stop should
        wait for them (the grace, plus the last lease request's time)."""
        self._hand_back_by = asyncio.get_running_loop().time() + grace_s
        self.cancel_all("worker shutting down", "shutdown")
        return grace_s + LEASE_REQUEST_TIMEOUT_S + STILL_OURS_RETRY_S

    def on_cancel(self, cancel: CancelOperation | CancelRequested) -> None:
        """A cancel from the wire (a user's, or the orchestrator's own on its subject): it stops the work
        for good (_ending makes sure of it: only this worker's own shutdown or lost lease hands work back)."""
        run = self.running.get(cancel.op_id)
        if run is not None:
            # Not asked ahead here (confirm_early): tried, the renewal then reached the orchestrator
            # together with this very cancel, waited behind its handling of it, and the verdict came
            # later, not sooner (bench/research_steps.py, KTRDR_BENCH_STEPS_CANCEL=1: 43-55 ms
            # against 18-44 ms in three pairs).
            run.token.cancel(cancel.reason, code=_ending(cancel.reason_code), requested_by=cancel.requested_by)

    def confirm_early(self, op_id: str) -> None:
        """Start asking whether `op_id` is still ours (its lease renewed), so that its verdict, once
        ready, is published without that round trip after it (_confirmed). Once per run."""
        run = self.running.get(op_id)
        if run is None or run.held is None or run.confirming is not None:
            return
        loop = asyncio.get_running_loop()

        async def ask() -> bool:
            ours = await self._still_ours(run)
            run.confirmed_at = loop.time()
            return ours

        run.confirming = loop.create_task(ask(), name=f"confirm-{op_id}")

    async def on_beat(self) -> None:
        """Every heartbeat: extend the ack deadline and the lease of each running operation, all at
        once (a worker running many operations must not take one round trip each, in turn)."""
        runs = list(self.running.values())
        if runs:
            await asyncio.gather(*(self._beat(run) for run in runs))

    async def _beat(self, run: _Running) -> None:
        assert self.leases is not None
        with contextlib.suppress(Exception):
            await run.msg.in_progress()
        if run.held is None or run.finishing:
            return  # still being checked (no lease yet), or its verdict is being published
        renewals = _metrics.LEASE_RENEWALS
        try:
            if not await self.leases.renew(run.held):
                renewals.labels(self.actor.role, self.domain, "lost").inc()
                self.actor.log.warning("%s: lease of %s lost; stopping it without a verdict", self.actor.id,
                                       run.op_id)
                run.token.cancel("lease lost to another worker", code="lease_lost", requested_by=self.actor.id)
            else:
                renewals.labels(self.actor.role, self.domain, "ok").inc()
        except Exception as exc:  # server away: try again at the next beat
            renewals.labels(self.actor.role, self.domain, "error").inc()
            self.actor.log.debug("lease renewal failed: %s", exc)

    async def _spawn(self, msg: Msg) -> None:
        task = asyncio.create_task(self._take(msg))
        self.tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self.tasks.discard(t)
            self.slots.release()

        task.add_done_callback(done)

    async def _take(self, msg: Msg) -> None:
        t0 = time.perf_counter_ns()
        parsed = subjects.parse_work_subject(msg.subject)
        endpoint = self.actor.discovery.endpoints.get(subjects.work_consumer(*parsed)) if parsed else None
        error: str | None = None
        try:
            error = await self._take_item(msg)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            if endpoint is not None:
                endpoint.record(time.perf_counter_ns() - t0, error)

    async def _take_item(self, msg: Msg) -> str | None:
        """Take one delivery; what went wrong with it (a dropped item, a failed operation) or None."""
        a = self.actor
        try:
            item = decode_work(msg.data)
            if (item.op_id != item.command.op_id or not subjects.is_op_id(item.op_id)
                    or (subjects.parse_work_subject(msg.subject) or ("",))[0] != self.domain
                    or subjects.domain_of(item.op_id) != self.domain):
                raise DecodeError(f"work item for {item.op_id!r} does not belong on {msg.subject}")
        except (DecodeError, ValueError) as exc:
            # Only the orchestrator publishes work, and it validated the command: an item that does not
            # decode is forged (or from another version). Logged, and nothing is written under the op
            # id it names: a forger must not be able to put events into any operation's history.
            await a.report_error(None, f"malformed work item for {short(sniff_op_id(msg.data))} dropped: {exc}",
                                 msg.subject)
            await msg.term()
            return f"malformed work item dropped: {exc}"
        running = self.running.get(item.op_id)
        if running is not None:  # a redelivery of what this worker has taken: one run, the newest handle
            running.msg = msg
            with contextlib.suppress(Exception):
                await msg.in_progress()
            return None
        run = self.running[item.op_id] = _Running(item.op_id, msg)
        try:
            await self._check_and_run(run)
            return run.error
        finally:
            self.running.pop(item.op_id, None)
            if run.confirming is not None and not run.confirming.done():
                run.confirming.cancel()
            if self.leases is not None:
                self.leases.forget(item.op_id)

    async def _check_and_run(self, run: _Running) -> None:
        a = self.actor
        assert a.js is not None and self.leases is not None
        op_id = run.op_id
        with contextlib.suppress(Exception):
            await run.msg.in_progress()  # the checks below take a moment under load
        # Its lifecycle, and the last cancel a user recorded for it (OPS_CANCELS: one the orchestrator
        # has not honoured yet, e.g. while it was away, is there and nowhere else).
        read, cancel_raw = await asyncio.gather(read_proven(a.js, op_id, lifecycle=True, linger=True),
                                                last_message(a.js, subjects.cancel(op_id)))
        events: list[AnyEvent] = list(read)
        if cancel_raw is not None:
            with contextlib.suppress(DecodeError):
                events.append(decode_event_on(subjects.cancel(op_id), cancel_raw))
        created = next((e for e in events if isinstance(e, OperationCreated)), None)
        if created is None:
            # The read above may come from a replica still catching up (a restarted cluster node):
            # before calling the item forged, ask the OPS stream's leader (it stored the created
            # event before the orchestrator published this item). Seen dropping real work otherwise.
            created_subject = subjects.ops(op_id, OperationCreated.name)
            raw = await last_message(a.js, created_subject, from_leader=True)
            with contextlib.suppress(DecodeError):
                leader = decode_event_on(created_subject, raw) if raw else None
                if isinstance(leader, OperationCreated):
                    created, events = leader, [leader, *events]
        view = fold_all(events)
        if created is None or not roles.is_actor_of(created.actor, roles.ORCHESTRATOR):
            a.log.warning("%s: work item for an operation no orchestrator created; dropped", op_id)
            await run.msg.term()
            return
        if view.terminal:
            a.log.info("%s is already %s; dropping its work item", op_id, view.status)
            await run.msg.ack()
            return
        # The command is re-validated (pure, on a thread) while the lease is asked for; what it found
        # is acted on only once the lease is held: only the holder's verdict counts, a refusal too.
        validated = asyncio.ensure_future(asyncio.to_thread(commands.validate, created.command, created.ts))
        try:
            held = await self.leases.acquire(op_id)
        except LeaseUnavailable as exc:
            held = Busy(f"nobody ({exc})", 1.0)
        except BaseException:
            validated.cancel()  # killed meanwhile: what it found is of no use
            raise
        if isinstance(held, Busy):
            a.log.info("%s is held by %s; handing the redelivery back", op_id, held.holder)
            with contextlib.suppress(Exception):
                await validated  # not left running unobserved
            await run.msg.nak(delay=max(held.retry_in, 0.1))
            return
        run.held = held
        try:
            await validated
        except KtrdrError as exc:
            await a.publish_event(verdicts.refused(op_id, a.role, exc))
            with contextlib.suppress(Exception):
                await self.leases.release(held, done=True)
            await run.msg.ack()
            return
        if view.cancel_requested:  # a recorded cancel ends the operation: it never hands it back
            run.token.cancel(view.cancel_reason or "cancel requested", code=_ending(view.cancel_reason_code))
        await self._run(run, created.command, recorded_cancel=view.cancel_requested, created_at=created.ts)

    async def _run(self, run: _Running, command: AnyCommand, *, recorded_cancel: bool = False,
                   created_at: datetime | None = None) -> None:
        a = self.actor
        assert run.held is not None
        ctx = OperationContext(a, run.op_id, command, run.token, run.held.attempt)
        parsed = subjects.parse_work_subject(run.msg.subject)
        labels = (a.role, self.domain, parsed[1] if parsed else "")
        _metrics.OPERATIONS_STARTED.labels(*labels).inc()
        if created_at is not None:
            _metrics.QUEUE_WAIT.labels(*labels).observe(max((datetime.now(UTC) - created_at).total_seconds(), 0.0))
        in_flight = _metrics.WORK_IN_FLIGHT.labels(*labels)
        in_flight.inc()
        t0 = time.monotonic()
        try:
            # The work item's traceparent (the orchestrator's operation span): this attempt's run is its
            # child, and whatever the run does (segments, IB requests, the training child) is the run's.
            with tracing.span(f"run {self.domain}", run.op_id, parent=tracing.of_headers(run.msg.headers),
                              attrs={tracing.ROLE: a.role, "ktrdr.actor": a.id,
                                     "ktrdr.attempt": run.held.attempt}) as span:
                outcome = await self._outcome(run, ctx, recorded_cancel)
                if span is not None:
                    span.set_attribute("ktrdr.outcome", _metrics.outcome_of(outcome))
        except BaseException:
            in_flight.dec()
            raise
        # the end counted before in flight goes down: a scrape that sees it down sees the end
        ended = _metrics.outcome_of(outcome)
        _metrics.OPERATIONS_ENDED.labels(*labels, ended).inc()
        _metrics.OPERATION_DURATION.labels(*labels, ended).observe(time.monotonic() - t0)
        in_flight.dec()

    async def _outcome(self, run: _Running, ctx: OperationContext, recorded_cancel: bool) -> Event | None:
        """Run the operation and publish its verdict (none when it is handed back); the verdict."""
        a = self.actor
        op_id, token = run.op_id, run.token
        outcome: Event | None = None
        # A cancel recorded before it started ends it unrun; one that came with the grant (the
        # orchestrator's `started` was already out) stops the work at its first step, as any cancel.
        if recorded_cancel and token.is_cancelled and not token.hand_back:
            outcome = verdicts.cancelled_before_start(op_id, token.reason, token.reason_code)
            return outcome if await self._finish(run, ctx, outcome) else None
        try:
            if token.hand_back:
                token.raise_if_cancelled("queued, before it started")
            outcome = verdicts.completed(op_id, await a.handle(ctx))
        except OperationCancelledError as exc:
            if not token.hand_back:
                outcome = verdicts.cancelled_at(op_id, exc.where, token.reason or exc.reason, token.reason_code,
                                                a.cancelled_message(ctx, exc.where))
        except KtrdrError as exc:
            if await self._retry_later(run, ctx, exc):
                return None
            outcome = verdicts.failed(op_id, str(exc), exc.code)
        except asyncio.CancelledError:
            raise  # killed: leave the message unacked so JetStream redelivers it
        except Exception as exc:
            typed = unavailable(exc)  # NATS away for a step of the work: retryable, typed
            if typed is None:
                await a.on_fault(exc, f"work {op_id}")
                outcome = verdicts.internal_error(op_id, a.role, exc)
            elif await self._retry_later(run, ctx, typed):
                return None
            else:
                outcome = verdicts.failed(op_id, str(typed), typed.code)
        return outcome if await self._finish(run, ctx, outcome) else None

    async def _retry_later(self, run: _Running, ctx: OperationContext, exc: KtrdrError) -> bool:
        """A retryable failure with attempts left (ktrdr.ops.retries): say when the next attempt
        starts and why, and hand the work item back to JetStream with that delay (its redelivery is
        the next attempt, granted as any other); whether it did. Not once a cancel was asked for."""
        a = self.actor
        assert self.leases is not None and run.held is not None
        policy = retries.policy_for(ctx.command, a.settings.max_deliver)
        now = datetime.now(UTC)
        wait = retries.next_attempt(policy, run.held.attempt, exc.code, now, ctx.command.deadline)
        if wait is None or run.token.is_cancelled or not await self._still_ours(run):
            return False
        reason = str(exc)[:MAX_REASON]
        ctx.progress(msgspec.structs.replace(
            ctx.last_progress or ProgressState(), phase="retrying",
            message=retries.announce(policy, run.held.attempt, wait, reason),
            next_attempt_at=now + timedelta(seconds=wait), retry_reason=reason))
        _metrics.ATTEMPTS_RETRIED.labels(a.role, self.domain, exc.code).inc()
        await a.flush_progress(acked=True)
        await self._hand_back(run.held)
        with contextlib.suppress(Exception):
            await run.msg.nak(delay=wait)
        return True

    async def _hand_back(self, held: Held, until: float | None = None) -> bool:
        """Release the lease as handed back, asking again while the orchestrator does not answer (up to a
        lease time, or until `until`, a loop time): a hand-back that did not get through leaves the
        lease ours, and the redelivery would then run under the same attempt, with no `started` of its
        own (seen with NATS paused); one at shutdown leaves it to be taken over only once it has been
        silent for a lease time. Whether it got through."""
        assert self.leases is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.actor.settings.worker_timeout_s if until is None else until
        while True:
            try:
                await self.leases.release(held, done=False)
                return True
            except LeaseUnavailable:
                pass
            except Exception as exc:
                log.debug("handing back the lease of %s failed: %s", held.op_id, exc)
            if loop.time() > deadline:
                return False
            self.hand_backs_retried += 1
            await asyncio.sleep(STILL_OURS_RETRY_S)

    async def _finish(self, run: _Running, ctx: OperationContext, outcome: Event | None) -> bool:
        """Publish the verdict if the operation is still ours, else hand it back; whether it was published."""
        a = self.actor
        assert self.leases is not None and run.held is not None
        run.finishing = True
        if isinstance(outcome, OperationFailed):
            run.error = outcome.error
        if outcome is not None and await self._confirmed(run):
            await a.publish_event(outcome)
            with contextlib.suppress(Exception):
                await self.leases.release(run.held, done=True)
            with contextlib.suppress(Exception):
                await run.msg.ack()
            return True
        if run.token.reason_code == "shutdown":
            ctx.progress(msgspec.structs.replace(
                ctx.last_progress or ProgressState(),
                message=f"worker {a.id} stopping; handed back for redelivery"))
            # Asked again while no orchestrator answers (NATS paused, an orchestrator that lost its
            # leader lease meanwhile, a takeover under way) for the stop's grace, as a retry's is.
            by = self._hand_back_by if self._hand_back_by is not None else asyncio.get_running_loop().time()
            if not await self._hand_back(run.held, until=by):
                a.log.warning("%s: could not hand back the lease of %s before stopping; another worker takes it "
                              "once it has been silent for a lease time", a.id, run.op_id)
            with contextlib.suppress(Exception):
                await run.msg.nak()
        # A lost lease: another worker runs it now; nothing of ours may end it.
        return False

    async def _confirmed(self, run: _Running) -> bool:
        """Whether the verdict may go out: the answer asked ahead of it (confirm_early) when it is fresh,
        else asked now. A "no" is final (a lost lease is never regained)."""
        task, run.confirming = run.confirming, None
        if task is not None:
            try:
                ours = await task
            except Exception as exc:
                log.debug("early lease check of %s failed: %s", run.op_id, exc)
            else:
                if not ours or asyncio.get_running_loop().time() - run.confirmed_at <= CONFIRM_FRESH_S:
                    return ours
        return await self._still_ours(run)

    async def _still_ours(self, run: _Running) -> bool:
        assert self.leases is not None and run.held is not None
        # Only the orchestrator's "not yours" withholds the verdict. One that does not answer (a
        # takeover under way, a partition) is asked again for up to a lease time: a verdict published
        # into a gap where the orchestrator meanwhile failed the operation (`worker_lost`) would be
        # stored and ignored. Past that it is published: nobody else was granted the operation
        # without this worker's lease passing, and the fold counts this verdict only under our
        # grant's key (a newer grant's `started` would outrank it) (issue 18, F4; issue 19).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.actor.settings.worker_timeout_s
        while True:
            try:
                return await self.leases.renew(run.held)
            except LeaseUnavailable:
                pass
            except Exception as exc:
                log.debug("lease renewal before the verdict of %s failed: %s", run.held.op_id, exc)
            if loop.time() > deadline:
                return True
            await asyncio.sleep(STILL_OURS_RETRY_S)


def _ending(code: CancelReason | None) -> CancelReason:
    """The reason a cancel read from the wire or the log stops work with: its own, unless it names a
    hand-back reason (which no CancelOperation decodes with, nor a fold of one), then `user`."""
    return "user" if code is None or code in HAND_BACK else code
