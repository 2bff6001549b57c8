"""run_training in-process: learning, the result schema with history, progress as ProgressState,
cancellation, checkpoint resume from bytes, the three pieces, determinism, artifacts saved by the
registry, and checkpoints that would run code refused."""

from __future__ import annotations

import ast
import io
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from events.messages import ProgressState
from ktrdr.cancellation import CancellationToken
from ktrdr.errors import DataError, OperationCancelledError, ValidationError
from ktrdr.training import checkpoint
from ktrdr.training.job import ARTIFACT_FILES, TrainingJob, TrainingOutcome, check_job
from ktrdr.training.progress import PHASES, TrainingProgressBridge
from ktrdr.training.registry import list_models, save_model, show_model
from ktrdr.training.trainer import resolve_device, run_training
from tests.training.conftest import SMALL_STRATEGY, Checkpoints, Recorder, bar_set, make_bars

Bars = dict[str, dict[str, pd.DataFrame]]

RESULT_SCHEMA: dict[str, set[str]] = {
    "training_metrics": {"final_train_loss", "final_val_loss", "final_train_accuracy", "final_val_accuracy",
                         "epochs_completed", "early_stopped", "best_epoch", "training_time_minutes", "history"},
    "validation_metrics": {"val_loss", "val_accuracy", "precision", "recall", "f1_score"},
    "test_metrics": {"test_loss", "test_accuracy", "precision", "recall", "f1_score"},
    "resource_usage": {"device", "gpu_name", "training_mode"},
    "artifacts": {"strategy", "model_key", "files"},
    "session_info": {"operation_id", "strategy_name", "symbols", "timeframes", "training_mode", "host", "actor",
                     "pool"},
    "model_info": {"parameter_count", "architecture"},
    "data_summary": {"samples", "feature_count", "per_symbol"},
}
HISTORY_KEYS = {"epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy", "learning_rate", "epoch_time_s"}


def job(text: str = SMALL_STRATEGY, **kw: Any) -> TrainingJob:
    return TrainingJob(**{"op_id": "op-test", "strategy_yaml": text, "strategy_path": "small.yaml",
                          "device": "cpu", **kw})


def run(bars: Bars, *, emit: Recorder | None = None, cancel: CancellationToken | None = None,
        resume: bytes | None = None, on_checkpoint: Checkpoints | None = None, text: str = SMALL_STRATEGY,
        **kw: Any) -> TrainingOutcome:
    return run_training(job(text, **kw), bars, emit=emit or Recorder(), cancel=cancel or CancellationToken(),
                        resume=resume, on_checkpoint=on_checkpoint)


def comparable(result: dict[str, Any]) -> dict[str, Any]:
    """The figures that must agree between runs (not the clocks)."""
    tm = dict(result["training_metrics"])
    tm.pop("training_time_minutes")
    tm["history"] = [{k: v for k, v in h.items() if k != "epoch_time_s"} for h in tm["history"]]
    return {"training": tm, "val": result["validation_metrics"], "test": result["test_metrics"]}


def weights(outcome: TrainingOutcome) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(outcome.artifacts["model.pt"]), weights_only=True)


@pytest.fixture(scope="module")
def aapl() -> Bars:
    return bar_set({"AAPL": make_bars(2000, seed=1)}, ("1h",))


@pytest.fixture(scope="module")
def baseline(aapl: Bars) -> tuple[TrainingOutcome, Recorder, Checkpoints]:
    """One uninterrupted run, shared by the tests that only read it."""
    rec, ckpts = Recorder(), Checkpoints()
    return run(aapl, emit=rec, on_checkpoint=ckpts, host="box", actor="trainer-1", pool="cpu"), rec, ckpts


