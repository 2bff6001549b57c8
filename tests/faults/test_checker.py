"""The nemesis's checker on hand-made histories (no servers): a clean history passes every rule,
and each rule fails on the one history that breaks it."""

from __future__ import annotations

from bench.nemesis.checker import Acked, History, Stored, check, row
from events.messages import (
    AnyEvent,
    DummyContext,
    OperationCompleted,
    OperationCreated,
    OperationProgress,
    OperationStarted,
    OrchestratorFailed,
    ProgressState,
    RunDummy,
)

OP = "dummy-20261202T060000000000-abcdef"
ORCH = "orchestrator-h-1-aaaa"
ORCH2 = "orchestrator-h-4-dddd"
W1, W2 = "dummy-h-2-bbbb", "dummy-h-3-cccc"


def subject(ev: AnyEvent) -> str:
    return f"ops.dummy.{OP}.{type(ev).name}"  # type: ignore[attr-defined]


def created(seq: int = 1) -> OperationCreated:
    return OperationCreated(op_id=OP, actor=ORCH, seq=seq, domain="dummy", op_type="dummy",
                            command=RunDummy(op_id=OP, iterations=2, interval_s=0.1))


def started(worker: str, attempt: int, seq: int) -> OperationStarted:
    return OperationStarted(op_id=OP, actor=ORCH, seq=seq, worker=worker, attempt=attempt)


def progress(worker: str, attempt: int, seq: int, pct: float) -> OperationProgress:
    ctx = DummyContext(iteration=int(pct), iterations=100)
    return OperationProgress(op_id=OP, actor=worker, seq=seq, attempt=attempt,
                             progress=ProgressState(percentage=pct, context=ctx))


def completed(worker: str, seq: int) -> OperationCompleted:
    return OperationCompleted(op_id=OP, actor=worker, seq=seq)


def clean() -> tuple[History, Stored, list[AnyEvent]]:
    events: list[AnyEvent] = [created(), started(W1, 1, 2), progress(W1, 1, 1, 50.0), completed(W1, 2)]
    history = History(acked=[Acked("command", OP, "cmd.dummy.run", "CMD", 1)], after_heal_status="completed",
                      recover_s=1.5)
    history.seen = {(subject(e), e.actor, e.seq) for e in events}
    stored = Stored(proven={OP: events}, raw=[(subject(e), e.actor, e.seq) for e in events])
    return history, stored, events


def test_a_clean_history_passes_every_rule_and_makes_the_shared_row():
    history, stored, _ = clean()
    found = check(history, stored)
    assert found == {"lost": [], "duplicated": [], "operations": [], "second_verdicts": [], "after_heal": []}
    r = row("partition", history, found)
    assert r == {"fault": "partition", "sync_interval": "default", "operations": 1, "acked": 5, "lost": 0,
                 "duplicated": 0, "recover_s": 1.5, "notes": "ok"}


def test_an_event_seen_live_but_not_stored_is_lost():
    history, stored, events = clean()
    stored.raw.remove((subject(events[2]), W1, 1))
    assert len(check(history, stored)["lost"]) == 1
    assert row("x", history, check(history, stored))["lost"] == 1


def test_a_lifecycle_event_redone_by_its_actor_is_not_lost_but_progress_is():
    history, stored, events = clean()
    history.seen.add((subject(events[0]), ORCH, 7))  # a created whose publish failed; seq 1 (before) and
    assert check(history, stored)["lost"] == []  # seq 8 (after) are both stored ones that excuse it
    stored.raw.append((subject(events[0]), ORCH, 8))
    assert check(history, stored)["lost"] == []
    history.seen.add((f"ops.dummy.{OP}.cancel_requested", ORCH, 9))  # nothing of its kind stored: lost
    assert len(check(history, stored)["lost"]) == 1
    history.seen.discard((f"ops.dummy.{OP}.cancel_requested", ORCH, 9))
    history.seen.add((subject(events[2]), W1, 0 + 5))  # a progress (resent under its own seq): not excused
    stored.raw.append((subject(events[2]), W1, 6))
    assert len(check(history, stored)["lost"]) == 1


def test_a_leaders_unstored_event_redone_by_the_standby_is_not_lost_but_a_workers_is():
    history, stored, events = clean()
    stored.raw.remove((subject(events[0]), ORCH, 1))  # the cut-off leader's created: seen, never stored
    assert len(check(history, stored)["lost"]) == 1
    stored.raw.append((subject(events[0]), ORCH2, 1))  # the standby took the command over: its created
    assert check(history, stored)["lost"] == []
    stored.raw.remove((subject(events[3]), W1, 2))  # a worker's completed: another worker's does not excuse it
    stored.raw.append((subject(events[3]), W2, 2))
    assert len(check(history, stored)["lost"]) == 1


def test_an_acknowledged_command_that_never_became_an_operation_is_lost():
    history, stored, _ = clean()
    history.acked.append(Acked("command", "dummy-20261202T060000000001-000000", "cmd.dummy.run", "CMD", 2))
    found = check(history, stored)
    assert len(found["lost"]) == 1 and "never became an operation" in found["lost"][0]


