"""One training run as a pure function of its inputs: `run_training(job, bars, ...) -> TrainingOutcome`.

No transport and no storage in it: bars come in as DataFrames, progress goes out through `emit` as
the wire `ProgressState`, each epoch's checkpoint goes out as bytes through `on_checkpoint`, a resumed
run gets the last checkpoint's bytes, and the model comes back as files in bytes. Three pieces:
- `prepare`: check the bars, build features and labels per symbol, split each symbol in time order,
  then combine; tensors on the device;
- `fit` (ktrdr.training.fit): the loop with batch-level cancel, per-epoch checkpoints and resume;
- `report`: evaluate the best epoch on validation and test, KTRDR's result schema, the artifacts.
Where it runs is the caller's choice: the trainer actor runs it in a child process
(ktrdr.training.process), tests and benchmarks call it directly.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import torch

from ktrdr.errors import DataError, OperationCancelledError, ValidationError
from ktrdr.training import checkpoint
from ktrdr.training.checkpoint import OnCheckpoint
from ktrdr.training.features import Scaler, build_symbol_dataset, check_bars
from ktrdr.training.fit import FitState, Tensors, evaluate, fit, gpu_readings
from ktrdr.training.job import ARTIFACT_FILES, CancelFlag, CheckedJob, TrainingJob, TrainingOutcome, check_job
from ktrdr.training.labels import CLASS_NAMES, class_counts, split_chronological
from ktrdr.training.model import N_CLASSES, parameter_count
from ktrdr.training.progress import Emit, TrainingProgressBridge
from ktrdr.training.registry import model_key
from ktrdr.training.strategy import Strategy

Bars = dict[str, dict[str, pd.DataFrame]]  # symbol -> timeframe -> OHLCV on a UTC DatetimeIndex


# --------------------------------------------------------------------------------------------------
# Device
# --------------------------------------------------------------------------------------------------
def resolve_device(requested: str = "auto") -> torch.device:
    """auto|cpu|cuda[:n]; `auto` picks CUDA when available. The caller passes what the user asked for
    (Settings.device, i.e. KTRDR_DEVICE): this module reads no environment."""
    choice = (requested or "auto").strip().lower()
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValidationError(
                "device 'cuda' requested but CUDA is not available",
                hint="use device=auto or cpu, or install a CUDA build of torch",
            )
        return torch.device(choice)
    if choice != "cpu":
        raise ValidationError(f"unknown device {requested[:20]!r}", hint="use auto, cpu or cuda")
    return torch.device("cpu")


def device_info(device: torch.device) -> tuple[str | None, float | None]:
    if device.type != "cuda":
        return None, None
    props = torch.cuda.get_device_properties(device)
    return props.name, round(props.total_memory / 2**30, 2)


# --------------------------------------------------------------------------------------------------
# prepare
# --------------------------------------------------------------------------------------------------
@dataclass
class PreparedData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    feature_names: list[str]
    scaler: Scaler
    per_symbol: dict[str, dict[str, Any]]


@dataclass
class Prepared:
    """Everything `fit` and `report` need, computed once."""

    checked: CheckedJob
    device: torch.device
    data: PreparedData
    tensors: Tensors
    bar_counts: dict[str, dict[str, int]]
    run_id: str  # the checkpoint fingerprint of this configuration


def prepare_training_data(strategy: Strategy, bars: Bars, symbols: Sequence[str]) -> PreparedData:
    """Features + labels per symbol, split per symbol in time order, THEN combined; scaler on train."""
    split = strategy.training.data_split
    ratios = (split.train, split.validation, split.test)
    gap = strategy.training.labels.label_lookahead
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("xtr", "ytr", "xva", "yva", "xte", "yte")}
    names: list[str] | None = None
    per_symbol: dict[str, dict[str, Any]] = {}
    for sym in symbols:
        ds = build_symbol_dataset(sym, bars[sym], strategy)
        if names is None:
            names = list(ds.features.columns)
        x = ds.features.to_numpy(dtype="float64")
        tr, va, te = split_chronological(len(x), ratios, gap=gap)
        if tr.stop - tr.start < 1 or va.stop - va.start < 1 or te.stop - te.start < 1:
            raise DataError(
                f"{sym}: only {len(x)} usable rows after indicator warm-up and labelling; "
                f"not enough for train/validation/test",
                hint="load more history or reduce indicator periods / label_lookahead",
            )
        for (xk, yk), sl in zip((("xtr", "ytr"), ("xva", "yva"), ("xte", "yte")), (tr, va, te), strict=True):
            parts[xk].append(x[sl])
            parts[yk].append(ds.labels[sl])
        idx = ds.features.index
        per_symbol[sym] = {
            "rows": len(x), "train": tr.stop - tr.start, "validation": va.stop - va.start,
            "test": te.stop - te.start, "first": idx[0].isoformat() if len(idx) else None,
            "last": idx[-1].isoformat() if len(idx) else None, "labels": class_counts(ds.labels),
            "test_first": idx[te.start].isoformat(), "test_last": idx[te.stop - 1].isoformat(),
        }
    assert names is not None
    x_train = np.concatenate(parts["xtr"])
    scaler = Scaler.fit(x_train) if strategy.model.features.scale_features else Scaler.identity(len(names))
    return PreparedData(
        x_train=scaler.transform(x_train), y_train=np.concatenate(parts["ytr"]),
        x_val=scaler.transform(np.concatenate(parts["xva"])), y_val=np.concatenate(parts["yva"]),
        x_test=scaler.transform(np.concatenate(parts["xte"])), y_test=np.concatenate(parts["yte"]),
        feature_names=names, scaler=scaler, per_symbol=per_symbol,
    )


def _as_utc(ts: datetime | None) -> pd.Timestamp | None:
    if ts is None:
        return None
    t = pd.Timestamp(ts)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def select_bars(job: TrainingJob, checked: CheckedJob, bars: Bars, cancel: CancelFlag) -> Bars:
    """The job's symbols x timeframes, checked and cut to [start, end]; DataError names what is missing."""
    start, end = _as_utc(job.start), _as_utc(job.end)
    out: Bars = {}
    for sym in checked.symbols:
        out[sym] = {}
        for tf in checked.timeframes:
            if cancel.is_cancelled:
                raise OperationCancelledError(f"loading {sym} {tf}", cancel.reason)
            frame = bars.get(sym, {}).get(tf)
            if frame is None:
                raise DataError(f"no {tf} bars for {sym}", hint="load the data first (ktrdr data load)")
            df = check_bars(frame, sym, tf)
            df = df.loc[start:end] if (start is not None or end is not None) else df
            if df.empty:
                raise DataError(f"no {tf} bars for {sym} in the requested range",
                                hint="load the data first (ktrdr data load)")
            out[sym][tf] = df
    return out