def test_training_learns_synthetic_cycle_loss_falls_accuracy_above_chance(baseline) -> None:
    outcome, _, _ = baseline
    history = outcome.result["training_metrics"]["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    test = outcome.result["test_metrics"]
    classes = outcome.result["data_summary"]["class_distribution"]["test"]
    majority = max(classes.values()) / sum(classes.values())
    assert test["test_accuracy"] > max(0.5, majority + 0.05)
    assert test["f1_score"] > 0.4


def test_result_has_every_schema_key_history_per_epoch_and_is_json(baseline) -> None:
    r = baseline[0].result
    for section, keys in RESULT_SCHEMA.items():
        assert keys <= set(r[section]), section
    assert set(RESULT_SCHEMA["training_metrics"]) == set(r["training_metrics"])
    assert set(RESULT_SCHEMA["test_metrics"]) == set(r["test_metrics"])
    assert all(set(h) == HISTORY_KEYS for h in r["training_metrics"]["history"])
    assert all(h["learning_rate"] == 0.005 and h["epoch_time_s"] > 0 for h in r["training_metrics"]["history"])
    assert r["gpu_used"] is False
    assert r["resource_usage"] == {"device": "cpu", "gpu_name": None, "training_mode": "local"}  # no GPU figures
    assert r["session_info"] == {"operation_id": "op-test", "strategy_name": "test_small", "symbols": ["AAPL"],
                                 "timeframes": ["1h"], "training_mode": "local", "host": "box",
                                 "actor": "trainer-1", "pool": "cpu"}
    assert r["artifacts"]["model_key"] == "AAPL_1h" and r["artifacts"]["files"] == list(ARTIFACT_FILES)
    assert r["data_summary"]["per_symbol"]["AAPL"]["train"] > 0
    assert r["model_info"]["parameter_count"] > 0
    json.loads(json.dumps(r))


def test_progress_is_wire_progress_state_with_phases_epochs_and_throttled_batches(baseline) -> None:
    _, rec, _ = baseline
    assert all(isinstance(u, ProgressState) for u in rec.updates)
    assert list(dict.fromkeys(u.phase for u in rec.updates)) == list(PHASES)
    pct = [u.percentage for u in rec.updates]
    assert pct == sorted(pct) and pct[-1] == 100.0
    epoch_updates = [u for u in rec.updates if u.phase == "training" and "train_loss" in u.context.metrics]
    assert [u.context.epoch for u in epoch_updates] == [1, 2, 3, 4, 5, 6]
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_time_s"} <= set(
        epoch_updates[0].context.metrics)
    assert not any(k.startswith("gpu_") for u in epoch_updates for k in u.context.metrics)  # CPU: absent
    assert epoch_updates[0].message.startswith("Training MLP on AAPL [1h] [epoch 1/6] train_loss=")
    total = epoch_updates[0].context.total_batches
    batches = [u.context.batch for u in rec.updates if u.context.batch and u.context.epoch == 1]
    assert batches == sorted({1, total, *range(20, total + 1, 20)})
    assert f"Epoch 1/6 · Batch 1/{total}" in next(u.message for u in rec.updates if u.context.batch == 1)
    assert rec.updates[-1].items_processed == rec.updates[-1].items_total == 6 * total


def test_a_checkpoint_per_epoch_loads_weights_only(baseline) -> None:
    _, _, ckpts = baseline
    assert ckpts.epochs == [1, 2, 3, 4, 5, 6]
    payload = checkpoint.decode(ckpts.latest)
    assert payload["epoch"] == 6 and len(payload["history"]) == 6
    torch.load(io.BytesIO(ckpts.latest), weights_only=True)  # no pickled objects beyond plain data


def test_artifacts_saved_by_the_registry_are_listed_and_shown(baseline, tmp_path: Path) -> None:
    outcome, _, _ = baseline
    models = tmp_path / "models"
    paths = save_model(models, "test_small", ["AAPL"], ["1h"], outcome.artifacts)
    d = Path(paths["model_dir"])
    assert d == (models / "test_small" / "AAPL_1h_v1").resolve()
    assert sorted(p.name for p in d.iterdir()) == sorted(ARTIFACT_FILES)
    features = json.loads((d / "features.json").read_text())
    assert len(features["names"]) == outcome.result["data_summary"]["feature_count"] == len(features["scaler"]["mean"])
    metrics = json.loads((d / "metrics.json").read_text())
    assert len(metrics["history"]) == 6 and metrics["history"] == metrics["training_metrics"]["history"]
    shown = show_model(models, "test_small/AAPL_1h")
    assert shown["metadata"]["op_id"] == "op-test" and shown["metadata"]["version"] == 1
    assert shown["metadata"]["actor"] == "trainer-1" and shown["path"] == str(d)
    assert [r["name"] for r in list_models(models)] == ["test_small/AAPL_1h_v1"]
    state = torch.load(d / "model.pt", weights_only=True)
    assert any(k.endswith("weight") for k in state)


