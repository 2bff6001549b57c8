"""`ktrdr ops retry ID` against a real stack: a cancelled training's retry resumes from its checkpoint
at the epoch it had reached; a data load that failed while the gateway was away runs again once it
is back; `ops show` names the retry both ways; what may not be retried (completed, still running,
unknown, retried already) is one line, exit 2, nothing created; and a client cannot forge what a
retry runs (the orchestrator runs the command stored for the operation it retries)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from events import subjects
from events.messages import DataContext, LoadData, OperationProgress, RunDummy, StartTraining, TrainingContext
from ktrdr.training.checkpoint_store import CheckpointStore
from tests.actors.test_job_manager import assert_same_bars, expected
from tests.actors.test_trainer import bars_in_store, one_child_for_all_trainers, shared_child  # noqa: F401
from tests.cli.test_cli import ktrdr
from tests.conftest import utc
from tests.faults.test_ib_faults import DISCONNECTED_STATE, restarts  # noqa: F401
from tests.helpers import wait_for_event, wait_terminal

pytestmark = pytest.mark.slow
STRATEGY = Path(__file__).parents[2] / "strategies" / "mlp_rsi_aapl.yaml"


async def retry(settings, op_id: str) -> str:
    rc, out, err = await ktrdr(settings, "ops", "retry", op_id, "--no-wait", "--json")
    assert rc == 0, err
    new = json.loads(out)["op_id"]
    assert subjects.is_op_id(new) and new != op_id
    return new


async def test_retry_of_a_cancelled_training_resumes_at_its_epoch(start_actors, client, bars_in_store,  # noqa: F811
                                                                  settings, one_child_for_all_trainers):  # noqa: F811
    await start_actors("orchestrator", "trainer")
    cmd = StartTraining(op_id=subjects.new_op_id("training"), strategy_path=str(STRATEGY),
                        strategy_yaml=STRATEGY.read_text(), epochs=6, data_mode="none")
    await client.submit(cmd)
    await wait_for_event(client, cmd.op_id, lambda ev, v: isinstance(v.context, TrainingContext)
                         and v.context.checkpoint_epoch >= 2, timeout=90)
    await client.cancel(cmd.op_id)
    old = await wait_terminal(client, cmd.op_id, timeout=60)
    assert old.status == "cancelled"
    assert isinstance(old.context, TrainingContext)
    reached = old.context.checkpoint_epoch
    assert reached >= 2
    assert await CheckpointStore(client.js).stat(cmd.op_id) is not None  # kept for the retry

    new = await retry(settings, cmd.op_id)
    view = await wait_terminal(client, new, timeout=120)
    assert view.status == "completed", view.error
    assert view.retry_of == cmd.op_id
    resumed = [e for e in await client.events(new)
               if isinstance(e, OperationProgress) and "Resumed from checkpoint" in e.progress.message]
    # from the newest checkpoint stored: the one the cancelled run reported, or one it was storing
    assert resumed and resumed[0].progress.context.resumed_from_epoch >= reached
    assert view.result["training_metrics"]["epochs_completed"] == 6
    # Both checkpoints have served once the model is saved.
    assert await CheckpointStore(client.js).stat(cmd.op_id) is None
    assert await CheckpointStore(client.js).stat(new) is None

    rc, out, _ = await ktrdr(settings, "ops", "show", cmd.op_id)
    assert rc == 0 and f"retried by {new}" in out
    rc, out, _ = await ktrdr(settings, "ops", "show", new)
    assert rc == 0 and f"retry of   {cmd.op_id}" in out
    # Retried once: a second retry of it is refused (retry the retry instead), as is one of the
    # completed retry.
    for op_id, words in ((cmd.op_id, f"retried already, by {new}"), (new, "completed")):
        rc, out, err = await ktrdr(settings, "ops", "retry", op_id)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and words in err, err


@pytest.mark.parametrize("gateway_wait_s", [3.0])  # the load gives up on a gateway away 3 s
async def test_retry_of_a_load_that_failed_on_a_lost_gateway_completes_once_it_is_back(
        client, data_stack, gateway, restarts, settings):  # noqa: F811
    gateway.latency_s = 0.3
    cmd = LoadData(op_id=subjects.new_op_id("data"), symbol="AAPL", timeframe="1h", mode="full",
                   start=utc(2022, 1, 1), end=utc(2023, 1, 1), retries=0)  # no policy: it fails at once
    await client.submit(cmd)
    await wait_for_event(client, cmd.op_id, lambda ev, v: isinstance(v.context, DataContext)
                         and v.context.segments_done >= 1, timeout=60)
    port = gateway.port
    await asyncio.to_thread(gateway.stop)
    await wait_for_event(client, cmd.op_id, lambda ev, v: isinstance(ev, OperationProgress)
                         and isinstance(ev.progress.context, DataContext)
                         and ev.progress.context.state == DISCONNECTED_STATE, timeout=30)
    old = await wait_terminal(client, cmd.op_id, timeout=120)
    assert old.status == "failed" and "gateway" in (old.error or "").lower()
    assert isinstance(old.context, DataContext)
    planned_first = old.context.segment_count
    stored_before = len(await data_stack.read("AAPL", "1h"))
    assert stored_before > 0  # what it fetched before the gateway went stays in BARS
    await restarts(port)

    new = await retry(settings, cmd.op_id)
    view = await wait_terminal(client, new, timeout=120)
    assert view.status == "completed", view.error
    assert view.retry_of == cmd.op_id and (await client.view(cmd.op_id)).retried_by == new
    assert view.command["start"] == old.command["start"] and view.command["mode"] == "full"
    # It continued from what BARS held: fewer segments planned than the first run's, none failed, and
    # the bars of the range are those the gateway serves.
    assert view.result["segments_failed"] == 0
    assert 0 < view.result["segments_planned"] < planned_first
    assert_same_bars(await data_stack.read("AAPL", "1h"), expected("AAPL", "1h", utc(2022, 1, 1), utc(2023, 1, 1)))


async def test_what_may_not_be_retried_is_one_line_exit_2_and_nothing_is_created(start_actors, client, settings):
    await start_actors("orchestrator", "dummy")
    done = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=1, interval_s=0.01)
    running = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=600, interval_s=0.5)
    for c in (done, running):
        await client.submit(c)
    await wait_terminal(client, done.op_id)
    await wait_for_event(client, running.op_id, lambda ev, v: v.status == "running", timeout=30)
    before = (await client.js.stream_info(subjects.STREAM_CMD)).state.last_seq
    unknown = subjects.new_op_id("dummy")
    for op_id, words in ((done.op_id, "completed: only a failed or cancelled"),
                         (running.op_id, "still running"), (unknown, f"no operation {unknown}"),
                         ("not-an-id", "not-an-id")):
        rc, out, err = await ktrdr(settings, "ops", "retry", op_id)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert rc == 2 and len(lines) == 1 and words in lines[0] and "Traceback" not in err + out, (op_id, err)
    assert (await client.js.stream_info(subjects.STREAM_CMD)).state.last_seq == before  # no command sent
    await client.cancel(running.op_id)
    await wait_terminal(client, running.op_id)


async def test_a_client_cannot_forge_what_a_retry_runs(start_actors, client):
    await start_actors("orchestrator", "dummy")
    first = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=40, interval_s=0.05)
    await client.submit(first)
    await wait_for_event(client, first.op_id, lambda ev, v: v.percentage > 0, timeout=30)
    await client.cancel(first.op_id)
    assert (await wait_terminal(client, first.op_id)).status == "cancelled"
    # A retry whose body says something else: the orchestrator runs the stored command.
    forged = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=2, interval_s=0.01, retry_of=first.op_id)
    await client.submit(forged)
    view = await wait_for_event(client, forged.op_id, lambda ev, v: v.status == "running" or v.terminal, timeout=30)
    assert view.retry_of == first.op_id
    assert view.command["iterations"] == 40 and view.command["interval_s"] == 0.05
    await client.cancel(forged.op_id)
    await wait_terminal(client, forged.op_id)
    # A retry of a completed operation sent by a client straight to CMD is rejected, naming retry_of.
    done = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=1, interval_s=0.01)
    await client.submit(done)
    await wait_terminal(client, done.op_id)
    bad = RunDummy(op_id=subjects.new_op_id("dummy"), retry_of=done.op_id)
    await client.submit(bad)
    view = await wait_terminal(client, bad.op_id)
    assert view.status == "rejected" and view.error_code == "validation"
    assert "retry_of" in (view.error or "") and "completed" in (view.error or "")
    assert (await client.view(done.op_id)).retried_by is None


async def test_retry_of_a_sweep_with_a_cancelled_variant_runs_only_that_variant(start_actors, client, settings,
                                                                                one_child_for_all_trainers):  # noqa: F811
    from tests.actors.test_sweep import store_bars, sweep

    await store_bars(client)
    await start_actors("orchestrator", "trainer")
    cmd = sweep(("model.training.learning_rate", [0.01, 0.005, 0.001]), epochs=3, max_parallel=1)
    await client.submit(cmd)
    first = subjects.child_op_id(cmd.op_id, "training", "v0")
    await wait_for_event(client, first, lambda ev, v: v.status == "running", timeout=60)
    await client.cancel(first, reason="not now")
    old = await wait_terminal(client, cmd.op_id, timeout=240)
    assert old.status == "completed" and old.result["failed"] == 1, old.error
    assert (await client.view(first)).status == "cancelled"

    new = await retry(settings, cmd.op_id)
    view = await wait_terminal(client, new, timeout=240)
    assert view.status == "completed", view.error
    assert view.result["completed"] == 3 and view.result["failed"] == 0
    # v1 and v2 are the very children that completed (their results reused, not run again); v0 alone ran
    assert view.children[1:] == old.children[1:]
    rerun = await client.view(view.children[0])
    assert rerun.op_id not in old.children and rerun.status == "completed" and rerun.retry_of == first
    assert rerun.parent_op_id == new
    for k in old.children[1:]:
        created = [e for e in await client.events(k) if type(e).__name__ == "OperationCreated"]
        assert len(created) == 1
    rows = {r["variant"]: r for r in view.result["leaderboard"]}
    assert rows[0]["op_id"] == rerun.op_id and rows[1]["op_id"] == old.children[1]