def prepare(job: TrainingJob, checked: CheckedJob, bars: Bars, bridge: TrainingProgressBridge,
            cancel: CancelFlag, device: torch.device) -> Prepared:
    s, symbols, timeframes = checked.strategy, checked.symbols, checked.timeframes
    bridge.phase("loading_data", f"Checking bars for {', '.join(symbols)} [{', '.join(timeframes)}]")
    selected = select_bars(job, checked, bars, cancel)
    if cancel.is_cancelled:
        raise OperationCancelledError("building features", cancel.reason)
    bridge.phase("building_features", "Computing indicators, fuzzy memberships and labels")
    data = prepare_training_data(s, selected, symbols)
    n_train = len(data.x_train)
    batch_size = min(s.model.training.batch_size, n_train)
    tensors = Tensors(
        *(torch.from_numpy(a).to(device) for a in (data.x_train, data.y_train, data.x_val, data.y_val,
                                                  data.x_test, data.y_test)),
        batch_size=batch_size, n_batches=(n_train + batch_size - 1) // batch_size,
    )
    bridge.set_shape(checked.epochs, tensors.n_batches)
    strat = s.to_dict()
    strat.pop("source_file", None)
    strat["model"]["training"].pop("epochs", None)  # an epochs override may legitimately differ
    run_id = checkpoint.fingerprint({
        "strategy": strat, "symbols": symbols, "timeframes": timeframes, "seed": job.seed,
        "start": str(job.start), "end": str(job.end), "features": len(data.feature_names), "train": n_train,
    })
    counts = {sym: {tf: len(df) for tf, df in by_tf.items()} for sym, by_tf in selected.items()}
    return Prepared(checked, device, data, tensors, counts, run_id)


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------
def evaluate_best(state: FitState, t: Tensors) -> dict[str, dict[str, Any]]:
    """Best epoch's weights on validation and test, plus the training summary (KTRDR's names)."""
    state.model.load_state_dict(state.best_state)
    val = evaluate(state.model, t.x_val, t.y_val, state.criterion)
    test = evaluate(state.model, t.x_test, t.y_test, state.criterion)
    last = state.history[-1] if state.history else {}
    scores = ("precision", "recall", "f1_score")
    return {
        "training_metrics": {
            "final_train_loss": last.get("train_loss"), "final_val_loss": last.get("val_loss"),
            "final_train_accuracy": last.get("train_accuracy"), "final_val_accuracy": last.get("val_accuracy"),
            "epochs_completed": len(state.history), "early_stopped": state.stopped,
            "best_epoch": state.best_epoch, "training_time_minutes": state.elapsed_s / 60.0,
            "history": [dict(h) for h in state.history],
        },
        "validation_metrics": {"val_loss": val["loss"], "val_accuracy": val["accuracy"],
                               **{k: val[k] for k in scores}},
        "test_metrics": {"test_loss": test["loss"], "test_accuracy": test["accuracy"], **{k: test[k] for k in scores}},
        "confusion_matrix": {"validation": val["confusion_matrix"], "test": test["confusion_matrix"]},
    }


