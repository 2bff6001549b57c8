"""Retry policies against real processes (nats-server, orchestrator, job manager, ib actor, the sim
gateway): a load that fails because the IB gateway is away is retried with the backoff, each wait
announced ("attempt 2 of 5 in 1 s: ..."), and completes once the gateway is back; a failure that is
not retryable (an unknown symbol) ends at its first attempt."""

from __future__ import annotations

import asyncio
import json

import pytest

from events import subjects
from events.messages import (
    LoadData,
    OperationCancelled,
    OperationCompleted,
    OperationFailed,
    OperationProgress,
    OperationStarted,
)
from tests.actors.test_job_manager import assert_same_bars, expected
from tests.cli.test_cli import ktrdr
from tests.conftest import utc
from tests.faults.test_ib_faults import restarts  # noqa: F401
from tests.helpers import wait_for_event, wait_terminal

pytestmark = pytest.mark.slow


def retrying(ev: object, _view: object) -> bool:
    return isinstance(ev, OperationProgress) and ev.progress.phase == "retrying"


@pytest.mark.parametrize("gateway_wait_s", [1.0])  # an attempt gives up on a gateway away 1 s
async def test_a_load_failing_on_an_absent_gateway_is_retried_with_backoff_until_it_is_back(
        client, data_stack, gateway, restarts):  # noqa: F811
    port = gateway.port
    await asyncio.to_thread(gateway.stop)
    cmd = LoadData(op_id=subjects.new_op_id("data"), symbol="AAPL", timeframe="1h", mode="full",
                   start=utc(2023, 1, 2), end=utc(2023, 3, 1), retries=4, retry_max_interval_s=30.0)
    await client.submit(cmd)
    # Two attempts fail (waits of 1 s then 2 s announced) before the gateway comes back.
    await wait_for_event(client, cmd.op_id, lambda ev, v: retrying(ev, v) and "attempt 3 of 5" in
                         ev.progress.message, timeout=90)  # type: ignore[attr-defined]
    await restarts(port)
    view = await wait_terminal(client, cmd.op_id, timeout=120)
    assert view.status == "completed", view.error
    assert view.next_attempt_at is None  # the last progress is the successful attempt's
    events = await client.events(cmd.op_id)
    waits = [e.progress for e in events if isinstance(e, OperationProgress) and e.progress.phase == "retrying"]
    assert len(waits) >= 2
    assert waits[0].message.startswith("attempt 2 of 5 in 1 s: ")
    assert waits[1].message.startswith("attempt 3 of 5 in 2 s: ")
    assert all("gateway" in w.retry_reason.lower() and w.next_attempt_at is not None for w in waits)
    starts = [e.attempt for e in events if isinstance(e, OperationStarted)]
    assert starts == list(range(1, len(waits) + 2))  # each wait followed by one more attempt, the last succeeded
    assert not [e for e in events if isinstance(e, OperationFailed)]
    assert_same_bars(await data_stack.read("AAPL", "1h"), expected("AAPL", "1h", utc(2023, 1, 2), utc(2023, 3, 1)))


async def test_a_failure_that_is_not_retryable_ends_at_its_first_attempt(client, data_stack, settings):
    rc, out, err = await ktrdr(settings, "data", "load", "ZZZZ", "-t", "1h", "--mode", "full", "--start", "2023-01-02",
                               "--end", "2023-02-01", "--retries", "5", "--retry-max-interval", "8", "--no-wait",
                               "--json")
    assert rc == 0, err
    op_id = json.loads(out)["op_id"]
    view = await wait_terminal(client, op_id, timeout=60)
    assert view.command["retries"] == 5 and view.command["retry_max_interval_s"] == 8.0
    assert view.status == "failed" and view.error_code == "unknown_symbol", view.error
    assert view.attempts == 1
    events = await client.events(op_id)
    assert not [e for e in events if isinstance(e, OperationProgress) and e.progress.phase == "retrying"]
    failed = [e for e in events if isinstance(e, OperationFailed)]
    assert len(failed) == 1 and failed[0].retryable is False


async def _work_left(client, timeout: float) -> int:
    """The messages in WORK once none is left (the redelivery of a cancelled operation acked), or
    what is still there after `timeout` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        n = (await client.js.stream_info(subjects.STREAM_WORK)).state.messages
        if n == 0 or loop.time() > deadline:
            return n
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("gateway_wait_s", [1.0])
async def test_a_cancel_during_a_retry_wait_ends_the_operation_at_once_and_its_redelivery_does_not_run(
        client, data_stack, gateway):
    await asyncio.to_thread(gateway.stop)
    cmd = LoadData(op_id=subjects.new_op_id("data"), symbol="AAPL", timeframe="1h", mode="full",
                   start=utc(2023, 1, 2), end=utc(2023, 3, 1), retries=3, retry_max_interval_s=60.0)
    await client.submit(cmd)
    # The third and last wait is 4 s long (1, 2, 4): cancelled as soon as it is announced.
    await wait_for_event(client, cmd.op_id, lambda ev, v: retrying(ev, v) and "attempt 4 of 4 in 4 s" in
                         ev.progress.message, timeout=90)  # type: ignore[attr-defined]
    await client.cancel(cmd.op_id, reason="not needed any more")
    view = await wait_terminal(client, cmd.op_id, timeout=30)
    assert view.status == "cancelled" and view.cancel_reason == "not needed any more"
    assert view.attempts == 3
    # The redelivery comes when the wait is over; the worker finds the operation ended and acks it.
    assert await _work_left(client, timeout=60) == 0
    events = await client.events(cmd.op_id)
    ended = [e for e in events if isinstance(e, OperationCancelled | OperationCompleted | OperationFailed)]
    assert len(ended) == 1 and isinstance(ended[0], OperationCancelled), ended
    assert ended[0].actor.startswith("orchestrator") and ended[0].where == "between attempts, after attempt 3"
    last_wait = [e.progress for e in events if retrying(e, None)][-1]
    assert last_wait.next_attempt_at is not None and ended[0].ts < last_wait.next_attempt_at  # not at its end
    assert [e.attempt for e in events if isinstance(e, OperationStarted)] == [1, 2, 3]  # no fourth ran
    assert (await client.view(cmd.op_id)).status == "cancelled"
