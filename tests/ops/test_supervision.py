"""Supervision decisions as pure functions: views, a clock and who is alive in, actions out. No
server: the clock is a number the test moves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from events.messages import OperationFailed
from ktrdr.ops import OperationView
from ktrdr.ops.supervision import (
    ClearNote,
    FailOperation,
    FireDeadline,
    ForgetActor,
    Limits,
    Peer,
    RestartQueueClock,
    SayQueuedNote,
    Tracked,
    claimed,
    decide,
    heard,
    reconnect_grace,
    settle,
)

LIMITS = Limits(heartbeat_s=0.2, worker_timeout_s=1.5, orphan_timeout_s=4.0)  # stale after 1 s
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
OP = "dummy-20261201T120000000000-abcdef"


def op(status: str = "running", *, at: float = 0.0, **fields: object) -> Tracked:
    view = OperationView(op_id=OP, domain="dummy", status=status, created_at=T0, worker="dummy-w1",  # type: ignore[arg-type]
                         **fields)  # type: ignore[arg-type]
    return Tracked(view, last_seen=at, queued_since=at)


def peer(seen: float, *, pools: tuple[str, ...] = ("any",), domain: str = "dummy", busy: tuple[str, ...] = ()) -> Peer:
    return Peer(role="dummy", domain=domain, pools=list(pools), busy=list(busy), seen=seen)


def run(live: dict[str, Tracked], peers: dict[str, Peer], now: float, *, wall: datetime = T0, since: float = -100.0,
        workflows: tuple[str, ...] = (), connected: bool = True) -> list[object]:
    """One supervision pass as the orchestrator makes it: decide, then settle what the actions change."""
    actions = decide(live, peers, now=now, wall=wall, since=since, limits=LIMITS, workflows=workflows,
                     connected=connected)
    settle(live, peers, actions)
    return list(actions)


def failures(actions: list[object]) -> list[OperationFailed]:
    return [a.event for a in actions if isinstance(a, FailOperation)]


# ---------------------------------------------------------------------------------------- deadline
def test_a_deadline_not_yet_passed_fires_nothing():
    live = {OP: op(deadline=T0 + timedelta(seconds=60))}
    assert run(live, {"w": peer(0.0)}, 0.5, wall=T0 + timedelta(seconds=59)) == []


def test_a_passed_deadline_fires_once_with_the_time_allowed():
    live = {OP: op(deadline=T0 + timedelta(seconds=60))}
    first = run(live, {"w": peer(0.0)}, 0.5, wall=T0 + timedelta(seconds=61))
    assert first == [FireDeadline(OP, 60.0)]
    assert run(live, {"w": peer(0.6)}, 0.7, wall=T0 + timedelta(seconds=62)) == []  # fired once


def test_a_childs_deadline_is_its_parents_business():
    live = {OP: op(deadline=T0, parent_op_id="training-20261201T120000000000-abcdef")}
    assert run(live, {"w": peer(0.0)}, 0.5, wall=T0 + timedelta(seconds=1)) == []


def test_a_workflows_deadline_fires_but_its_worker_is_not_judged():
    live = {OP: op(deadline=T0, at=0.0)}
    actions = run(live, {}, 100.0, wall=T0 + timedelta(seconds=1), workflows=(OP,))
    assert actions == [FireDeadline(OP, 0.0)]  # silent for 100 s, but a workflow runs in the orchestrator


# ------------------------------------------------------------------------------------ worker silent
def test_a_worker_heard_within_the_timeout_is_left_alone():
    live = {OP: op(at=0.0)}
    assert run(live, {}, 1.5) == []  # silent exactly worker_timeout_s: not yet


def test_a_silent_worker_with_no_live_replica_loses_the_operation():
    live = {OP: op(at=0.0)}
    failed, = failures(run(live, {"w": peer(0.0)}, 1.6))  # its only actor went quiet too
    assert failed.error_code == "worker_lost" and failed.op_id == OP
    assert "dummy-w1 stopped heartbeating 2 s ago" in failed.error and "no dummy actor is alive" in failed.error


def test_a_silent_worker_with_a_live_replica_waits_for_the_redelivery():
    live = {OP: op(at=0.0)}
    assert run(live, {"w2": peer(3.5)}, 3.9) == []  # within the orphan timeout: the replica takes it


def test_a_silent_worker_past_the_orphan_timeout_fails_even_with_a_live_replica():
    live = {OP: op(at=0.0)}
    failed, = failures(run(live, {"w2": peer(4.0)}, 4.1))
    assert failed.error_code == "worker_lost" and "picked the operation up again within 4 s" in failed.error


def test_a_replica_in_another_pool_or_domain_is_no_replica():
    live = {OP: op(at=0.0, pool="gpu")}
    peers = {"cpu": peer(1.9, pools=("cpu", "any")), "data": peer(1.9, pools=("gpu",), domain="data")}
    failed, = failures(run(live, peers, 2.0))
    assert "no dummy actor is alive" in failed.error


def test_a_heartbeat_naming_the_operation_keeps_it_alive():
    live = {OP: op(at=0.0)}
    peers: dict[str, Peer] = {}
    heard(live, peers, "w1", peer(1.4, busy=(OP,)))
    assert live[OP].last_seen == 1.4 and "w1" in peers and claimed(peers, OP)
    assert run(live, peers, 2.0) == []


# --------------------------------------------------------------------------------------- pool empty
def test_an_empty_pool_is_said_once_then_fails_after_the_orphan_timeout():
    live = {OP: op("queued", at=0.0, pool="gpu")}
    first = run(live, {}, 2.5)
    assert first == [SayQueuedNote(OP, "waiting for a dummy in pool gpu: none alive")]
    assert run(live, {}, 3.0) == []  # said once
    last = run(live, {}, 4.5)
    failed, = failures(last)
    assert len(last) == 1 and failed.error_code == "no_worker"
    assert failed.error.startswith("no dummy in pool gpu came up within 4 s (waited 4 s)")
    assert "KTRDR_POOLS=gpu" in failed.error


def test_a_queued_operation_without_a_pool_waits_in_the_default_pool():
    live = {OP: op("queued", at=0.0)}
    assert run(live, {"w": peer(2.4, pools=("gpu",))}, 2.5) == [SayQueuedNote(
        OP, "waiting for a dummy in pool any: none alive")]


def test_a_worker_coming_back_clears_the_note_and_restarts_the_queue_clock():
    live = {OP: op("queued", at=0.0, pool="gpu")}
    run(live, {}, 2.5)
    back = run(live, {"w": peer(3.0, pools=("gpu",))}, 3.5)
    assert back == [RestartQueueClock(OP, 3.5), ClearNote(OP, "a dummy in pool gpu is alive")]
    assert live[OP].pool_note == "" and live[OP].queued_since == 3.5
    # it goes again: the note comes back, and the orphan timeout counts from when it was last seen
    assert run(live, {}, 5.0) == [SayQueuedNote(OP, "waiting for a dummy in pool gpu: none alive")]
    assert failures(run(live, {}, 7.0)) == []  # 3.5 s since the pool was last alive, not 7
    assert len(failures(run(live, {}, 7.6))) == 1


def test_queues_are_not_judged_until_everyone_has_had_time_to_announce_itself():
    live = {OP: op("queued", at=0.0)}
    assert run(live, {}, 10.0, since=8.5) == []  # 1.5 s after the start: under twice the stale time
    assert run(live, {}, 10.0, since=7.9)[0] == SayQueuedNote(OP, "waiting for a dummy in pool any: none alive")


# ----------------------------------------------------------------------------------------- actors
def test_actors_not_heard_from_for_long_are_forgotten():
    peers = {"old": peer(0.0), "new": peer(1.0)}
    assert run({}, peers, 1.6) == [ForgetActor("old")]
    assert list(peers) == ["new"]


# ---------------------------------------------------------------------------- disconnect, reconnect
def test_nothing_is_decided_while_disconnected():
    live = {OP: op(at=0.0, deadline=T0), "q": op("queued", at=0.0)}
    assert run(live, {"w": peer(0.0)}, 100.0, wall=T0 + timedelta(days=1), connected=False) == []


def test_reconnect_grace_moves_every_clock_past_the_others_reconnect():
    live = {OP: op(at=1.0), "q": op("queued", at=2.0)}
    peers = {"w": peer(1.5), "late": peer(50.0)}
    since = reconnect_grace(live, peers, since=0.0, now=10.0, grace_s=2.0)
    assert since == 12.0
    assert [(t.last_seen, t.queued_since) for t in live.values()] == [(12.0, 12.0), (12.0, 12.0)]
    assert [p.seen for p in peers.values()] == [12.0, 50.0]  # clocks only move forward
    # the worker silent since 1.0 is judged from 12.0 on: not lost at 13, lost after the timeout
    assert run(live, {}, 13.0, since=since) == []
    assert [f.op_id for f in failures(run(live, {}, 13.6, since=since))] == [OP]


# ---------------------------------------------------------------------------------------- retries
def test_an_operation_waiting_for_its_next_attempt_is_not_judged_silent_until_that_time_and_the_orphan_timeout():
    # handed back at 0 s to be retried 30 s later (ktrdr.ops.retries): nobody holds it meanwhile
    waiting = {OP: op(at=0.0, next_attempt_at=T0 + timedelta(seconds=30))}
    assert failures(run(waiting, {}, 20.0, wall=T0 + timedelta(seconds=20))) == []
    assert failures(run(waiting, {}, 33.0, wall=T0 + timedelta(seconds=33))) == []  # within the orphan timeout
    failed, = failures(run(waiting, {}, 35.0, wall=T0 + timedelta(seconds=35)))  # no attempt ever started
    assert failed.error_code == "worker_lost"
