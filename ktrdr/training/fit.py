"""The training loop with checkpoints: fit the strategy's MLP on prepared tensors, epoch by epoch.

Cancellation is a flag read at every batch (`OperationCancelledError("epoch 3, batch 120")`); a
checkpoint is handed out at the end of every epoch; a run given the last checkpoint's bytes resumes
after that epoch and reaches the same final model as an uninterrupted run (same batch order, same RNG
streams, same early-stopping state). Per-batch results stay on the device and are reduced once per
epoch: no host sync per batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ktrdr import tracing
from ktrdr.errors import OperationCancelledError
from ktrdr.training import checkpoint
from ktrdr.training.checkpoint import CheckpointRefused, CheckpointWriter, OnCheckpoint
from ktrdr.training.job import CancelFlag
from ktrdr.training.model import N_CLASSES, build_mlp, class_weights, epoch_permutation, make_optimizer, seed_everything
from ktrdr.training.progress import TrainingProgressBridge
from ktrdr.training.strategy import Strategy


@dataclass
class Tensors:
    """The prepared splits on the training device, and the batch layout of an epoch."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    batch_size: int
    n_batches: int

    @property
    def n_train(self) -> int:
        return len(self.x_train)


@dataclass
class FitState:
    """Everything a checkpoint restores. `epoch` counts completed epochs."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    best_score: float
    best_state: dict[str, torch.Tensor]
    epoch: int = 0
    best_epoch: int = 0
    wait: int = 0
    stopped: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    elapsed_s: float = 0.0  # training seconds, including those before a resume


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def gpu_readings(device: torch.device) -> dict[str, float]:
    """GPU memory (and utilisation where NVML is reachable) on CUDA; nothing at all on CPU."""
    if device.type != "cuda":
        return {}
    out = {"gpu_memory_used_gb": round(torch.cuda.memory_allocated(device) / 2**30, 3),
           "gpu_memory_peak_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 3)}
    try:  # needs nvidia-ml-py; without it the reading is simply absent
        out["gpu_utilization_pct"] = float(torch.cuda.utilization(device))
    except Exception:
        pass
    return out


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


def initial_state(strategy: Strategy, t: Tensors, seed: int, device: torch.device) -> FitState:
    params = strategy.model.training
    seed_everything(seed)
    model = build_mlp(t.x_train.shape[1], strategy.model.architecture).to(device)
    optimizer = make_optimizer(params.optimizer, model.parameters(), params.learning_rate)
    weights = class_weights(t.y_train.cpu().numpy()).to(device)
    es = params.early_stopping
    minimize = es is None or es.monitor == "val_loss"
    return FitState(model=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(weight=weights),
                    best_score=float("inf") if minimize else -float("inf"), best_state=cpu_state(model))


def restore(state: FitState, resume: bytes | None, run_id: str, bridge: TrainingProgressBridge) -> None:
    """Continue from `resume` when it is a checkpoint of this very run; otherwise say why not."""
    if resume is None:
        return
    try:
        ckpt = checkpoint.decode(resume)
    except CheckpointRefused as exc:
        bridge.message(f"{exc.message}; starting over")
        return
    if ckpt.get("fingerprint") != run_id:
        bridge.message("Checkpoint belongs to a different configuration; starting over")
        return
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.epoch = int(ckpt["epoch"])
    state.best_score, state.best_epoch = float(ckpt["best_score"]), int(ckpt["best_epoch"])
    state.best_state = ckpt["best_state"]
    state.wait, state.stopped = int(ckpt["wait"]), bool(ckpt["stopped"])
    state.history, state.elapsed_s = list(ckpt["history"]), float(ckpt["elapsed_s"])
    checkpoint.set_rng_state(ckpt["rng"])
    bridge.resumed(state.epoch)


def train_epoch(state: FitState, t: Tensors, epoch: int, seed: int, bridge: TrainingProgressBridge,
                cancel: CancelFlag) -> dict[str, float]:
    """One pass over the training split in this epoch's order; train loss and accuracy."""
    state.model.train()
    dev = t.x_train.device
    perm = epoch_permutation(t.n_train, seed, epoch, dev)
    batch_losses: list[torch.Tensor] = []
    batch_preds: list[torch.Tensor] = []
    model, optimizer, criterion, bs = state.model, state.optimizer, state.criterion, t.batch_size
    for b in range(t.n_batches):
        idx = perm[b * bs : (b + 1) * bs]
        xb, yb = t.x_train[idx], t.y_train[idx]
        optimizer.zero_grad(set_to_none=True)
        out = model(xb)
        loss = criterion(out, yb)
        loss.backward()
        optimizer.step()
        batch_losses.append(loss.detach())
        batch_preds.append(out.detach().argmax(dim=1))
        if bridge.wants_batch(b + 1):
            bridge.batch(epoch, b + 1, {"batch_loss": float(loss.detach())})
        if cancel.is_cancelled:
            raise OperationCancelledError(f"epoch {epoch}, batch {b + 1}", cancel.reason)
    sizes = torch.tensor([min(bs, t.n_train - b * bs) for b in range(t.n_batches)], dtype=torch.float32, device=dev)
    return {
        "train_loss": float((torch.stack(batch_losses) * sizes).sum().item()) / t.n_train,
        "train_accuracy": float((torch.cat(batch_preds) == t.y_train[perm]).sum().item()) / t.n_train,
    }


