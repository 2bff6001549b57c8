"""A universe in one command: `cmd.data.load` with several symbols is one parent operation with one
data child per symbol through the real stack (orchestrator, job-manager, ib actor, simulated gateway
with IB's pacing windows scaled): at most max_parallel children run, a failed symbol is recorded
without failing the others, a cancel reaches running and queued children."""

from __future__ import annotations

import pytest

from events import subjects
from events.messages import LoadData
from ktrdr.ops import OperationView
from tests.conftest import utc
from tests.helpers import wait_for_event, wait_terminal

pytestmark = pytest.mark.slow


def universe(symbols: list[str], max_parallel: int = 2, **kw: object) -> LoadData:
    return LoadData(op_id=subjects.new_op_id("data"), symbol=symbols[0], symbols=symbols, timeframe="1h",  # type: ignore[arg-type]
                    mode="full", start=utc(2023, 1, 2), end=utc(2023, 3, 1), max_parallel=max_parallel, **kw)  # type: ignore[arg-type]


async def children_of(client, parent: str) -> list[OperationView]:
    return [await client.view(k) for k in (await client.view(parent)).children]


def most_at_once(kids: list[OperationView]) -> int:
    spans = [(k.started_at or k.created_at, k.finished_at) for k in kids if k.created_at is not None]
    marks = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans if e is not None],
                   key=lambda m: (m[0], m[1]))
    now = best = 0
    for _, d in marks:
        now += d
        best = max(best, now)
    return best


async def test_a_universe_loads_every_symbol_as_a_child_and_lists_the_unknown_one_as_failed(
        data_stack, client, gateway):
    cmd = universe(["AAPL", "MSFT", "NOSUCH", "EURUSD"])
    await client.submit(cmd)
    view = await wait_terminal(client, cmd.op_id, timeout=120)
    assert view.status == "completed", view.error
    kids = await children_of(client, cmd.op_id)
    assert [k.domain for k in kids] == ["data"] * 4 and all(k.parent_op_id == cmd.op_id for k in kids)
    assert [k.status for k in kids] == ["completed", "completed", "failed", "completed"]
    assert list(view.result["failed"]) == ["NOSUCH"] and view.result["completed"] == ["AAPL", "MSFT", "EURUSD"]
    assert view.result["bars"] == sum(k.result["bars_total"] for k in kids if k.status == "completed") > 0
    assert most_at_once(kids) <= 2  # max_parallel: the others waited queued in the workflow
    assert gateway.pacing_violations == 0


async def test_cancelling_a_universe_cancels_running_children_and_never_starts_queued_ones(
        data_stack, client, gateway):
    gateway.latency_s = 60.0  # every IB answer takes a minute: the first children stay in flight
    cmd = universe(["AAPL", "MSFT", "SPY", "EURUSD"])
    await client.submit(cmd)
    view = await wait_for_event(client, cmd.op_id, lambda ev, v: len(v.children) == 4)
    first = view.children[:2]
    for k in first:
        await wait_for_event(client, k, lambda ev, v: v.status == "running", timeout=30)
    await client.cancel(cmd.op_id, reason="test")
    view = await wait_terminal(client, cmd.op_id, timeout=30)
    assert view.status == "cancelled" and view.reason == "test"
    states = {k.op_id: k for k in await children_of(client, cmd.op_id)}
    assert [states[k].status for k in first] == ["cancelled", "cancelled"]
    assert all(states[k].status == "unknown" for k in view.children[2:])  # queued: never created
