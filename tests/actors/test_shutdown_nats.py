"""A worker's shutdown hands its work back even when NATS is away for a moment (issue 22, retries):
a real nats-server is paused with SIGSTOP while a dummy worker drains for its stop, past the
orchestrator's leader fence, so the hand-back sent into the pause reaches an orchestrator that is
not acting yet. The worker asks again (within its stop's grace) until the release gets through: the
replica then takes the work as a plain hand-back (no takeover of a silent lease), and it completes
once, with one verdict. Before, the hand-back was asked once, and the lease stayed the stopped
worker's until the orchestrator took it over after a whole lease time."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from actors import _metrics
from events import subjects
from events.messages import (
    OperationCancelled,
    OperationCompleted,
    OperationFailed,
    OperationProgress,
    OperationStarted,
    RunDummy,
)
from tests.conftest import make_settings
from tests.helpers import eventually, wait_for_event, wait_terminal

pytestmark = pytest.mark.slow


@pytest.fixture
def settings(tmp_path, nats_server):
    home = tmp_path / "home"
    home.mkdir()
    # Leases and ack deadlines wider than the pause, so that nothing but the hand-back decides who
    # runs the next attempt (a lease silent for a lease time may be taken over, handed back or not);
    # a short leader lease, so the orchestrator acts again soon after the pause (its fence, 0.4 s, is
    # long past when the hand-back sent into the pause reaches it, and that one goes unanswered).
    return make_settings(home, nats_server.url, worker_timeout_s=8.0, orphan_timeout_s=60.0, drain_timeout_s=0.5,
                         leader_ttl_s=0.5)


async def test_a_shutdown_hand_back_sent_while_nats_is_paused_is_asked_again_and_a_replica_redoes_the_work(
        client, start_actors, nats_server):
    _orch, a, b = await start_actors("orchestrator", "dummy", "dummy")
    takeovers = _metrics.LEASE_TAKEOVERS.labels("dummy")
    takeovers_before = takeovers._value.get()
    cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=30, interval_s=0.1)
    await client.submit(cmd)
    view = await wait_for_event(client, cmd.op_id, lambda ev, v: isinstance(ev, OperationProgress), timeout=30)
    worker, replica = (a, b) if view.worker == a.id else (b, a)
    assert view.worker == worker.id
    os.kill(nats_server.proc.pid, signal.SIGSTOP)
    try:
        stopping = asyncio.ensure_future(worker.stop())  # as its SIGTERM does
        assert worker.work is not None
        # until its first hand-back request went unanswered and it asked again (seen in-process)
        await eventually(lambda: worker.work.hand_backs_retried > 0, timeout=30, interval=0.05)
    finally:
        os.kill(nats_server.proc.pid, signal.SIGCONT)
    await asyncio.wait_for(stopping, 30)
    view = await wait_terminal(client, cmd.op_id, timeout=60)
    assert view.status == "completed", view.error
    events = await client.events(cmd.op_id)
    started = [e for e in events if isinstance(e, OperationStarted)]
    assert [(e.attempt, e.worker) for e in started] == [(1, worker.id), (2, replica.id)], started
    assert len([e for e in events if isinstance(e, OperationCompleted | OperationFailed | OperationCancelled)]) == 1
    notes = [e.progress.message for e in events if isinstance(e, OperationProgress)]
    assert f"worker {worker.id} stopping; handed back for redelivery" in notes
    # handed back, not taken over from a silent holder
    assert takeovers._value.get() == takeovers_before