def test_an_acknowledged_cancel_not_stored_is_lost_and_one_stored_is_not():
    history, stored, _ = clean()
    history.acked.append(Acked("cancel", OP, f"ops.dummy.{OP}.cancel", "OPS_CANCELS", 4))
    assert len(check(history, stored)["lost"]) == 1
    stored.cancels_held.add(("OPS_CANCELS", 4))
    assert check(history, stored)["lost"] == []


def test_an_event_stored_twice_is_duplicated():
    history, stored, events = clean()
    stored.raw.append((subject(events[2]), W1, 1))
    assert len(check(history, stored)["duplicated"]) == 1


def test_an_operation_without_a_terminal_event_fails_the_terminal_rule():
    history, stored, events = clean()
    stored.proven[OP] = events[:3]
    found = check(history, stored)["operations"]
    assert any("no terminal event" in v for v in found)


def test_a_second_different_verdict_stored_is_reported_apart():
    history, stored, events = clean()
    stored.proven[OP] = [*events, OrchestratorFailed(op_id=OP, actor=ORCH, seq=9, error="worker lost")]
    found = check(history, stored)
    assert found["operations"] == [] and len(found["second_verdicts"]) == 1
    assert "second, different verdict" in row("x", history, found)["notes"]


def test_one_attempt_granted_to_two_workers_fails_the_lease_rule():
    history, stored, events = clean()
    stored.proven[OP] = [events[0], events[1], started(W2, 1, 3), events[3]]
    assert any("granted to" in v for v in check(history, stored)["operations"])


def test_an_attempt_granted_after_a_later_one_fails_the_lease_rule():
    history, stored, events = clean()
    stored.proven[OP] = [events[0], started(W2, 2, 2), started(W1, 1, 3), completed(W2, 1)]
    assert any("granted after attempt 2" in v for v in check(history, stored)["operations"])


def test_the_old_holders_late_events_after_a_takeover_pass_when_the_fold_ignores_them():
    history, stored, events = clean()
    stored.proven[OP] = [events[0], started(W1, 1, 2), progress(W1, 1, 1, 10.0), started(W2, 2, 3),
                         progress(W1, 1, 2, 90.0), completed(W1, 3), progress(W2, 2, 1, 50.0), completed(W2, 2)]
    # the fold ignores W1's late progress and verdict (it no longer holds the operation): that holds
    assert check(history, stored)["operations"] == []


def test_a_fenced_holders_event_that_changed_the_view_fails_the_fencing_rule():
    from bench.nemesis import checker

    history, stored, events = clean()
    stored.proven[OP] = [events[0], started(W1, 1, 2), started(W2, 2, 3), completed(W1, 3)]
    real = checker.fold

    def careless_fold(view, ev):  # type: ignore[no-untyped-def]
        if isinstance(ev, OperationCompleted):  # a fold that forgot the holder rule
            view.status = "completed"
            return view
        return real(view, ev)

    checker.fold = careless_fold  # type: ignore[assignment]
    try:
        found = check(history, stored)["operations"]
    finally:
        checker.fold = real  # type: ignore[assignment]
    assert any("did not hold the lease" in v for v in found)


def test_a_normal_operation_that_did_not_complete_after_healing_fails():
    history, stored, _ = clean()
    history.after_heal_status = "failed"
    found = check(history, stored)
    assert found["after_heal"] and "failed" in row("x", history, found)["notes"]


def _takeover_history() -> list[AnyEvent]:
    """Leader epoch 1 created and granted the operation; epoch 2 took over and granted it again; then
    the old leader, resumed, failed it (worker lost) and W2 completed it."""
    first = [created(), started(W1, 1, 2)]
    for ev in first:
        ev.epoch = 1
    return [*first, progress(W1, 1, 1, 10.0),
            OperationStarted(op_id=OP, actor=ORCH2, seq=1, worker=W2, attempt=2, epoch=2),
            OrchestratorFailed(op_id=OP, actor=ORCH, seq=3, error="worker lost", epoch=1),
            progress(W2, 2, 1, 50.0), completed(W2, 2)]


def test_an_older_epochs_verdict_after_a_takeover_passes_when_the_fold_ignores_it():
    history, stored, _ = clean()
    stored.proven[OP] = _takeover_history()
    found = check(history, stored)
    assert found["operations"] == [], found
    # the stale leader's failure is a second, different verdict, reported apart, with its epoch
    assert len(found["second_verdicts"]) == 1 and "epoch 1" in found["second_verdicts"][0]


def test_an_older_epochs_verdict_that_counted_fails_the_epoch_rule():
    from bench.nemesis import checker

    history, stored, _ = clean()
    stored.proven[OP] = _takeover_history()
    real = checker.fold

    def epoch_blind_fold(view, ev):  # type: ignore[no-untyped-def]
        if isinstance(ev, OrchestratorFailed):  # a fold that forgot the epoch rule
            view.status, view.error = "failed", ev.error
            return view
        return real(view, ev)

    checker.fold = epoch_blind_fold  # type: ignore[assignment]
    try:
        found = check(history, stored)["operations"]
    finally:
        checker.fold = real  # type: ignore[assignment]
    assert any("leader epoch 1, stored after one of epoch 2" in v and "verdict counted" in v for v in found), found
