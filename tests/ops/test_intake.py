"""Intake decisions (no server): a command that does not fit its subject, a repeated command, when its
deadline is (on the orchestrator's clock), and who ends a cancelled operation that is still queued."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from events import subjects
from events.messages import LoadData, RunDummy
from ktrdr.commands import CommandError, validate
from ktrdr.ops import OperationView, intake

OP = "dummy-20261201T120000000000-abcdef"


def test_a_command_on_its_own_subject_with_its_own_domain_fits():
    cmd = RunDummy(op_id=OP)
    assert intake.misrouted(subjects.command(cmd), cmd) is None


def test_a_command_on_another_subject_or_with_another_domains_id_does_not():
    cmd = RunDummy(op_id=OP)
    problem = intake.misrouted(subjects.command(LoadData(op_id="data-x", symbol="AAPL")), cmd)
    assert problem is not None and problem.startswith("command RunDummy on cmd.data.load with op_id")
    assert f"expected subject {subjects.command(cmd)}" in problem
    other = RunDummy(op_id="data-20261201T120000000000-abcdef")
    assert intake.misrouted(subjects.command(other), other) is not None
    long = RunDummy(op_id="x" * 5000)
    assert len(intake.misrouted(subjects.command(long), long) or "") < 400  # the bad id is quoted short


def test_a_repeated_command_routes_again_only_while_its_operation_is_queued():
    queued = OperationView(op_id=OP, status="queued", command={"type": "RunDummy", "op_id": OP})
    assert intake.route_again(queued, is_workflow=False)
    assert not intake.route_again(queued, is_workflow=True)  # a workflow is driven by its runner
    assert not intake.route_again(OperationView(op_id=OP, status="running", command=queued.command), False)
    assert not intake.route_again(OperationView(op_id=OP, status="queued"), False)  # nothing to route
    assert not intake.route_again(None, False)  # ended: only `known`


def test_a_cancel_ends_a_queued_operation_only_when_nobody_claimed_it():
    queued = OperationView(op_id=OP, status="queued")
    assert intake.cancel_while_queued(queued, claimed=False)
    assert not intake.cancel_while_queued(queued, claimed=True)  # its worker ends it
    assert not intake.cancel_while_queued(OperationView(op_id=OP, status="running"), claimed=False)


def test_a_deadline_is_fixed_on_the_orchestrators_clock_whatever_the_clients():
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    behind = now - timedelta(days=1)
    fixed = intake.fix_deadline(RunDummy(op_id=subjects.new_op_id("dummy"), ts=behind, timeout_s=60.0), now)
    assert (fixed.deadline, fixed.timeout_s) == (now + timedelta(seconds=60), 60.0)
    # An older client's absolute deadline: the duration it meant, on its own clock.
    older = RunDummy(op_id=subjects.new_op_id("dummy"), ts=behind, deadline=behind + timedelta(seconds=90))
    validate(older, now)
    assert intake.fix_deadline(older, now).deadline == now + timedelta(seconds=90)
    assert intake.fix_deadline(RunDummy(op_id=subjects.new_op_id("dummy")), now).deadline is None
    with pytest.raises(CommandError, match="not after the command's ts"):
        validate(RunDummy(op_id=subjects.new_op_id("dummy"), ts=behind, deadline=behind), now)
    with pytest.raises(CommandError, match="timeout_s"):
        validate(RunDummy(op_id=subjects.new_op_id("dummy"), timeout_s=0.0), now)
    validate(fixed, now + timedelta(days=40))  # a work item the orchestrator fixed passes a worker's check
