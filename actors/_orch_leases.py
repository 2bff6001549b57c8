"""The orchestrator's lease service: it alone grants, renews and releases operation leases (it is the
only role that may write LEASES) and publishes each grant as the operation's `started` event.

A worker asks on `lease.<domain>.claim|renew|release` (core request/reply; its role may publish only
its own domain's, so NATS proves the requester's domain) with its actor id and its process's public
key, signed by that key (events.proof.statement); a renewal or release must be signed by the key
the lease names, so nobody else can keep a silent holder's lease alive or take it from a live one.
The takeover rule is the one it always was, on the orchestrator's clock: a lease whose revision
stayed unchanged for a whole lease time since the orchestrator first saw it may go to another
worker as the next attempt. An orchestrator that restarts has seen nothing yet, so it waits a whole
lease time before it calls any lease stale; meanwhile holders keep working and keep renewing.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from actors import _metrics
from events import proof, subjects
from events.codec import DecodeError, decode, encode
from events.messages import (
    CancelOperation,
    CancelRequested,
    Lease,
    LeaseReply,
    LeaseRequest,
    OperationCancelled,
    OperationStarted,
)
from ktrdr.ops import intake, verdicts
from ktrdr.transport.leases import Entry, LeaseBucket

if TYPE_CHECKING:
    from actors.orchestrator import Orchestrator
    from ktrdr.ops.view import OperationView


def _lease(entry: Entry | None) -> Lease | None:
    if entry is None:
        return None
    try:
        return decode(entry.value, Lease)
    except DecodeError:
        return Lease(holder="", attempt=0)  # unreadable: nobody's, the next attempt may take it


class LeaseService:
    def __init__(self, orch: Orchestrator, bucket: LeaseBucket) -> None:
        self.orch, self.bucket = orch, bucket
        self.sub: Subscription | None = None

    @classmethod
    async def serve(cls, orch: Orchestrator) -> LeaseService:
        """Answer lease requests from now on. Called once the live operations are rebuilt (a claim
        for one not yet known would be refused); until then a worker finds no responder, tries again."""
        assert orch.js is not None and orch.nc is not None
        kv = await orch.js.key_value(subjects.LEASES_BUCKET)
        service = cls(orch, LeaseBucket(kv, orch.settings.worker_timeout_s))
        service.sub = await orch.nc.subscribe(subjects.LEASE_ALL, cb=orch._guard(
            orch.discovery.counted("leases", subjects.LEASE_ALL, service.on_request), "lease"))
        return service

    async def on_request(self, msg: Msg) -> None:
        if self.orch.leadership is None or not self.orch.leadership.active:
            return  # not the leader now (paused past its lease): the active one answers, or nobody does
        parsed = subjects.parse_lease_subject(msg.subject)
        reply = LeaseReply(ok=False, error="not a lease request")
        try:
            req = decode(msg.data, LeaseRequest)
            if parsed is None or not subjects.is_op_id(req.op_id) or subjects.domain_of(req.op_id) != parsed[0]:
                raise DecodeError(f"{msg.subject[:80]} carries no lease request of its domain")
            verb = parsed[1]
            if not proof.verify_statement(req.key, proof.statement(verb, req.op_id, req.actor, req.key, req.attempt,
                                                                  req.done), req.sig):
                raise DecodeError("the request is not signed by the key it names")
            reply = await (self.claim(req) if verb == "claim" else self.keep(req, release=verb == "release"))
        except DecodeError as exc:
            reply = LeaseReply(ok=False, error=str(exc)[:300])
        except Exception as exc:  # the KV store away: the worker tries again
            reply = LeaseReply(ok=False, error=f"lease store unavailable: {type(exc).__name__}", retry_in=1.0)
        if msg.reply:
            await msg.respond(encode(reply))

    async def claim(self, req: LeaseRequest) -> LeaseReply:
        view = self.orch.live_view(req.op_id)
        if view is None or view.terminal:
            return LeaseReply(ok=False, error=f"{req.op_id} is not a live operation")
        if view.worker is None and view.attempts <= 0:
            # Never started: the first claim creates the lease without reading it first (one KV
            # round trip less between a work item and its `started`). The create is the same
            # compare-and-set as below; when the key exists (a reply that got lost, a handed-back
            # item) it fails and the read below decides as before.
            value = encode(Lease(holder=req.actor, attempt=1, key=req.key))
            if await self.bucket.claim(req.op_id, value, over=None) is not None:
                await self._started(req, 1)
                return LeaseReply(ok=True, attempt=1)
        entry = await self.bucket.read(req.op_id)
        lease = _lease(entry)
        if entry is None or lease is None:
            return await self._grant(req, max(view.attempts, 0) + 1, over=None)
        if lease.holder == req.actor and lease.key == req.key:  # ours already (a reply that got lost)
            if view.worker != req.actor or view.attempts != lease.attempt:
                await self._started(req, lease.attempt)
            return LeaseReply(ok=True, attempt=lease.attempt)
        if lease.holder:
            left = self.bucket.silent_for(req.op_id, entry)
            if left > 0:
                return LeaseReply(ok=False, holder=lease.holder, retry_in=left)
        reply = await self._grant(req, max(lease.attempt, view.attempts) + 1, over=entry)  # handed back, or silent
        if reply.ok and lease.holder:  # taken over from a holder that went silent
            _metrics.LEASE_TAKEOVERS.labels(subjects.domain_of(req.op_id)).inc()
        return reply

    async def _grant(self, req: LeaseRequest, attempt: int, over: Entry | None) -> LeaseReply:
        value = encode(Lease(holder=req.actor, attempt=attempt, key=req.key))
        if await self.bucket.claim(req.op_id, value, over=over) is None:
            return LeaseReply(ok=False, holder="another worker", retry_in=self.bucket.ttl_s / 4)
        await self._started(req, attempt)
        return LeaseReply(ok=True, attempt=attempt)

    async def _started(self, req: LeaseRequest, attempt: int) -> None:
        await self.orch.publish_own(OperationStarted(
            op_id=req.op_id, worker=req.actor, attempt=attempt, resumed=attempt > 1, key=req.key,
            message=f"picked up again by {req.actor} (attempt {attempt})" if attempt > 1 else ""))
        tracked = self.orch.live.get(req.op_id)
        if tracked is not None:
            tracked.last_seen = time.monotonic()

    async def seize(self, view: OperationView) -> bool:
        """Take the lease of an operation whose worker handed it back (no holder), so that no claim
        is granted after it; False when a worker holds it again (or the store is away)."""
        try:
            entry = await self.bucket.read(view.op_id)
            lease = _lease(entry)
            if lease is not None and lease.holder:
                return False
            value = encode(Lease(holder=self.orch.id, attempt=lease.attempt if lease else view.attempts))
            return await self.bucket.claim(view.op_id, value, over=entry) is not None
        except Exception as exc:  # the KV store away: the redelivery finds the recorded cancel
            self.orch.log.debug("seizing the lease of %s failed: %s", view.op_id, exc)
            return False

    async def keep(self, req: LeaseRequest, *, release: bool) -> LeaseReply:
        """A renewal (or a release) by the holder of the lease: same actor, attempt and key."""
        entry = await self.bucket.read(req.op_id)
        lease = _lease(entry)
        if entry is None or lease is None or (lease.holder, lease.attempt, lease.key) != (req.actor, req.attempt,
                                                                                           req.key):
            return LeaseReply(ok=False, lost=True)
        if release and req.done:
            ok = await self.bucket.release(req.op_id, entry.revision)
        else:
            holder = "" if release else req.actor  # handed back: the next worker takes it at once
            value = encode(Lease(holder=holder, attempt=req.attempt, key="" if release else req.key))
            ok = await self.bucket.renew(req.op_id, value, entry.revision) is not None
            if ok and release:  # checked after the hand-back, so a cancel folded meanwhile is seen
                await self._end_if_cancelled(req.op_id)
        return LeaseReply(ok=ok, attempt=req.attempt, lost=not ok)

    async def _end_if_cancelled(self, op_id: str) -> None:
        """A hand-back of an operation whose cancel is recorded: nobody runs it now, so it ends here
        (the cancel came while its worker was still announcing the wait)."""
        view = self.orch.live_view(op_id)
        if view is not None and view.cancel_requested and not view.terminal and await self.seize(view):
            await self.orch.finish(op_id, verdicts.cancelled_while_waiting(
                view, view.cancel_reason or "cancel requested", view.cancel_reason_code or "user"))


async def unheld_cancel(leases: LeaseService | None, view: OperationView, claimed: bool,
                        cancel: CancelOperation | CancelRequested) -> OperationCancelled | None:
    """The orchestrator's own verdict for a cancel of an operation nobody runs, or None (its worker
    ends it, or a later pick-up does): one still queued and unclaimed ends before it started; one
    waiting for its next attempt ends at once (not when the wait is over) once the orchestrator
    holds its handed-back lease, so no next attempt can be granted beside the verdict: a claim that
    won the race runs, and its worker honours the cancel. A hand-back that comes after the cancel
    (the worker was still announcing its wait) is ended by `LeaseService.keep` instead."""
    if intake.cancel_while_queued(view, claimed):
        return verdicts.cancelled_before_start(view.op_id, cancel.reason, cancel.reason_code)
    if intake.between_attempts(view) and leases is not None and await leases.seize(view):
        return verdicts.cancelled_while_waiting(view, cancel.reason, cancel.reason_code)
    return None