def _early_stopping(state: FitState, strategy: Strategy, epoch: int, metrics: dict[str, float]) -> str:
    """Track the best epoch; returns a note when training should stop."""
    es = strategy.model.training.early_stopping
    minimize = es is None or es.monitor == "val_loss"
    score = metrics["val_loss"] if minimize else metrics["val_accuracy"]
    delta = es.min_delta if es is not None else 0.0
    improved = score < state.best_score - delta if minimize else score > state.best_score + delta
    if improved or state.best_epoch == 0:
        state.best_score, state.best_epoch, state.best_state, state.wait = score, epoch, cpu_state(state.model), 0
    else:
        state.wait += 1
    if es is not None and state.wait >= es.patience:
        state.stopped = True
        return f"early stopping: no {es.monitor} improvement for {es.patience} epochs"
    return ""


def _payload(state: FitState, run_id: str) -> dict[str, Any]:
    return {
        "fingerprint": run_id, "epoch": state.epoch, "model": cpu_state(state.model),
        "optimizer": checkpoint.detached_copy(state.optimizer.state_dict()),
        "best_score": state.best_score, "best_epoch": state.best_epoch,
        "best_state": state.best_state,  # replaced, never mutated, once taken: safe to share
        "wait": state.wait, "stopped": state.stopped, "history": list(state.history),
        "rng": checkpoint.rng_state(), "elapsed_s": state.elapsed_s,
    }


def fit(strategy: Strategy, t: Tensors, *, epochs: int, seed: int, run_id: str, bridge: TrainingProgressBridge,
        cancel: CancelFlag, resume: bytes | None, on_checkpoint: OnCheckpoint | None) -> FitState:
    """Train up to `epochs` epochs (fewer on early stopping), one checkpoint per epoch."""
    dev = t.x_train.device
    state = initial_state(strategy, t, seed, dev)
    restore(state, resume, run_id, bridge)
    bridge.phase("training", bridge.training_line(state.epoch))
    writer = CheckpointWriter(on_checkpoint)
    try:
        for epoch in range(state.epoch + 1, epochs + 1):
            if state.stopped:
                break
            if cancel.is_cancelled:
                raise OperationCancelledError(f"epoch {epoch}, batch 0", cancel.reason)
            began = time.monotonic()
            with tracing.span("epoch", attrs={"ktrdr.epoch": epoch}):
                metrics = train_epoch(state, t, epoch, seed, bridge, cancel)
                val = evaluate(state.model, t.x_val, t.y_val, state.criterion)
            metrics |= {"val_loss": val["loss"], "val_accuracy": val["accuracy"],
                        "learning_rate": float(state.optimizer.param_groups[0]["lr"])}
            seconds = time.monotonic() - began
            state.history.append({"epoch": epoch, **metrics, "epoch_time_s": seconds})
            note = _early_stopping(state, strategy, epoch, metrics)
            state.epoch, state.elapsed_s = epoch, state.elapsed_s + seconds
            writer.submit(epoch, _payload(state, run_id))
            bridge.epoch(epoch, {**metrics, "epoch_time_s": seconds, **gpu_readings(dev)}, note)
            if cancel.is_cancelled:
                raise OperationCancelledError(f"epoch {epoch}, end", cancel.reason)
    except BaseException:
        writer.close(raise_errors=False)
        raise
    writer.close()
    return state
