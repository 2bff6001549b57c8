"""NATS unavailable for a step of the work is a retryable failure (issue 22, item 2), against a real
nats-server: a load waits for its series' writer lease (held by another writer), polling KV; the
server is paused with SIGSTOP until that poll's JetStream request has timed out in the job manager;
the attempt fails as `nats_unavailable` (not an internal error), is handed back with the policy's
wait, and the next attempt completes once the server runs again and the other writer is gone."""

from __future__ import annotations

import os
import signal

import pytest

from actors import _metrics
from events import subjects
from events.messages import ActorError, LoadData, OperationFailed, OperationProgress, OperationStarted
from ktrdr.data.series_lease import series_lease
from tests.conftest import make_settings, utc
from tests.helpers import eventually, wait_for_event, wait_terminal

pytestmark = pytest.mark.slow


@pytest.fixture
def data_settings(settings, gateway, time_scale, gateway_wait_s):
    # Leases and orphan judgement wide enough that a pause of the whole server (everyone's clock runs
    # on, nobody's heartbeat gets through) is not taken for a lost worker once it runs again.
    return make_settings(settings.home, settings.nats_url, ib_port=gateway.port, ib_client_id=11,
                         ib_time_scale=time_scale, ib_gateway_wait_s=gateway_wait_s, worker_timeout_s=8.0,
                         orphan_timeout_s=60.0)


def waiting(ev: object, _view: object) -> bool:
    return isinstance(ev, OperationProgress) and ev.progress.phase == "waiting"


async def test_a_step_that_cannot_reach_nats_fails_its_attempt_as_nats_unavailable_and_is_retried(
        client, data_stack, nats_server):
    retried = _metrics.ATTEMPTS_RETRIED.labels(LoadData.role, "data", "nats_unavailable")
    before = retried._value.get()
    other = await series_lease(client.js, "AAPL", "1h", holder="another-writer", ttl_s=20.0)
    cmd = LoadData(op_id=subjects.new_op_id("data"), symbol="AAPL", timeframe="1h", mode="full",
                   start=utc(2023, 1, 2), end=utc(2023, 2, 1), retries=3, retry_max_interval_s=2.0)
    async with other.held():
        await client.submit(cmd)
        await wait_for_event(client, cmd.op_id, waiting, timeout=60)  # polling KV for the lease
        os.kill(nats_server.proc.pid, signal.SIGSTOP)
        try:  # until the job manager's KV request timed out and it decided to retry (seen in-process)
            await eventually(lambda: retried._value.get() > before, timeout=60, interval=0.1)
        finally:
            os.kill(nats_server.proc.pid, signal.SIGCONT)
    view = await wait_terminal(client, cmd.op_id, timeout=120)
    assert view.status == "completed", view.error
    events = await client.events(cmd.op_id)
    waits = [e.progress for e in events if isinstance(e, OperationProgress) and e.progress.phase == "retrying"]
    assert waits and waits[0].retry_reason.startswith("NATS unavailable: "), waits
    assert waits[0].message.startswith("attempt 2 of 4 in 1 s: NATS unavailable")
    assert [e.attempt for e in events if isinstance(e, OperationStarted)] == list(range(1, len(waits) + 2))
    assert not [e for e in events if isinstance(e, OperationFailed | ActorError)]
