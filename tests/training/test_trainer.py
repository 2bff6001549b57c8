"""train_strategy end to end: learning, cancellation, checkpoint resume, determinism, result schema."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from ktrdr.cancellation import CancellationToken
from ktrdr.errors import OperationCancelledError, ValidationError
from ktrdr.training.progress import PHASES
from ktrdr.training.registry import list_models, show_model
from ktrdr.training.strategy import Strategy, parse_strategy
from ktrdr.training.trainer import CHECKPOINT_FILE, TrainingOperationContext, resolve_device, train_strategy
from tests.training.conftest import SMALL_STRATEGY, Recorder

Loader = Callable[[str, str], pd.DataFrame]

RESULT_SCHEMA: dict[str, set[str]] = {
    "training_metrics": {
        "final_train_loss",
        "final_val_loss",
        "final_train_accuracy",
        "final_val_accuracy",
        "epochs_completed",
        "early_stopped",
        "best_epoch",
        "training_time_minutes",
    },
    "validation_metrics": {"val_loss", "val_accuracy", "precision", "recall", "f1_score"},
    "test_metrics": {"test_loss", "test_accuracy", "precision", "recall", "f1_score"},
    "resource_usage": {"device", "gpu_name", "training_mode"},
    "artifacts": {"model_path"},
    "session_info": {"operation_id", "strategy_name", "symbols", "timeframes"},
    "model_info": {"parameter_count", "architecture"},
    "data_summary": {"samples", "feature_count", "per_symbol"},
}


def _run(
    strategy: Strategy,
    loader: Loader,
    ckpt: Path,
    models: Path,
    *,
    emit: Recorder | None = None,
    cancel: CancellationToken | None = None,
    op_id: str = "op-test",
    batch_every: int = 20,
    **ctx_kw: Any,
) -> dict[str, Any]:
    ctx = TrainingOperationContext(op_id=op_id, strategy=strategy, device="cpu", **ctx_kw)
    return train_strategy(
        ctx,
        load_bars=loader,
        emit=emit or Recorder(),
        cancel=cancel or CancellationToken(),
        checkpoint_dir=ckpt,
        models_dir=models,
        batch_every=batch_every,
    )


def _comparable(result: dict[str, Any]) -> dict[str, Any]:
    tm = dict(result["training_metrics"])
    tm.pop("training_time_minutes")
    return {"training": tm, "val": result["validation_metrics"], "test": result["test_metrics"]}


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Recorder, Path]:
    """One uninterrupted run, shared by the tests that only read its result."""
    from tests.training.conftest import bar_loader, make_bars

    root = tmp_path_factory.mktemp("baseline")
    rec = Recorder()
    loader = bar_loader({"AAPL": make_bars(2000, seed=1)})
    result = _run(parse_strategy(SMALL_STRATEGY), loader, root / "ckpt", root / "models", emit=rec)
    return result, rec, root / "models"


def test_training_learns_synthetic_cycle_loss_falls_accuracy_above_chance(baseline_run) -> None:
    result, _, _ = baseline_run
    history = json.loads(Path(result["artifacts"]["model_dir"], "metrics.json").read_text())["history"]
    assert len(history) == 6
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    test = result["test_metrics"]
    classes = result["data_summary"]["class_distribution"]["test"]
    majority = max(classes.values()) / sum(classes.values())
    assert test["test_accuracy"] > max(0.5, majority + 0.05)
    assert test["f1_score"] > 0.4


def test_result_has_every_schema_key_and_is_json(baseline_run) -> None:
    result, _, _ = baseline_run
    for section, keys in RESULT_SCHEMA.items():
        assert keys <= set(result[section]), section
    assert set(RESULT_SCHEMA["training_metrics"]) == set(result["training_metrics"])
    assert set(RESULT_SCHEMA["test_metrics"]) == set(result["test_metrics"])
    assert result["resource_usage"] == {"device": "cpu", "gpu_name": None, "training_mode": "local"}
    assert result["session_info"]["symbols"] == ["AAPL"]
    assert result["data_summary"]["per_symbol"]["AAPL"]["train"] > 0
    assert result["model_info"]["parameter_count"] > 0
    json.loads(json.dumps(result))


def test_progress_reports_phases_epochs_and_throttled_batches(baseline_run) -> None:
    _, rec, _ = baseline_run
    phases = list(dict.fromkeys(u.phase for u in rec.updates))
    assert phases == list(PHASES)
    pct = [u.percentage for u in rec.updates]
    assert pct == sorted(pct) and pct[-1] == 100.0
    epoch_updates = [u for u in rec.updates if u.phase == "training" and "train_loss" in u.context.metrics]
    assert [u.context.epoch for u in epoch_updates] == [1, 2, 3, 4, 5, 6]
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy"} <= set(
        epoch_updates[0].context.metrics
    )
    assert epoch_updates[0].message.startswith("Training MLP on AAPL [1h] [epoch 1/6]")
    total = epoch_updates[0].context.total_batches
    batches = [u.context.batch for u in rec.updates if u.context.batch and u.context.epoch == 1]
    assert batches == sorted({1, total, *range(20, total + 1, 20)})
    batch_msg = next(u.message for u in rec.updates if u.context.batch == 1)
    assert f"Epoch 1/6 · Batch 1/{total}" in batch_msg
    assert rec.updates[-1].items_processed == rec.updates[-1].items_total == 6 * total


def test_artifacts_written_and_listed(baseline_run) -> None:
    result, _, models = baseline_run
    d = Path(result["artifacts"]["model_dir"])
    assert d.name == "AAPL_1h_v1" and d.parent.name == "test_small"
    for name in ("model.pt", "config.json", "metrics.json", "features.json", "metadata.json"):
        assert (d / name).exists()
    features = json.loads((d / "features.json").read_text())
    assert (
        len(features["names"]) == result["data_summary"]["feature_count"] == len(features["scaler"]["mean"])
    )
    shown = show_model(models, "test_small/AAPL_1h")
    assert shown["metadata"]["op_id"] == "op-test" and shown["path"] == str(d)
    assert show_model(models, "test_small")["path"] == str(d)
    rows = list_models(models)
    assert [r["name"] for r in rows] == ["test_small/AAPL_1h_v1"] and rows[0]["latest"]
    state = torch.load(d / "model.pt", weights_only=True)
    assert any(k.endswith("weight") for k in state)


def test_cancel_from_sink_mid_epoch_stops_at_that_batch(small_strategy, aapl_loader, tmp_dirs) -> None:
    token = CancellationToken()

    def trip(update: Any) -> None:
        if update.context.epoch == 2 and update.context.batch == 10:
            token.cancel("test")

    rec = Recorder(trip)
    ckpt, models = tmp_dirs
    ctx = TrainingOperationContext(op_id="op-c", strategy=small_strategy, device="cpu")
    with pytest.raises(OperationCancelledError) as info:
        train_strategy(
            ctx,
            load_bars=aapl_loader,
            emit=rec,
            cancel=token,
            checkpoint_dir=ckpt,
            models_dir=models,
            batch_every=5,
        )
    assert info.value.where == "epoch 2, batch 10"
    last = rec.updates[-1]
    assert (last.context.epoch, last.context.batch) == (2, 10)
    assert (ckpt / CHECKPOINT_FILE).exists()  # epoch 1's checkpoint survives for a resume
    assert list_models(models) == []


def test_cancel_before_training_stops_while_loading(small_strategy, aapl_loader, tmp_dirs) -> None:
    token = CancellationToken()
    token.cancel()
    with pytest.raises(OperationCancelledError) as info:
        _run(small_strategy, aapl_loader, *tmp_dirs, cancel=token)
    assert info.value.where == "loading AAPL 1h"


@pytest.mark.parametrize(("cancel_epoch", "cancel_batch"), [(2, 0), (3, 7)], ids=["epoch_end", "mid_epoch"])
def test_kill_and_resume_matches_uninterrupted_run(
    small_strategy, aapl_loader, tmp_path: Path, baseline_run, cancel_epoch: int, cancel_batch: int
) -> None:
    token = CancellationToken()

    def trip(update: Any) -> None:
        at_epoch_end = cancel_batch == 0 and "train_loss" in update.context.metrics
        if update.context.epoch == cancel_epoch and (at_epoch_end or update.context.batch == cancel_batch):
            token.cancel("killed")

    ckpt, models = tmp_path / "ckpt", tmp_path / "models"
    with pytest.raises(OperationCancelledError):
        _run(small_strategy, aapl_loader, ckpt, models, emit=Recorder(trip), cancel=token, batch_every=1)

    rec = Recorder()
    resumed = _run(small_strategy, aapl_loader, ckpt, models, emit=rec)
    completed_epoch = cancel_epoch if cancel_batch == 0 else cancel_epoch - 1
    notes = [u for u in rec.updates if u.message == f"Resumed from checkpoint at epoch {completed_epoch}"]
    assert len(notes) == 1
    assert rec.updates[-1].context.resumed_from_epoch == completed_epoch
    epochs_trained = [
        u.context.epoch for u in rec.updates if "train_loss" in u.context.metrics and u.phase == "training"
    ]
    assert epochs_trained[0] == completed_epoch or epochs_trained[0] == completed_epoch + 1

    uninterrupted, _, _ = baseline_run
    assert _comparable(resumed) == _comparable(uninterrupted)
    a = torch.load(resumed["artifacts"]["model_path"], weights_only=True)
    b = torch.load(uninterrupted["artifacts"]["model_path"], weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (ckpt / CHECKPOINT_FILE).exists()


def test_same_seed_gives_identical_metrics_and_versions_increment(baseline_run, tmp_path: Path) -> None:
    from tests.training.conftest import bar_loader, make_bars

    first, _, _ = baseline_run
    loader = bar_loader({"AAPL": make_bars(2000, seed=1)})
    models = tmp_path / "models"
    again = _run(parse_strategy(SMALL_STRATEGY), loader, tmp_path / "c1", models)
    assert _comparable(again) == _comparable(first)
    other = _run(parse_strategy(SMALL_STRATEGY), loader, tmp_path / "c2", models, seed=7, epochs=2)
    assert _comparable(other) != _comparable(first)
    assert other["training_metrics"]["epochs_completed"] == 2
    assert other["artifacts"]["version"] == 2
    assert (models / "test_small" / "AAPL_1h_latest").read_text().strip() == "AAPL_1h_v2"
    assert [r["latest"] for r in list_models(models)] == [False, True]


def test_multi_symbol_multi_timeframe_trains_and_reports_per_symbol(aapl_loader, tmp_dirs) -> None:
    text = SMALL_STRATEGY.replace(
        "symbols: {mode: single_symbol, list: [AAPL]}", "symbols: {mode: multi_symbol, list: [AAPL, MSFT]}"
    ).replace(
        "timeframes: {mode: single_timeframe, list: [1h], base_timeframe: 1h}",
        "timeframes: {mode: multi_timeframe, list: [1h, 4h], base_timeframe: 1h}",
    )
    rec = Recorder()
    result = _run(parse_strategy(text), aapl_loader, *tmp_dirs, emit=rec, epochs=2)
    per = result["data_summary"]["per_symbol"]
    assert set(per) == {"AAPL", "MSFT"} and per["MSFT"]["bars"] == {"1h": 2000, "4h": 500}
    samples = result["data_summary"]["samples"]
    assert samples["train"] == per["AAPL"]["train"] + per["MSFT"]["train"]
    assert Path(result["artifacts"]["model_dir"]).name == "AAPL-MSFT_1h-4h_v1"
    assert any(u.message.startswith("Training MLP on AAPL, MSFT [1h, 4h] [epoch 1/2]") for u in rec.updates)


def test_early_stopping_stops_before_the_epoch_limit(small_strategy, aapl_loader, tmp_dirs) -> None:
    text = SMALL_STRATEGY.replace("patience: 50", "patience: 1").replace(
        "learning_rate: 0.005", "learning_rate: 0.5"
    )
    result = _run(parse_strategy(text), aapl_loader, *tmp_dirs, epochs=30)
    tm = result["training_metrics"]
    assert tm["early_stopped"] is True and tm["epochs_completed"] < 30
    assert tm["best_epoch"] == tm["epochs_completed"] - 1


def test_device_cuda_without_gpu_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValidationError, match="CUDA"):
        resolve_device("cuda")
    monkeypatch.setenv("KTRDR_DEVICE", "cpu")
    assert resolve_device("auto").type == "cpu"
    monkeypatch.setenv("KTRDR_DEVICE", "cuda")
    with pytest.raises(ValidationError):
        resolve_device("auto")


def test_bare_baseline_trains_the_same_model_as_the_instrumented_loop(baseline_run) -> None:
    from ktrdr.training.baseline import train_bare
    from ktrdr.training.features import check_bars
    from ktrdr.training.trainer import prepare_training_data
    from tests.training.conftest import make_bars

    result, _, _ = baseline_run
    assert result["training_metrics"]["best_epoch"] == 6  # the saved weights are the last epoch's
    strategy = parse_strategy(SMALL_STRATEGY)
    data = prepare_training_data(
        strategy, {"AAPL": {"1h": check_bars(make_bars(2000, seed=1), "AAPL", "1h")}}, ["AAPL"]
    )
    bare = train_bare(data.x_train, data.y_train, strategy, epochs=6, seed=42)
    saved = torch.load(result["artifacts"]["model_path"], weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in bare.state_dict().items())


def test_scaler_is_fitted_on_training_rows_only(small_strategy) -> None:
    import numpy as np

    from ktrdr.training.features import check_bars
    from ktrdr.training.trainer import prepare_training_data
    from tests.training.conftest import make_bars

    bars = make_bars(1500, seed=3)
    data = prepare_training_data(small_strategy, {"AAPL": {"1h": check_bars(bars, "AAPL", "1h")}}, ["AAPL"])
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0.0, atol=1e-4)
    # validation / test were transformed with the training statistics, not their own
    assert not np.allclose(data.x_test.mean(axis=0), 0.0, atol=1e-3)


def test_start_end_restrict_the_bars_used(small_strategy, aapl_loader, tmp_dirs) -> None:
    from datetime import UTC, datetime

    start, end = datetime(2024, 1, 10, tzinfo=UTC), datetime(2024, 2, 20, tzinfo=UTC)
    result = _run(small_strategy, aapl_loader, *tmp_dirs, epochs=1, start=start, end=end)
    info = result["data_summary"]["per_symbol"]["AAPL"]
    assert info["first"] >= start.isoformat() and info["last"] <= end.isoformat()
    assert info["bars"]["1h"] == 41 * 24  # bars start at :30, so 2024-01-10 00:30 .. 2024-02-19 23:30


def test_checkpoint_from_another_configuration_is_not_resumed(small_strategy, aapl_loader, tmp_dirs) -> None:
    token = CancellationToken()

    def trip(update: Any) -> None:
        if "train_loss" in update.context.metrics:
            token.cancel()

    ckpt, models = tmp_dirs
    with pytest.raises(OperationCancelledError):
        _run(small_strategy, aapl_loader, ckpt, models, emit=Recorder(trip), cancel=token)
    rec = Recorder()
    result = _run(small_strategy, aapl_loader, ckpt, models, emit=rec, seed=99, epochs=2)
    assert any("different configuration" in u.message for u in rec.updates)
    assert not any(u.message.startswith("Resumed") for u in rec.updates)
    assert result["training_metrics"]["epochs_completed"] == 2
