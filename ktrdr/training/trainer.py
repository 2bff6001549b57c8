"""Strategy training as one synchronous call: `train_strategy(ctx, ...) -> result dict`.

This is the seed's TrainingManager + LocalTrainingRunner + StrategyTrainer without any transport:
the trainer actor runs it in a worker thread, passes a progress sink and a CancellationToken, and
publishes what comes back. The call
- loads bars through the injected `load_bars(symbol, timeframe)` (no dependency on the data store),
- builds features and labels per symbol, splits each symbol chronologically, then combines,
- trains the strategy's MLP, checking the token at every batch (a plain attribute read) and at every
  epoch boundary, raising OperationCancelledError(where="epoch 3, batch 120"),
- writes a checkpoint at the end of every epoch (atomically) and, when called again with the same
  checkpoint_dir, resumes from it and reaches the same final model as an uninterrupted run,
- evaluates the best epoch's weights on validation and test, saves the artifacts, and returns
  KTRDR's unified result schema (JSON-serialisable).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ktrdr.cancellation import CancellationToken
from ktrdr.errors import DataError, OperationCancelledError, ValidationError
from ktrdr.training.features import Scaler, build_symbol_dataset, check_bars
from ktrdr.training.labels import CLASS_NAMES, class_counts, split_chronological
from ktrdr.training.model import (
    N_CLASSES,
    build_mlp,
    class_weights,
    epoch_permutation,
    make_optimizer,
    parameter_count,
    seed_everything,
)
from ktrdr.training.progress import Emit, TrainingProgressBridge, format_training_line
from ktrdr.training.registry import save_model
from ktrdr.training.strategy import Strategy

LoadBars = Callable[[str, str], pd.DataFrame]
CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class TrainingOperationContext:
    """What one training operation is about (the seed's name). Empty symbols/timeframes mean the
    strategy's own; `epochs` overrides the strategy's epoch count."""

    op_id: str
    strategy: Strategy
    symbols: list[str] = field(default_factory=list)
    timeframes: list[str] = field(default_factory=list)
    start: datetime | None = None
    end: datetime | None = None
    epochs: int | None = None
    device: str = "auto"
    training_mode: str = "local"  # "local" or "host": reported in resource_usage
    simulated: bool = False  # the bars came from the simulated gateway: marked in the artifacts
    seed: int = 42
    strategy_path: str = ""

    @property
    def effective_symbols(self) -> list[str]:
        return [s.upper() for s in self.symbols] or list(self.strategy.training_data.symbols)

    @property
    def effective_timeframes(self) -> list[str]:
        return list(self.timeframes) or list(self.strategy.training_data.timeframes)

    @property
    def effective_epochs(self) -> int:
        return self.epochs if self.epochs is not None else self.strategy.model.training.epochs


# --------------------------------------------------------------------------------------------------
# Device
# --------------------------------------------------------------------------------------------------
def resolve_device(requested: str = "auto") -> torch.device:
    """auto|cpu|cuda[:n]; `auto` consults KTRDR_DEVICE, then picks CUDA when available."""
    choice = (requested or "auto").strip().lower()
    if choice == "auto":
        choice = os.environ.get("KTRDR_DEVICE", "auto").strip().lower() or "auto"
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
        raise ValidationError(f"unknown device {requested!r}", hint="use auto, cpu or cuda")
    return torch.device("cpu")


def device_info(device: torch.device) -> tuple[str | None, float | None]:
    if device.type != "cuda":
        return None, None
    props = torch.cuda.get_device_properties(device)
    return props.name, round(props.total_memory / 2**30, 2)


# --------------------------------------------------------------------------------------------------
# Data preparation (also used by benchmarks against the bare loop)
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


def prepare_training_data(
    strategy: Strategy, bars: dict[str, dict[str, pd.DataFrame]], symbols: Sequence[str]
) -> PreparedData:
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
            "rows": len(x),
            "train": tr.stop - tr.start,
            "validation": va.stop - va.start,
            "test": te.stop - te.start,
            "first": idx[0].isoformat() if len(idx) else None,
            "last": idx[-1].isoformat() if len(idx) else None,
            "labels": class_counts(ds.labels),
        }
    assert names is not None
    x_train = np.concatenate(parts["xtr"])
    scaler = Scaler.fit(x_train) if strategy.model.features.scale_features else Scaler.identity(len(names))
    return PreparedData(
        x_train=scaler.transform(x_train),
        y_train=np.concatenate(parts["ytr"]),
        x_val=scaler.transform(np.concatenate(parts["xva"])),
        y_val=np.concatenate(parts["yva"]),
        x_test=scaler.transform(np.concatenate(parts["xte"])),
        y_test=np.concatenate(parts["yte"]),
        feature_names=names,
        scaler=scaler,
        per_symbol=per_symbol,
    )


def _as_utc(ts: datetime | None) -> pd.Timestamp | None:
    if ts is None:
        return None
    t = pd.Timestamp(ts)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion: nn.Module) -> dict[str, Any]:
    """Loss, accuracy and macro precision/recall/F1 over the classes present in truth or prediction."""
    model.eval()
    losses: list[torch.Tensor] = []
    preds: list[torch.Tensor] = []
    for start in range(0, len(x), 8192):
        out = model(x[start : start + 8192])
        losses.append(criterion(out, y[start : start + 8192]) * len(out))
        preds.append(out.argmax(dim=1))
    pred = torch.cat(preds).cpu().numpy()
    truth = y.cpu().numpy()
    loss = float(torch.stack(losses).sum().item()) / max(1, len(x))
    cm = np.zeros((N_CLASSES, N_CLASSES), dtype=np.int64)
    np.add.at(cm, (truth, pred), 1)
    present = [c for c in range(N_CLASSES) if cm[c, :].sum() or cm[:, c].sum()]
    prec, rec, f1 = [], [], []
    for c in present:
        tp = cm[c, c]
        p = tp / cm[:, c].sum() if cm[:, c].sum() else 0.0
        r = tp / cm[c, :].sum() if cm[c, :].sum() else 0.0
        prec.append(p)
        rec.append(r)
        f1.append(2 * p * r / (p + r) if p + r else 0.0)
    return {
        "loss": loss,
        "accuracy": float((pred == truth).mean()) if len(truth) else 0.0,
        "precision": float(np.mean(prec)) if prec else 0.0,
        "recall": float(np.mean(rec)) if rec else 0.0,
        "f1_score": float(np.mean(f1)) if f1 else 0.0,
        "confusion_matrix": cm.tolist(),
    }


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------
def _fingerprint(
    ctx: TrainingOperationContext, symbols: list[str], timeframes: list[str], n_features: int, n_train: int
) -> str:
    """Identifies the run a checkpoint belongs to; a mismatching checkpoint is never resumed."""
    strat = ctx.strategy.to_dict()
    strat.pop("source_file", None)
    strat["model"]["training"].pop("epochs", None)  # an epochs override may legitimately differ
    blob = json.dumps(
        {
            "strategy": strat,
            "symbols": symbols,
            "timeframes": timeframes,
            "seed": ctx.seed,
            "start": str(ctx.start),
            "end": str(ctx.end),
            "features": n_features,
            "train": n_train,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(checkpoint_dir: Path, payload: dict[str, Any]) -> Path:
    """temp file + os.replace: a crash mid-write leaves the previous checkpoint intact."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    target = checkpoint_dir / CHECKPOINT_FILE
    fd, tmp = tempfile.mkstemp(dir=checkpoint_dir, prefix=".checkpoint.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


class CheckpointWriter:
    """Writes epoch checkpoints on a background thread: the training thread pays only for copying the
    state, and pickling + the disk write overlap the next epoch. One write in flight at a time, in
    epoch order (a slow disk holds the next epoch's write, not the training). `close()` waits for the
    last write, so when the operation ends (done, cancelled or failed) its last checkpoint is on disk."""

    def __init__(self, checkpoint_dir: Path) -> None:
        self.checkpoint_dir = checkpoint_dir
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
        self._last: Future[Path] | None = None

    def submit(self, payload: dict[str, Any]) -> None:
        if self._last is not None:
            self._last.result()  # raises the previous write's error here, in the training thread
        self._last = self._pool.submit(save_checkpoint, self.checkpoint_dir, payload)

    def close(self, *, raise_errors: bool = True) -> None:
        try:
            if self._last is not None:
                if raise_errors:
                    self._last.result()
                else:
                    wait_for_futures([self._last])
        finally:
            self._pool.shutdown(wait=True)


def _detached_copy(obj: Any) -> Any:
    """A copy of a (nested) state dict whose tensors no later training step can change."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _detached_copy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_detached_copy(v) for v in obj)
    return obj


def load_checkpoint(checkpoint_dir: Path) -> dict[str, Any] | None:
    path = checkpoint_dir / CHECKPOINT_FILE
    if not path.exists():
        return None
    # Our own file (it holds numpy RNG state, which weights_only loading refuses).
    return torch.load(path, map_location="cpu", weights_only=False)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------------
# The operation
# --------------------------------------------------------------------------------------------------
def train_strategy(
    ctx: TrainingOperationContext,
    *,
    load_bars: LoadBars,
    emit: Emit,
    cancel: CancellationToken,
    checkpoint_dir: Path,
    models_dir: Path,
    batch_every: int = 20,
    device: str = "auto",
) -> dict[str, Any]:
    """Run one training operation to completion; raises OperationCancelledError, DataError,
    ValidationError. Synchronous (run it in a worker thread)."""
    started = time.monotonic()
    strategy = ctx.strategy
    symbols, timeframes = ctx.effective_symbols, ctx.effective_timeframes
    epochs = ctx.effective_epochs
    if epochs < 1:
        raise ValidationError(f"epochs must be >= 1, got {epochs}")
    if timeframes != list(strategy.training_data.timeframes):
        # Features are defined per timeframe by the strategy; other timeframes would change the model.
        raise ValidationError(
            f"timeframes {timeframes} differ from the strategy's {list(strategy.training_data.timeframes)}",
            hint="edit the strategy's training_data.timeframes instead",
        )
    base_tf = strategy.training_data.base_timeframe
    params = strategy.model.training
    checkpoint_dir, models_dir = Path(checkpoint_dir), Path(models_dir)

    bridge = TrainingProgressBridge(
        emit,
        strategy=strategy.name,
        symbols=symbols,
        timeframes=timeframes,
        total_epochs=epochs,
        model_type=strategy.model.type,
        batch_every=batch_every,
    )
    dev = resolve_device(ctx.device if ctx.device not in ("", "auto") else device)
    gpu_name, gpu_mem = device_info(dev)
    bridge.set_device(str(dev), gpu_name, gpu_mem)
    on = f" on {gpu_name}" if gpu_name else ""
    bridge.phase(
        "initializing",
        f"Preparing {strategy.name}: {len(symbols)} symbol(s), {', '.join(timeframes)}, device {dev}{on}",
    )

    # -- loading ------------------------------------------------------------------------------------
    bridge.phase("loading_data", f"Loading bars for {', '.join(symbols)} [{', '.join(timeframes)}]")
    start, end = _as_utc(ctx.start), _as_utc(ctx.end)
    bars: dict[str, dict[str, pd.DataFrame]] = {}
    bar_counts: dict[str, dict[str, int]] = {}
    for sym in symbols:
        bars[sym] = {}
        for tf in timeframes:
            cancel.raise_if_cancelled(f"loading {sym} {tf}")
            df = check_bars(load_bars(sym, tf), sym, tf)
            df = df.loc[start:end] if (start is not None or end is not None) else df
            if df.empty:
                raise DataError(
                    f"no {tf} bars for {sym} in the requested range",
                    hint="load the data first (ktrdr data load)",
                )
            bars[sym][tf] = df
            bar_counts.setdefault(sym, {})[tf] = len(df)

    # -- features -----------------------------------------------------------------------------------
    cancel.raise_if_cancelled("building features")
    bridge.phase("building_features", "Computing indicators, fuzzy memberships and labels")
    data = prepare_training_data(strategy, bars, symbols)
    n_features = len(data.feature_names)

    x_train = torch.from_numpy(data.x_train).to(dev)
    y_train = torch.from_numpy(data.y_train).to(dev)
    x_val, y_val = torch.from_numpy(data.x_val).to(dev), torch.from_numpy(data.y_val).to(dev)
    x_test, y_test = torch.from_numpy(data.x_test).to(dev), torch.from_numpy(data.y_test).to(dev)
    n_train = len(x_train)
    batch_size = min(params.batch_size, n_train)
    n_batches = (n_train + batch_size - 1) // batch_size
    bridge.set_shape(epochs, n_batches)
    batch_sizes = torch.tensor(
        [min(batch_size, n_train - b * batch_size) for b in range(n_batches)], dtype=torch.float32, device=dev
    )

    # -- model --------------------------------------------------------------------------------------
    seed_everything(ctx.seed)
    model = build_mlp(n_features, strategy.model.architecture).to(dev)
    optimizer = make_optimizer(params.optimizer, model.parameters(), params.learning_rate)
    criterion = nn.CrossEntropyLoss(weight=class_weights(data.y_train).to(dev))
    es = params.early_stopping
    minimize = es is None or es.monitor == "val_loss"
    fingerprint = _fingerprint(ctx, symbols, timeframes, n_features, n_train)

    start_epoch = 0
    best_score = float("inf") if minimize else -float("inf")
    best_epoch = 0
    best_state = _cpu_state(model)
    wait = 0
    stopped = False
    history: list[dict[str, float]] = []
    elapsed_before = 0.0

    ckpt = load_checkpoint(checkpoint_dir)
    if ckpt is not None and ckpt.get("fingerprint") == fingerprint:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch = int(ckpt["epoch"])
        best_score, best_epoch, best_state = ckpt["best_score"], ckpt["best_epoch"], ckpt["best_state"]
        wait, stopped, history = ckpt["wait"], ckpt["stopped"], ckpt["history"]
        elapsed_before = float(ckpt.get("elapsed_s", 0.0))
        _set_rng_state(ckpt["rng"])
        bridge.resumed(start_epoch)
    elif ckpt is not None:
        bridge.message("Checkpoint belongs to a different configuration; starting over")

    # -- training -----------------------------------------------------------------------------------
    bridge.phase(
        "training",
        format_training_line(symbols, timeframes, start_epoch, epochs, model_type=strategy.model.type),
    )
    train_started = time.monotonic()
    writer = CheckpointWriter(checkpoint_dir)
    try:
        for epoch in range(start_epoch + 1, epochs + 1):
            if stopped:
                break
            if cancel.is_cancelled:
                raise OperationCancelledError(f"epoch {epoch}, batch 0", cancel.reason)
            model.train()
            perm = epoch_permutation(n_train, ctx.seed, epoch, dev)
            # Keep per-batch results on the device and reduce once per epoch: no host sync per batch
            # and a single extra kernel (argmax) per batch.
            batch_losses: list[torch.Tensor] = []
            batch_preds: list[torch.Tensor] = []
            for b in range(n_batches):
                idx = perm[b * batch_size : (b + 1) * batch_size]
                xb, yb = x_train[idx], y_train[idx]
                optimizer.zero_grad(set_to_none=True)
                out = model(xb)
                loss = criterion(out, yb)
                loss.backward()
                optimizer.step()
                batch_losses.append(loss.detach())
                batch_preds.append(out.detach().argmax(dim=1))
                batch_no = b + 1
                if bridge.wants_batch(batch_no):
                    bridge.batch(epoch, batch_no, {"batch_loss": float(loss.detach())})
                if cancel.is_cancelled:
                    raise OperationCancelledError(f"epoch {epoch}, batch {batch_no}", cancel.reason)

            val = evaluate(model, x_val, y_val, criterion)
            metrics = {
                "train_loss": float((torch.stack(batch_losses) * batch_sizes).sum().item()) / n_train,
                "train_accuracy": float((torch.cat(batch_preds) == y_train[perm]).sum().item()) / n_train,
                "val_loss": val["loss"],
                "val_accuracy": val["accuracy"],
            }
            history.append({"epoch": epoch, **metrics})
            score = metrics["val_loss"] if minimize else metrics["val_accuracy"]
            delta = es.min_delta if es is not None else 0.0
            improved = score < best_score - delta if minimize else score > best_score + delta
            if improved or best_epoch == 0:
                best_score, best_epoch, best_state, wait = score, epoch, _cpu_state(model), 0
            else:
                wait += 1
            note = ""
            if es is not None and wait >= es.patience:
                stopped = True
                note = f"early stopping: no {es.monitor} improvement for {es.patience} epochs"
            writer.submit(
                {
                    "fingerprint": fingerprint,
                    "epoch": epoch,
                    "model": _cpu_state(model),
                    "optimizer": _detached_copy(optimizer.state_dict()),
                    "best_score": best_score,
                    "best_epoch": best_epoch,
                    "best_state": best_state,
                    "wait": wait,
                    "stopped": stopped,
                    "history": list(history),
                    "rng": _rng_state(),
                    "elapsed_s": elapsed_before + time.monotonic() - train_started,
                },
            )
            bridge.epoch(epoch, metrics, note)
            if cancel.is_cancelled:
                raise OperationCancelledError(f"epoch {epoch}, end", cancel.reason)
    except BaseException:
        writer.close(raise_errors=False)
        raise
    writer.close()
    train_seconds = elapsed_before + time.monotonic() - train_started

    # -- evaluation ---------------------------------------------------------------------------------
    bridge.phase("evaluating", f"Evaluating the best epoch ({best_epoch}) on validation and test data")
    model.load_state_dict(best_state)
    val = evaluate(model, x_val, y_val, criterion)
    test = evaluate(model, x_test, y_test, criterion)
    last = history[-1] if history else {}
    epochs_completed = len(history)
    training_metrics = {
        "final_train_loss": last.get("train_loss"),
        "final_val_loss": last.get("val_loss"),
        "final_train_accuracy": last.get("train_accuracy"),
        "final_val_accuracy": last.get("val_accuracy"),
        "epochs_completed": epochs_completed,
        "early_stopped": stopped,
        "best_epoch": best_epoch,
        "training_time_minutes": train_seconds / 60.0,
    }
    validation_metrics = {
        "val_loss": val["loss"],
        "val_accuracy": val["accuracy"],
        "precision": val["precision"],
        "recall": val["recall"],
        "f1_score": val["f1_score"],
    }
    test_metrics = {
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "precision": test["precision"],
        "recall": test["recall"],
        "f1_score": test["f1_score"],
    }
    architecture = {
        "type": strategy.model.type,
        "input_size": n_features,
        "hidden_layers": list(strategy.model.architecture.hidden_layers),
        "activation": strategy.model.architecture.activation,
        "dropout": strategy.model.architecture.dropout,
        "output_size": N_CLASSES,
        "classes": list(CLASS_NAMES),
    }
    data_range = {
        sym: {"first": info["first"], "last": info["last"]} for sym, info in data.per_symbol.items()
    }
    data_summary = {
        "samples": {
            "train": len(data.y_train),
            "validation": len(data.y_val),
            "test": len(data.y_test),
            "total": len(data.y_train) + len(data.y_val) + len(data.y_test),
        },
        "feature_count": n_features,
        "per_symbol": {sym: {**info, "bars": bar_counts[sym]} for sym, info in data.per_symbol.items()},
        "class_distribution": {
            "train": class_counts(data.y_train),
            "validation": class_counts(data.y_val),
            "test": class_counts(data.y_test),
        },
        "base_timeframe": base_tf,
        "simulated": ctx.simulated,
    }

    # -- saving -------------------------------------------------------------------------------------
    cancel.raise_if_cancelled("saving the model")
    bridge.phase("saving", f"Saving model {strategy.name}")
    artifacts = save_model(
        models_dir,
        strategy.name,
        symbols,
        [base_tf] if len(timeframes) == 1 else timeframes,
        state_dict=best_state,
        config={"strategy": strategy.to_dict(), "architecture": architecture, "seed": ctx.seed},
        metrics={
            "training_metrics": training_metrics,
            "validation_metrics": validation_metrics,
            "test_metrics": test_metrics,
            "history": history,
            "confusion_matrix": {"validation": val["confusion_matrix"], "test": test["confusion_matrix"]},
        },
        features={
            "names": data.feature_names,
            "scaler": data.scaler.to_dict(),
            "lookback_periods": strategy.model.features.lookback_periods,
            "timeframes": timeframes,
            "base_timeframe": base_tf,
        },
        metadata={
            "created": datetime.now(UTC).isoformat(),
            "op_id": ctx.op_id,
            "device": str(dev),
            "gpu_name": gpu_name,
            "training_mode": ctx.training_mode,
            "strategy": strategy.name,
            "strategy_path": ctx.strategy_path or strategy.source_file,
            "symbols": symbols,
            "timeframes": timeframes,
            "data_range": data_range,
            "simulated": ctx.simulated,
            "requested_start": str(ctx.start) if ctx.start else None,
            "requested_end": str(ctx.end) if ctx.end else None,
        },
    )
    # The model is safe on disk; the checkpoint would only make a retry resume a finished run.
    (checkpoint_dir / CHECKPOINT_FILE).unlink(missing_ok=True)

    result = {
        "training_metrics": training_metrics,
        "validation_metrics": validation_metrics,
        "test_metrics": test_metrics,
        "resource_usage": {"device": str(dev), "gpu_name": gpu_name, "training_mode": ctx.training_mode},
        "artifacts": artifacts,
        "session_info": {
            "operation_id": ctx.op_id,
            "strategy_name": strategy.name,
            "symbols": symbols,
            "timeframes": timeframes,
        },
        "model_info": {"parameter_count": parameter_count(model), "architecture": architecture},
        "data_summary": data_summary,
    }
    acc = test_metrics["test_accuracy"]
    bridge.done(
        f"Trained {strategy.name} in {(time.monotonic() - started):.1f}s: "
        f"{epochs_completed} epochs, test accuracy {acc:.1%}"
    )
    return result
