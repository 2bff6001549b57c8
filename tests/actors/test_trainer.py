"""The trainer actor through NATS (training in its child process): end to end with the full result
schema (bars from BARS, the model and its result into MODELS, KTRDR_HOME holding only a cache),
batch-level cancel (its checkpoint kept for `ops retry`), resume after a killed trainer from CHECKPOINTS, invalid
strategies rejected with the field path, and a path-traversal symbol that writes nothing anywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors._actor import dedupe_key_path
from events import subjects
from events.messages import OperationProgress, StartTraining, TrainingContext
from ktrdr.data.bars_store import BarStore
from ktrdr.training.checkpoint_store import CheckpointStore
from ktrdr.training.model_store import ModelStore
from tests.helpers import scrape, value, wait_for_event, wait_terminal
from tests.training.conftest import make_bars

STRATEGY = Path(__file__).parents[2] / "strategies" / "mlp_rsi_aapl.yaml"


@pytest.fixture(scope="module")
def shared_child():
    from ktrdr.training.process import TrainingProcess

    process = TrainingProcess()
    yield process
    process.close()


@pytest.fixture
def one_child_for_all_trainers(monkeypatch, shared_child):
    """Trainers in a test share one training child: each would otherwise import torch in its own
    (~4 s of CPU on this machine). The actor path is the same; the child serves one run at a time."""
    from actors.trainer import Trainer

    monkeypatch.setattr(Trainer, "training_process", shared_child)


@pytest.fixture
async def bars_in_store(client):
    store = BarStore(client.js)
    await store.merge("AAPL", "1h", make_bars(3000, seed=1), "sim")
    return store


def start_training(epochs: int = 3, text: str | None = None) -> StartTraining:
    return StartTraining(op_id=subjects.new_op_id("training"), strategy_path=str(STRATEGY),
                         strategy_yaml=text if text is not None else STRATEGY.read_text(), epochs=epochs,
                         data_mode="none")


def batch_level(ev, view) -> bool:
    return isinstance(ev, OperationProgress) and isinstance(ev.progress.context, TrainingContext) \
        and ev.progress.context.batch > 0


async def test_training_end_to_end_saves_a_model_and_reports_epochs(start_actors, client, bars_in_store, settings):
    actors = await start_actors("orchestrator", "trainer")
    cmd = start_training(epochs=3)
    lines: list[str] = []
    await client.submit(cmd)
    view = await wait_terminal(client, cmd.op_id, timeout=90)
    assert view.status == "completed", view.error
    events = await client.events(cmd.op_id)
    lines = [e.progress.message for e in events if isinstance(e, OperationProgress)]
    assert any("Training MLP on AAPL [1h] [epoch 3/3]" in m for m in lines)
    phases = {e.progress.phase for e in events if isinstance(e, OperationProgress)}
    assert {"initializing", "loading_data", "building_features", "training", "evaluating", "saving"} <= phases
    r = view.result
    for key in ("training_metrics", "validation_metrics", "test_metrics", "resource_usage", "artifacts",
                "session_info", "model_info", "data_summary", "gpu_used"):
        assert key in r
    assert r["training_metrics"]["epochs_completed"] == 3
    assert [h["epoch"] for h in r["training_metrics"]["history"]] == [1, 2, 3]
    assert r["resource_usage"]["device"] == "cpu" and r["resource_usage"]["training_mode"] == "local"
    assert r["gpu_used"] is False
    trainer = next(a for a in actors if a.role == "trainer")
    assert r["session_info"]["operation_id"] == cmd.op_id and r["session_info"]["actor"] == trainer.id
    assert r["session_info"]["pool"] == "any" and r["session_info"]["host"]
    assert r["data_summary"]["simulated"] is True
    models = ModelStore(client.js)
    rows = await models.list()
    assert [row["name"] for row in rows] == [r["artifacts"]["name"]] == ["mlp_rsi_aapl/AAPL_1h_v1"]
    assert r["artifacts"]["model_path"] == "MODELS/mlp_rsi_aapl/AAPL_1h_v1/model.pt"
    assert rows[0]["latest"] and rows[0]["simulated"] and rows[0]["op_id"] == cmd.op_id
    shown = await models.show("mlp_rsi_aapl")
    assert [h["epoch"] for h in shown["result"]["training_metrics"]["history"]] == [1, 2, 3]
    assert {"learning_rate", "val_loss", "train_accuracy", "epoch_time_s"} <= set(shown["metrics"]["history"][0])
    assert await CheckpointStore(client.js).get(cmd.op_id) is None  # the model is saved: checkpoint removed
    # /metrics: the training's throughput (set before the verdict went out)
    assert value(await scrape(trainer.metrics_url), "ktrdr_training_samples_per_second", pool="any") > 0
    # nothing of record on this disk (the orchestrator in this process keeps its dedupe key here)
    assert {p.name for p in settings.home.iterdir()} <= {"cache", dedupe_key_path(settings, "orchestrator").name}
    child = trainer.training_process.pid
    assert child is not None  # torch ran in the child, which serves on
    await trainer.stop()
    assert trainer.training_process.pid is None  # and is closed with the actor


async def test_cancel_mid_epoch_stops_at_batch_level(start_actors, client, bars_in_store, one_child_for_all_trainers):
    from actors.trainer import Trainer

    Trainer.batch_every = 1  # a progress event per batch, so the cancel lands mid-epoch
    try:
        await start_actors("orchestrator", "trainer")
        cmd = start_training(epochs=50)
        await client.submit(cmd)
        await wait_for_event(client, cmd.op_id, batch_level, timeout=60)
        await client.cancel(cmd.op_id)
        view = await wait_terminal(client, cmd.op_id, timeout=30)
    finally:
        Trainer.batch_every = None
    assert view.status == "cancelled"
    assert view.where is not None and view.where.startswith("epoch ") and ", batch " in view.where
    assert view.message == f"Training cancelled at {view.where}"
    # A checkpoint it stored stays for `ktrdr ops retry` (tests/cli/test_ops_retry.py); stopped within
    # its first epoch, it has none.
    assert (await CheckpointStore(client.js).get(cmd.op_id) is not None) == (view.context.checkpoint_epoch > 0)


async def test_killed_trainer_resumes_from_checkpoint_on_redelivery(start_actors, client, bars_in_store, settings,
                                                                     one_child_for_all_trainers):
    await start_actors("orchestrator")
    first, = await start_actors("trainer")
    cmd = start_training(epochs=12)
    await client.submit(cmd)
    await wait_for_event(client, cmd.op_id, lambda ev, v: isinstance(v.context, TrainingContext)
                         and v.context.epoch >= 3 and v.context.batch == 0 and v.phase == "training", timeout=60)
    await first.kill()  # its run is cancelled within a batch; the next trainer resumes from the checkpoint
    await start_actors("trainer")
    view = await wait_terminal(client, cmd.op_id, timeout=90)
    assert view.status == "completed", view.error
    assert view.attempts == 2
    events = await client.events(cmd.op_id)
    resumed = [e for e in events
               if isinstance(e, OperationProgress) and "Resumed from checkpoint" in e.progress.message]
    assert resumed and resumed[0].progress.context.resumed_from_epoch >= 2
    assert view.result["training_metrics"]["epochs_completed"] == 12


@pytest.mark.parametrize(("mutate", "path"), [
    (lambda t: t.replace("optimizer: adam", "optimizer: lbfgs"), "model.training.optimizer"),
    (lambda t: t.replace("period: 14", "period: -3"), "indicators[0].period"),
    (lambda t: t.replace("train: 0.7", "train: 0.9"), "training.data_split"),
])
async def test_invalid_strategy_is_rejected_with_field_path(start_actors, client, mutate, path,
                                                             one_child_for_all_trainers):
    await start_actors("orchestrator", "trainer")
    cmd = start_training(text=mutate(STRATEGY.read_text()))
    await client.submit(cmd)
    view = await wait_terminal(client, cmd.op_id)
    assert view.status == "rejected"
    assert path in view.error and "mlp_rsi_aapl.yaml" in view.error
    events = await client.events(cmd.op_id)
    assert not any(type(e).__name__ == "OperationStarted" for e in events)


async def test_path_traversal_symbol_fails_and_writes_nothing_outside_home(start_actors, client, bars_in_store,
                                                                           settings, tmp_path,
                                                                           one_child_for_all_trainers):
    await start_actors("orchestrator", "trainer")

    def outside_home() -> set[Path]:
        return {p for p in tmp_path.rglob("*")
                if not p.is_relative_to(settings.home) and not p.is_relative_to(tmp_path / "nats-store")}

    before = outside_home()
    cmd = StartTraining(op_id=subjects.new_op_id("training"), strategy_path=str(STRATEGY),
                        strategy_yaml=STRATEGY.read_text(), symbols=["../../../AAPL"], epochs=1)
    await client.submit(cmd)
    view = await wait_terminal(client, cmd.op_id, timeout=60)
    assert view.status in ("rejected", "failed")
    assert view.status == "rejected" and "symbols[0]" in view.error and "not a symbol" in view.error
    assert outside_home() == before
    assert not (tmp_path.parent / "models").exists() and await ModelStore(client.js).list() == []
