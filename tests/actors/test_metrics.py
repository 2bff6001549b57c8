"""Prometheus metrics on a running stack: each actor advertises its process's /metrics URL in its
presence record (and `ktrdr status` shows it); a scrape, parsed with prometheus-client's own text
parser, has the process's RSS and CPU and one info series per actor; an operation moves the counters
it should (started, ended by outcome, duration and queue-wait histograms, work in flight back to
zero, progress events, the orchestrator's command endpoint, lease renewals). The registry is the
process's, shared by every test in it: every check is a difference between two scrapes."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest

from events import subjects
from events.messages import RunDummy
from tests.actors.test_discovery import FailingDummy
from tests.conftest import make_settings
from tests.helpers import run_ktrdr, scrape, scrape_until, value, wait_for_event, wait_terminal

pytestmark = pytest.mark.timeout(90)

async def test_each_actor_advertises_metrics_and_the_scrape_has_the_process_figures(start_actors, client):
    orch, dummy = await start_actors("orchestrator", "dummy")
    records = {hb.actor: hb for hb in await client.live_actors()}
    url = records[dummy.id].metrics_url
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    assert records[orch.id].metrics_url == url  # one server per process, shared by its actors
    samples = await scrape(url)
    assert value(samples, "process_resident_memory_bytes") > 0
    assert ("process_cpu_seconds_total", frozenset()) in samples
    infos = {dict(labels)["actor"]: dict(labels) for (name, labels) in samples if name == "ktrdr_actor_info"}
    assert infos[dummy.id]["role"] == "dummy" and infos[dummy.id]["pools"] == "any"
    assert orch.id in infos


async def test_ktrdr_status_shows_each_actors_metrics_url(start_actors, settings):
    _orch, dummy = await start_actors("orchestrator", "dummy")
    env = {**os.environ, "NATS_URL": settings.nats_url or "", "KTRDR_HOME": str(settings.home)}
    shown = await asyncio.to_thread(run_ktrdr, env, "status", timeout=60)
    assert shown.returncode == 0, shown.stderr
    line = next(ln for ln in shown.stdout.splitlines() if dummy.id in ln)
    assert f"metrics {dummy.metrics_url}" in line


async def test_an_operation_moves_the_counters_it_should(start_actors, client):
    _orch, dummy = await start_actors("orchestrator", "dummy")
    op = {"role": "dummy", "domain": "dummy", "pool": "any"}
    before = await scrape(dummy.metrics_url)
    cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=40, interval_s=0.05)
    await client.submit(cmd)
    await wait_for_event(client, cmd.op_id, lambda ev, v: v.current_step >= 2, timeout=30)
    running = await scrape(dummy.metrics_url)
    assert value(running, "ktrdr_work_in_flight", **op) == value(before, "ktrdr_work_in_flight", **op) + 1
    # a lease renewal is counted once a heartbeat passes while it runs: wait for it, then cancel
    renewed = {"role": "dummy", "domain": "dummy", "result": "ok"}
    await scrape_until(dummy.metrics_url, lambda s: value(s, "ktrdr_lease_renewals_total", **renewed)
                       > value(before, "ktrdr_lease_renewals_total", **renewed))
    await client.cancel(cmd.op_id)
    view = await client.watch(cmd.op_id, lambda ev, v: None, idle_timeout=30)
    assert view.status == "cancelled"
    # the worker counts the end just after its run (the scrape is served on another thread: one
    # scrape may fall between the two), so wait for both
    after = await scrape_until(dummy.metrics_url, lambda s: value(s, "ktrdr_work_in_flight", **op)
                               == value(before, "ktrdr_work_in_flight", **op)
                               and value(s, "ktrdr_operations_ended_total", **op, outcome="cancelled")
                               > value(before, "ktrdr_operations_ended_total", **op, outcome="cancelled"))

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("ktrdr_operations_started_total", **op) == 1
    assert moved("ktrdr_operations_ended_total", **op, outcome="cancelled") == 1
    assert moved("ktrdr_operations_ended_total", **op, outcome="completed") == 0
    assert moved("ktrdr_operation_duration_seconds_count", **op, outcome="cancelled") == 1
    assert moved("ktrdr_operation_duration_seconds_sum", **op, outcome="cancelled") > 0
    assert moved("ktrdr_queue_wait_seconds_count", **op) == 1
    assert value(after, "ktrdr_work_in_flight", **op) == value(before, "ktrdr_work_in_flight", **op)
    assert moved("ktrdr_progress_events_published_total", role="dummy") >= 2
    assert moved("ktrdr_endpoint_requests_total", role="orchestrator", endpoint="commands") == 1
    assert moved("ktrdr_endpoint_requests_total", role="dummy", endpoint="work-dummy-any") == 1


async def test_a_failed_operation_is_counted_as_failed(start_actors, client, settings):
    await start_actors("orchestrator")
    dummy = FailingDummy(settings)
    await dummy.start()
    try:
        op = {"role": "dummy", "domain": "dummy", "pool": "any", "outcome": "failed"}
        before = await scrape(dummy.metrics_url)
        cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=3, interval_s=0.01)
        await client.submit(cmd)
        assert (await client.watch(cmd.op_id, lambda ev, v: None, idle_timeout=30)).status == "failed"
        after = await scrape_until(dummy.metrics_url, lambda s: value(s, "ktrdr_operations_ended_total", **op)
                                   > value(before, "ktrdr_operations_ended_total", **op))
        assert value(after, "ktrdr_operations_ended_total", **op) == value(
            before, "ktrdr_operations_ended_total", **op) + 1
        assert value(after, "ktrdr_operations_ended_total", **{**op, "outcome": "completed"}) == value(
            before, "ktrdr_operations_ended_total", **{**op, "outcome": "completed"})
    finally:
        await dummy.stop()


async def test_metrics_off_advertises_no_url(start_actors, settings, client):
    off = make_settings(settings.home, settings.nats_url or "", metrics_port=None)
    (dummy,) = await start_actors("dummy", settings=off)
    assert dummy.metrics_url == ""
    records: dict[str, Any] = {hb.actor: hb for hb in await client.live_actors()}
    assert records[dummy.id].metrics_url == ""


@pytest.mark.slow
async def test_a_publish_retried_while_the_server_is_paused_moves_the_retry_and_resend_counters(
        start_actors, client, settings, nats_server):
    """The server stops answering (SIGSTOP: its sockets stay open, nothing is acknowledged) while a
    dummy runs and then finishes: its lease check goes unanswered for its worker_timeout_s, then its
    `completed` publish times out and is tried again, and the progress events whose acks are missing
    are sent again; both counted on its /metrics. Resumed, the operation completes once. (The
    orchestrator is patient, so it fails nobody meanwhile.)"""
    url = settings.nats_url or ""
    await start_actors("orchestrator", settings=make_settings(settings.home, url, worker_timeout_s=120.0,
                                                             orphan_timeout_s=120.0))
    (dummy,) = await start_actors("dummy", settings=make_settings(settings.home, url, worker_timeout_s=2.0))
    before = await scrape(dummy.metrics_url)
    cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=20, interval_s=0.05)
    await client.submit(cmd)
    await wait_for_event(client, cmd.op_id, lambda ev, v: v.current_step >= 2, timeout=30)
    nats_server.proc.send_signal(signal.SIGSTOP)
    try:
        # the verdict goes out 2 s after the dummy ends and waits 2 s for its ack before each retry;
        # unacked progress is resent after the publisher's ACK_TIMEOUT_S (5 s): well within the bound
        paused = await scrape_until(dummy.metrics_url, lambda s: (
            value(s, "ktrdr_publish_retries_total") > value(before, "ktrdr_publish_retries_total")
            and value(s, "ktrdr_publish_resends_total", role="dummy")
            > value(before, "ktrdr_publish_resends_total", role="dummy")), timeout=45)
    finally:
        nats_server.proc.send_signal(signal.SIGCONT)
    view = await wait_terminal(client, cmd.op_id, timeout=45)
    assert view.status == "completed" and view.result is not None
    after = await scrape_until(dummy.metrics_url, lambda s: value(s, "ktrdr_operations_ended_total", role="dummy",
                               domain="dummy", pool="any", outcome="completed")
                               > value(before, "ktrdr_operations_ended_total", role="dummy", domain="dummy",
                                       pool="any", outcome="completed"))
    ended = {"role": "dummy", "domain": "dummy", "pool": "any"}
    assert value(after, "ktrdr_operations_ended_total", **ended, outcome="completed") == value(
        before, "ktrdr_operations_ended_total", **ended, outcome="completed") + 1  # once, not twice
    assert value(after, "ktrdr_publish_retries_total") >= value(paused, "ktrdr_publish_retries_total")
    assert value(after, "ktrdr_publish_given_up_total", role="dummy") == value(
        before, "ktrdr_publish_given_up_total", role="dummy")  # resent within the dedupe window: none lost
