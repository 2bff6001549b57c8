"""Supervision decisions: what to do about the live operations, given their views, a clock and who is
alive. No NATS and no clock reads here: the orchestrator passes `now` (monotonic seconds) and the
wall time, applies the actions `decide()` returns and publishes what they say.

The decisions, per live operation (a workflow's parent only has its deadline watched; its children
are operations of their own):
- a deadline passed: ask once for a cancel with reason `deadline` (FireDeadline);
- running, its worker silent past `worker_timeout_s`: fail it (`worker_lost`) when no actor of its
  domain and pool is alive to take it over, or when it stayed silent past `orphan_timeout_s`; with a
  live replica and within the orphan timeout, wait: the replica gets the redelivery;
- queued with nobody alive in its pool: say so once (SayQueuedNote), then fail it (`no_worker`) after
  `orphan_timeout_s`; a worker coming back clears the note and restarts the queue clock;
- actors not heard from for long are forgotten (ForgetActor).
Silence the orchestrator could not hear (it was disconnected, or it did not run: paused, starved)
counts against nobody: `decide` does nothing while disconnected, and `reconnect_grace` moves every
clock past the others' reconnect, also after a pass came `paused` late.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime

from events import subjects
from events.messages import ROLE_FOR_DOMAIN, OperationFailed
from ktrdr.ops import verdicts
from ktrdr.ops.view import OperationView

RECONNECT_GRACE_S = 2.0  # after the orchestrator reconnects, the others get this long to reconnect too


@dataclass
class Tracked:
    """A live operation as the orchestrator follows it: its view and the clocks supervision reads
    (monotonic seconds)."""

    view: OperationView
    last_seen: float  # the last sign of life of its worker (progress, started, a heartbeat naming it)
    queued_since: float  # since when nobody alive could take it (restarted whenever someone could)
    deadline_fired: bool = False
    cancel_handled: bool = False  # a cancel broadcast was answered (CancelRequested): the next is a repeat
    pool_note: str = ""  # the "waiting for ..." note said last ("" when none stands)
    # (stream sequence of its last stored progress, when read): read once its worker fell silent, so
    # that before failing it the orchestrator can tell a silent worker from one it did not hear
    progress_mark: tuple[int, float] | None = None


@dataclass
class Peer:
    """A live actor as its presence record announced it."""

    role: str
    domain: str
    pools: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    seen: float = 0.0  # monotonic: when its last heartbeat arrived


@dataclass(frozen=True)
class Limits:
    heartbeat_s: float
    worker_timeout_s: float
    orphan_timeout_s: float

    @property
    def stale_after(self) -> float:
        """An actor silent this long is not counted alive (three missed heartbeats, at least 1 s)."""
        return max(self.heartbeat_s * 3, 1.0)

    @property
    def forget_after(self) -> float:
        return max(self.worker_timeout_s, self.stale_after)


# ------------------------------------------------------------------------------------------ actions
@dataclass(frozen=True)
class FireDeadline:
    op_id: str
    allowed_s: float  # the deadline measured from the creation, for the cancel's reason


@dataclass(frozen=True)
class FailOperation:
    op_id: str
    event: OperationFailed


@dataclass(frozen=True)
class SayQueuedNote:
    op_id: str
    text: str


@dataclass(frozen=True)
class ClearNote:
    op_id: str
    text: str  # what to say instead: someone is alive in the pool again


@dataclass(frozen=True)
class RestartQueueClock:
    op_id: str
    at: float


@dataclass(frozen=True)
class ForgetActor:
    key: str


Action = FireDeadline | FailOperation | SayQueuedNote | ClearNote | RestartQueueClock | ForgetActor


# ---------------------------------------------------------------------------------------- decisions
def decide(live: Mapping[str, Tracked], peers: Mapping[str, Peer], *, now: float, wall: datetime, since: float,
           limits: Limits, workflows: Container[str] = (), connected: bool = True) -> list[Action]:
    """Every action due now. `since` is when the orchestrator began hearing the others (its start,
    or a reconnect plus the grace): queues are judged only once everyone has had time to announce
    itself. `workflows` holds the parents the workflow runner drives."""
    if not connected:
        return []  # judging workers by a silence we could not hear would fail healthy operations
    actions: list[Action] = [ForgetActor(key) for key, p in peers.items() if now - p.seen > limits.forget_after]
    for op_id, tracked in live.items():
        fired = deadline(tracked, wall)
        if fired is not None:
            actions.append(fired)
        if op_id in workflows:
            continue
        if tracked.view.status == "running" and not retry_due(tracked, wall, limits):
            actions += worker_silent(tracked, peers, now, limits)
        elif tracked.view.status == "queued" and now - since > 2 * limits.stale_after:
            actions += pool_empty(tracked, peers, now, limits)
    return actions


def retry_due(tracked: Tracked, wall: datetime, limits: Limits) -> bool:
    """Its worker handed it back to be retried at `next_attempt_at` (ktrdr.ops.retries): nobody holds
    it until then, and it is silent by design; judged as any other once that time plus the orphan
    timeout has passed with no attempt started."""
    at = tracked.view.next_attempt_at
    return at is not None and (wall - at).total_seconds() <= limits.orphan_timeout_s


def deadline(tracked: Tracked, wall: datetime) -> FireDeadline | None:
    """A top-level operation past its deadline, not yet told (a child ends with its parent)."""
    view = tracked.view
    if view.deadline is None or tracked.deadline_fired or view.parent_op_id is not None or wall < view.deadline:
        return None
    return FireDeadline(view.op_id, (view.deadline - (view.created_at or view.deadline)).total_seconds())


def alive(peers: Mapping[str, Peer], domain: str, pool: str | None, now: float, limits: Limits) -> list[Peer]:
    """The actors of a domain (in a pool, when one is given) heard from recently enough."""
    return [p for p in peers.values() if p.domain == domain and now - p.seen <= limits.stale_after
            and (pool is None or pool in p.pools)]


def worker_silent(tracked: Tracked, peers: Mapping[str, Peer], now: float, limits: Limits) -> list[Action]:
    view = tracked.view
    silent = now - tracked.last_seen
    if silent <= limits.worker_timeout_s:
        return []
    replica_alive = bool(alive(peers, view.domain, view.pool, now, limits))
    if replica_alive and silent <= limits.orphan_timeout_s:
        return []  # a live replica gets the redelivery when the lease (ack_wait) runs out
    return [FailOperation(view.op_id, verdicts.worker_lost(
        view.op_id, view.worker, silent, ROLE_FOR_DOMAIN.get(view.domain, view.domain), replica_alive=replica_alive,
        orphan_timeout_s=limits.orphan_timeout_s))]


def pool_empty(tracked: Tracked, peers: Mapping[str, Peer], now: float, limits: Limits) -> list[Action]:
    view = tracked.view
    pool = view.pool or subjects.DEFAULT_POOL
    role = ROLE_FOR_DOMAIN.get(view.domain, view.domain)
    if alive(peers, view.domain, pool, now, limits):
        back: list[Action] = [RestartQueueClock(view.op_id, now)]
        if tracked.pool_note:
            back.append(ClearNote(view.op_id, f"a {role} in pool {pool} is alive"))
        return back
    out: list[Action] = []
    note = f"waiting for a {role} in pool {pool}: none alive"
    if tracked.pool_note != note:
        out.append(SayQueuedNote(view.op_id, note))
    waited = now - tracked.queued_since
    if waited > limits.orphan_timeout_s:
        out.append(FailOperation(view.op_id, verdicts.no_worker(view.op_id, role, pool, limits.orphan_timeout_s,
                                                                waited)))
    return out


def claimed(peers: Mapping[str, Peer], op_id: str) -> bool:
    """Whether some live actor says it is working on the operation (its heartbeat lists it busy)."""
    return any(op_id in p.busy for p in peers.values())


# ----------------------------------------------------------------------------------- state changes
def settle(live: Mapping[str, Tracked], peers: MutableMapping[str, Peer], actions: list[Action]) -> None:
    """What the actions change in the orchestrator's memory (before it publishes what they say), so
    a deadline fires once and a note is said once. FailOperation changes nothing here: the operation
    leaves `live` when its verdict is published."""
    for a in actions:
        tracked = live.get(getattr(a, "op_id", ""))
        if isinstance(a, ForgetActor):
            peers.pop(a.key, None)
        elif tracked is None:
            continue
        elif isinstance(a, FireDeadline):
            tracked.deadline_fired = True
        elif isinstance(a, SayQueuedNote):
            tracked.pool_note = a.text
        elif isinstance(a, ClearNote):
            tracked.pool_note = ""
        elif isinstance(a, RestartQueueClock):
            tracked.queued_since = a.at


def heard(live: Mapping[str, Tracked], peers: MutableMapping[str, Peer], key: str, peer: Peer) -> None:
    """A heartbeat: the actor is alive, and so is every operation it says it is running."""
    peers[key] = peer
    for op_id in peer.busy:
        tracked = live.get(op_id)
        if tracked is not None:
            tracked.last_seen = peer.seen


def paused(gap: float, interval: float, limits: Limits) -> bool:
    """Whether the time between two supervision passes (meant to be `interval` apart) says the
    orchestrator did not run meanwhile: longer than the staleness bound of a heartbeat, a silence it
    could not have heard."""
    return gap > interval + limits.stale_after


def reconnect_grace(live: Mapping[str, Tracked], peers: Mapping[str, Peer], since: float, now: float,
                    grace_s: float = RECONNECT_GRACE_S) -> float:
    """After a reconnect, every worker, actor and queue clock starts again once the others have had
    time to reconnect too (their attempts are at most `grace_s` apart; leases on the server run on
    their own). Returns the new `since` for decide()."""
    heard_from = now + grace_s
    for tracked in live.values():
        tracked.last_seen = max(tracked.last_seen, heard_from)
        tracked.queued_since = max(tracked.queued_since, heard_from)
    for peer in peers.values():
        peer.seen = max(peer.seen, heard_from)
    return max(since, heard_from)