def test_cancel_from_sink_mid_epoch_stops_at_that_batch(aapl) -> None:
    token = CancellationToken()

    def trip(update: ProgressState) -> None:
        if update.context and update.context.epoch == 2 and update.context.batch == 10:
            token.cancel("test")

    rec, ckpts = Recorder(trip), Checkpoints()
    with pytest.raises(OperationCancelledError) as info:
        run(aapl, emit=rec, cancel=token, on_checkpoint=ckpts, batch_every=5)
    assert info.value.where == "epoch 2, batch 10"
    assert (rec.updates[-1].context.epoch, rec.updates[-1].context.batch) == (2, 10)
    assert ckpts.epochs == [1]  # epoch 1's checkpoint was delivered, for a resume


def test_cancel_before_training_stops_while_loading(aapl) -> None:
    token = CancellationToken()
    token.cancel()
    with pytest.raises(OperationCancelledError) as info:
        run(aapl, cancel=token)
    assert info.value.where == "loading AAPL 1h"


@pytest.mark.parametrize(("cancel_epoch", "cancel_batch"), [(2, 0), (3, 7)], ids=["epoch_end", "mid_epoch"])
def test_resume_from_checkpoint_bytes_matches_uninterrupted_run(aapl, baseline, cancel_epoch: int,
                                                                cancel_batch: int) -> None:
    token = CancellationToken()

    def trip(update: ProgressState) -> None:
        at_epoch_end = cancel_batch == 0 and "train_loss" in update.context.metrics
        if update.context.epoch == cancel_epoch and (at_epoch_end or update.context.batch == cancel_batch):
            token.cancel("killed")

    ckpts = Checkpoints()
    with pytest.raises(OperationCancelledError):
        run(aapl, emit=Recorder(trip), cancel=token, on_checkpoint=ckpts, batch_every=1)
    completed = cancel_epoch if cancel_batch == 0 else cancel_epoch - 1
    assert ckpts.epochs == list(range(1, completed + 1))

    rec, more = Recorder(), Checkpoints()
    resumed = run(aapl, emit=rec, resume=ckpts.latest, on_checkpoint=more)
    assert [u.message for u in rec.updates].count(f"Resumed from checkpoint at epoch {completed}") == 1
    assert rec.updates[-1].context.resumed_from_epoch == completed
    assert more.epochs == list(range(completed + 1, 7))
    uninterrupted, _, _ = baseline
    assert comparable(resumed.result) == comparable(uninterrupted.result)
    a, b = weights(resumed), weights(uninterrupted)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _RunsCode:
    """Unpickling this calls open(path, "w"): a checkpoint carrying it would create a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def test_checkpoint_with_a_pickled_callable_is_refused_and_never_runs(aapl, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"format": checkpoint.FORMAT, "epoch": 5, "payload": _RunsCode(str(marker))}, buf)
    with pytest.raises(checkpoint.CheckpointRefused, match="checkpoint refused"):
        checkpoint.decode(buf.getvalue())
    assert not marker.exists()
    rec = Recorder()
    outcome = run(aapl, emit=rec, resume=buf.getvalue(), epochs=2)  # refused: the run starts over
    assert not marker.exists()
    assert any(u.message.startswith("checkpoint refused") and u.message.endswith("starting over") for u in rec.updates)
    assert outcome.result["training_metrics"]["epochs_completed"] == 2


def test_garbage_checkpoint_is_refused() -> None:
    for data in (b"", b"not a zip", checkpoint.encode({"x": 1})[:40]):
        with pytest.raises(checkpoint.CheckpointRefused):
            checkpoint.decode(data)


def test_rng_state_round_trips_through_weights_only_bytes() -> None:
    import random

    import numpy as np

    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    data = checkpoint.encode({"rng": checkpoint.rng_state()})
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    checkpoint.set_rng_state(checkpoint.decode(data)["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_checkpoint_from_another_configuration_is_not_resumed(aapl, baseline) -> None:
    _, _, ckpts = baseline
    rec = Recorder()
    outcome = run(aapl, emit=rec, resume=ckpts.items[1][1], seed=99, epochs=2)
    assert any("different configuration" in u.message for u in rec.updates)
    assert not any(u.message.startswith("Resumed") for u in rec.updates)
    assert outcome.result["training_metrics"]["epochs_completed"] == 2


def test_the_pieces_compose_to_the_same_run(aapl, baseline) -> None:
    from ktrdr.training.fit import fit
    from ktrdr.training.trainer import evaluate_best, prepare, report

    j = job(host="box", actor="trainer-1", pool="cpu")
    checked = check_job(j)
    bridge = TrainingProgressBridge(Recorder(), strategy="test_small", symbols=["AAPL"], timeframes=["1h"],
                                    total_epochs=checked.epochs)
    p = prepare(j, checked, aapl, bridge, CancellationToken(), torch.device("cpu"))
    assert p.tensors.n_batches == -(-len(p.data.x_train) // 64)
    state = fit(checked.strategy, p.tensors, epochs=checked.epochs, seed=j.seed, run_id=p.run_id, bridge=bridge,
                cancel=CancellationToken(), resume=None, on_checkpoint=None)
    assert state.epoch == 6 and state.best_epoch == 6
    outcome = report(j, p, state, evaluate_best(state, p.tensors))
    assert comparable(outcome.result) == comparable(baseline[0].result)


def test_same_seed_gives_identical_metrics_and_versions_increment(aapl, baseline, tmp_path: Path) -> None:
    first = baseline[0]
    again = run(aapl)
    assert comparable(again.result) == comparable(first.result)
    other = run(aapl, seed=7, epochs=2)
    assert comparable(other.result) != comparable(first.result)
    assert other.result["training_metrics"]["epochs_completed"] == 2
    models = tmp_path / "models"
    save_model(models, "test_small", ["AAPL"], ["1h"], first.artifacts)
    assert save_model(models, "test_small", ["AAPL"], ["1h"], other.artifacts)["version"] == 2
    assert (models / "test_small" / "AAPL_1h_latest").read_text().strip() == "AAPL_1h_v2"
    assert [r["latest"] for r in list_models(models)] == [False, True]


def test_multi_symbol_multi_timeframe_trains_and_reports_per_symbol(two_symbols) -> None:
    text = SMALL_STRATEGY.replace(
        "symbols: {mode: single_symbol, list: [AAPL]}", "symbols: {mode: multi_symbol, list: [AAPL, MSFT]}"
    ).replace(
        "timeframes: {mode: single_timeframe, list: [1h], base_timeframe: 1h}",
        "timeframes: {mode: multi_timeframe, list: [1h, 4h], base_timeframe: 1h}",
    )
    rec = Recorder()
    result = run(two_symbols, emit=rec, text=text, epochs=2).result
    per = result["data_summary"]["per_symbol"]
    assert set(per) == {"AAPL", "MSFT"} and per["MSFT"]["bars"] == {"1h": 2000, "4h": 500}
    assert result["data_summary"]["samples"]["train"] == per["AAPL"]["train"] + per["MSFT"]["train"]
    assert result["artifacts"]["model_key"] == "AAPL-MSFT_1h-4h"
    assert any(u.message.startswith("Training MLP on AAPL, MSFT [1h, 4h] [epoch 1/2]") for u in rec.updates)


def test_missing_bars_and_foreign_timeframes_are_named(aapl) -> None:
    with pytest.raises(DataError, match="no 1h bars for MSFT"):
        run(aapl, symbols=["MSFT"])
    with pytest.raises(ValidationError, match="differ from the strategy"):
        run(aapl, timeframes=["4h"])
    with pytest.raises(ValidationError, match="invalid symbol"):
        run(aapl, symbols=["../../../AAPL"])
    with pytest.raises(ValidationError, match="epochs must be between 1 and 100000"):
        run(aapl, epochs=10**9)


def test_early_stopping_stops_before_the_epoch_limit(aapl) -> None:
    text = SMALL_STRATEGY.replace("patience: 50", "patience: 1").replace("learning_rate: 0.005", "learning_rate: 0.5")
    tm = run(aapl, text=text, epochs=30).result["training_metrics"]
    assert tm["early_stopped"] is True and tm["epochs_completed"] < 30
    assert tm["best_epoch"] == tm["epochs_completed"] - 1


def test_device_comes_from_the_caller_not_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValidationError, match="CUDA"):
        resolve_device("cuda")
    monkeypatch.setenv("KTRDR_DEVICE", "cuda")
    assert resolve_device("auto").type == "cpu"  # the environment is Settings' business
    with pytest.raises(ValidationError, match="unknown device"):
        resolve_device("tpu")


def test_bare_baseline_trains_the_same_model_as_the_instrumented_loop(baseline) -> None:
    from ktrdr.training.baseline import train_bare
    from ktrdr.training.features import check_bars
    from ktrdr.training.strategy import parse_strategy
    from ktrdr.training.trainer import prepare_training_data

    outcome = baseline[0]
    assert outcome.result["training_metrics"]["best_epoch"] == 6  # the saved weights are the last epoch's
    strategy = parse_strategy(SMALL_STRATEGY)
    data = prepare_training_data(
        strategy, {"AAPL": {"1h": check_bars(make_bars(2000, seed=1), "AAPL", "1h")}}, ["AAPL"]
    )
    bare = train_bare(data.x_train, data.y_train, strategy, epochs=6, seed=42)
    saved = weights(outcome)
    assert all(torch.equal(saved[k], v) for k, v in bare.state_dict().items())


def test_scaler_is_fitted_on_training_rows_only(small_strategy) -> None:
    import numpy as np

    from ktrdr.training.features import check_bars
    from ktrdr.training.trainer import prepare_training_data

    bars = make_bars(1500, seed=3)
    data = prepare_training_data(small_strategy, {"AAPL": {"1h": check_bars(bars, "AAPL", "1h")}}, ["AAPL"])
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0.0, atol=1e-4)
    # validation / test were transformed with the training statistics, not their own
    assert not np.allclose(data.x_test.mean(axis=0), 0.0, atol=1e-3)


def test_start_end_restrict_the_bars_used(aapl) -> None:
    from datetime import UTC, datetime

    start, end = datetime(2024, 1, 10, tzinfo=UTC), datetime(2024, 2, 20, tzinfo=UTC)
    info = run(aapl, epochs=1, start=start, end=end).result["data_summary"]["per_symbol"]["AAPL"]
    assert info["first"] >= start.isoformat() and info["last"] <= end.isoformat()
    assert info["bars"]["1h"] == 41 * 24  # bars start at :30, so 2024-01-10 00:30 .. 2024-02-19 23:30


def test_no_function_in_the_training_code_is_longer_than_120_lines() -> None:
    root = Path(__file__).resolve().parents[2]
    files = [*sorted((root / "ktrdr" / "training").glob("*.py")), root / "actors" / "trainer.py"]
    long = [f"{f.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for f in files for node in ast.walk(ast.parse(f.read_text()))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 120]
    assert long == []


def test_gpu_readings_only_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    from ktrdr.training.fit import gpu_readings

    assert gpu_readings(torch.device("cpu")) == {}
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda _d=None: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda _d=None: 5 * 2**30)
    monkeypatch.setattr(torch.cuda, "utilization", lambda _d=None: 87)
    assert gpu_readings(torch.device("cuda")) == {"gpu_memory_used_gb": 3.0, "gpu_memory_peak_gb": 5.0,
                                                  "gpu_utilization_pct": 87.0}

    def no_nvml(_d: Any = None) -> int:
        raise ModuleNotFoundError("pynvml")

    monkeypatch.setattr(torch.cuda, "utilization", no_nvml)
    assert "gpu_utilization_pct" not in gpu_readings(torch.device("cuda"))  # absent, not zero
