"""Operation ids and subjects, all derived from the message types."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from events import subjects
from events.messages import (
    DOMAINS,
    IbBarsRequest,
    LoadData,
    OperationCancelled,
    OperationProgress,
    RunDummy,
    StartTraining,
)


@pytest.mark.parametrize("domain", DOMAINS)
def test_new_op_ids_are_one_token_with_the_domain_and_sortable(domain):
    a, b = subjects.new_op_id(domain), subjects.new_op_id(domain)
    for op in (a, b):
        assert subjects.is_op_id(op) and subjects.domain_of(op) == domain
        assert "." not in op and "*" not in op and ">" not in op and " " not in op
    assert subjects.created_at_of(a) <= subjects.created_at_of(b)
    assert abs((subjects.created_at_of(a) - datetime.now(UTC)).total_seconds()) < 60


@pytest.mark.parametrize("bad", [
    "", "data", "data-x", "ops.data.x", "data-20261128T174900123456-3f9a1c.extra", "*", ">",
    "nope-20261128T174900123456-3f9a1c",  # matches the pattern, but no such domain
    "DATA-20261128T174900123456-3f9a1c", "data-20261128T174900123456-3F9A1C", "../data-20261128T174900123456-3f9a1c",
    None, 42,
])
def test_malformed_or_unknown_ids_are_refused(bad):
    assert not subjects.is_op_id(bad)
    with pytest.raises(ValueError):
        subjects.domain_of(bad)


def test_child_ids_are_deterministic_valid_and_distinct():
    parent = subjects.new_op_id("training")
    a = subjects.child_op_id(parent, "data", "AAPL/1h")
    assert a == subjects.child_op_id(parent, "data", "AAPL/1h")
    assert a != subjects.child_op_id(parent, "data", "MSFT/1h")
    assert subjects.is_op_id(a) and subjects.domain_of(a) == "data"
    assert subjects.created_at_of(a) == subjects.created_at_of(parent)
    with pytest.raises(ValueError):
        subjects.child_op_id("not-an-id", "data", "x")


def test_subjects_come_from_the_types():
    assert subjects.command(LoadData) == "cmd.data.load"
    assert subjects.command(RunDummy) == "cmd.dummy.run"
    assert subjects.command(StartTraining) == "cmd.training.start"
    assert subjects.command_for_subject("cmd.data.load") is LoadData
    assert subjects.command_for_subject("cmd.data.nope") is None
    assert subjects.command_for_subject("cmd.x.load") is None
    assert subjects.work("training", "gpu") == "work.training.gpu"
    assert subjects.parse_work_subject("work.training.gpu") == ("training", "gpu", "normal")
    # priorities: normal keeps the layout from before them; high and low add a token
    assert subjects.work("training", "gpu", "high") == "work.training.gpu.high"
    assert subjects.parse_work_subject("work.training.gpu.low") == ("training", "gpu", "low")
    assert subjects.parse_work_subject("work.training.gpu.normal") is None
    assert subjects.parse_work_subject("work.training.gpu.urgent") is None
    assert subjects.work_consumer("training", "gpu", "low") == "work-low-training-gpu"
    names = {subjects.work_consumer("training", p, q) for p in ("gpu", "gpu-low", "low-gpu")
             for q in ("high", "normal", "low")}
    assert len(names) == 9  # no pool name makes two (pool, priority) pairs share a consumer
    with pytest.raises(ValueError):
        subjects.work("training", "gpu", "urgent")
    op = subjects.new_op_id("dummy")
    assert subjects.event(OperationCancelled(op_id=op)) == f"ops.dummy.{op}.cancelled"
    assert subjects.event(OperationProgress(op_id=op, progress=__import__("events").ProgressState())) == \
        f"ops.dummy.{op}.progress"
    assert subjects.cancel(op) == f"ops.dummy.{op}.cancel"
    assert subjects.ib(IbBarsRequest) == "ib.bars"
    assert all(f.startswith(f"ops.dummy.{op}.") for f in subjects.lifecycle_filters(op))
    assert "progress" not in " ".join(subjects.lifecycle_filters(op))


@pytest.mark.parametrize("pool", ["", "GPU", "a.b", "a*", ">", "x" * 40, "../x"])
def test_pools_must_be_one_safe_token(pool):
    with pytest.raises(ValueError):
        subjects.work("training", pool)