def _data_summary(job: TrainingJob, p: Prepared) -> dict[str, Any]:
    d = p.data
    return {
        "samples": {"train": len(d.y_train), "validation": len(d.y_val), "test": len(d.y_test),
                    "total": len(d.y_train) + len(d.y_val) + len(d.y_test)},
        "feature_count": len(d.feature_names),
        "per_symbol": {sym: {**info, "bars": p.bar_counts[sym]} for sym, info in d.per_symbol.items()},
        "class_distribution": {"train": class_counts(d.y_train), "validation": class_counts(d.y_val),
                               "test": class_counts(d.y_test)},
        "base_timeframe": p.checked.strategy.training_data.base_timeframe,
        "simulated": job.simulated,
    }


def report(job: TrainingJob, p: Prepared, state: FitState, m: dict[str, dict[str, Any]]) -> TrainingOutcome:
    """The result (in the seed's unified result schema) and the model's files as bytes (paths are
    added by whoever stores them: `registry.save_model`). `m` is `evaluate_best`'s answer."""
    s, symbols, timeframes = p.checked.strategy, p.checked.symbols, p.checked.timeframes
    base_tf = s.training_data.base_timeframe
    key = model_key(symbols, p.checked.model_timeframes)
    gpu_name, gpu_mem = device_info(p.device)
    arch = s.model.architecture
    architecture = {"type": s.model.type, "input_size": len(p.data.feature_names),
                    "hidden_layers": list(arch.hidden_layers), "activation": arch.activation,
                    "dropout": arch.dropout, "output_size": N_CLASSES, "classes": list(CLASS_NAMES)}
    resources: dict[str, Any] = {"device": str(p.device), "gpu_name": gpu_name, "training_mode": job.training_mode}
    if p.device.type == "cuda":
        resources |= {"gpu_memory_gb": gpu_mem, **gpu_readings(p.device)}
    session = {"operation_id": job.op_id, "strategy_name": s.name, "symbols": symbols, "timeframes": timeframes,
               "training_mode": job.training_mode, "host": job.host, "actor": job.actor, "pool": job.pool}
    result = {
        "training_metrics": m["training_metrics"], "validation_metrics": m["validation_metrics"],
        "test_metrics": m["test_metrics"], "resource_usage": resources, "gpu_used": p.device.type == "cuda",
        "artifacts": {"strategy": s.name, "model_key": key, "files": list(ARTIFACT_FILES)},
        "session_info": session,
        "model_info": {"parameter_count": parameter_count(state.model), "architecture": architecture},
        "data_summary": _data_summary(job, p),
    }
    metadata = {
        "created": datetime.now(UTC).isoformat(), "op_id": job.op_id, "device": str(p.device),
        "gpu_name": gpu_name, "training_mode": job.training_mode, "host": job.host, "actor": job.actor,
        "pool": job.pool, "strategy": s.name, "strategy_path": job.strategy_path or s.source_file,
        "symbols": symbols, "timeframes": timeframes, "model_key": key, "simulated": job.simulated,
        "data_range": {sym: {"first": i["first"], "last": i["last"]} for sym, i in p.data.per_symbol.items()},
        "requested_start": str(job.start) if job.start else None,
        "requested_end": str(job.end) if job.end else None,
    }
    buf = io.BytesIO()
    torch.save(state.best_state, buf)
    files = {
        "model.pt": buf.getvalue(),
        "config.json": {"strategy": s.to_dict(), "architecture": architecture, "seed": job.seed},
        "metrics.json": {k: m[k] for k in ("training_metrics", "validation_metrics", "test_metrics",
                                           "confusion_matrix")} | {"history": m["training_metrics"]["history"]},
        "features.json": {"names": p.data.feature_names, "scaler": p.data.scaler.to_dict(),
                          "lookback_periods": s.model.features.lookback_periods, "timeframes": timeframes,
                          "base_timeframe": base_tf},
        "metadata.json": metadata,
    }
    artifacts = {name: v if isinstance(v, bytes) else _json_bytes(v) for name, v in files.items()}
    return TrainingOutcome(result=result, artifacts=artifacts)


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, default=str) + "\n").encode()


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------
def run_training(job: TrainingJob, bars: Bars, *, emit: Emit, cancel: CancelFlag, resume: bytes | None = None,
                 on_checkpoint: OnCheckpoint | None = None) -> TrainingOutcome:
    """Run one training to completion; raises OperationCancelledError(where), DataError, ValidationError
    (StrategyError). Synchronous: call it from a worker thread or the training child process."""
    started = time.monotonic()
    checked = check_job(job)
    s = checked.strategy
    bridge = TrainingProgressBridge(emit, strategy=s.name, symbols=checked.symbols, timeframes=checked.timeframes,
                                    total_epochs=checked.epochs, model_type=s.model.type,
                                    batch_every=job.batch_every)
    dev = resolve_device(job.device)
    gpu_name, gpu_mem = device_info(dev)
    bridge.set_device(str(dev), gpu_name, gpu_mem)
    on = f" on {gpu_name}" if gpu_name else ""
    bridge.phase("initializing", f"Preparing {s.name}: {len(checked.symbols)} symbol(s), "
                                 f"{', '.join(checked.timeframes)}, device {dev}{on}")
    p = prepare(job, checked, bars, bridge, cancel, dev)
    state = fit(s, p.tensors, epochs=checked.epochs, seed=job.seed, run_id=p.run_id, bridge=bridge,
                cancel=cancel, resume=resume, on_checkpoint=on_checkpoint)
    bridge.phase("evaluating", f"Evaluating the best epoch ({state.best_epoch}) on validation and test data")
    evaluation = evaluate_best(state, p.tensors)
    if cancel.is_cancelled:
        raise OperationCancelledError("saving the model", cancel.reason)
    bridge.phase("saving", f"Packing model {s.name}")
    outcome = report(job, p, state, evaluation)
    acc = outcome.result["test_metrics"]["test_accuracy"]
    bridge.done(f"Trained {s.name} in {(time.monotonic() - started):.1f}s: "
                f"{len(state.history)} epochs, test accuracy {acc:.1%}")
    return outcome
