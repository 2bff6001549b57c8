"""Bare PyTorch training loop: the instrumented trainer's loop minus progress, cancellation,
checkpoints and metrics bookkeeping. Benchmarks compare throughput against it to show what the
instrumentation costs; it uses the same model, optimizer, loss, batch order and seeding.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ktrdr.training.model import build_mlp, class_weights, epoch_permutation, make_optimizer, seed_everything
from ktrdr.training.strategy import Strategy


def train_bare(
    x: np.ndarray,
    y: np.ndarray,
    strategy: Strategy,
    epochs: int,
    seed: int = 42,
    device: str = "cpu",
    val: tuple[np.ndarray, np.ndarray] | None = None,
) -> nn.Module:
    """Train the strategy's MLP on (x, y) for `epochs` epochs and return the model. With `val`, also
    compute the validation loss after every epoch, as any loop with early stopping must."""
    dev = torch.device(device)
    seed_everything(seed)
    params = strategy.model.training
    xt = torch.as_tensor(x, dtype=torch.float32).to(dev)
    yt = torch.as_tensor(y, dtype=torch.long).to(dev)
    model = build_mlp(xt.shape[1], strategy.model.architecture).to(dev)
    optimizer = make_optimizer(params.optimizer, model.parameters(), params.learning_rate)
    criterion = nn.CrossEntropyLoss(weight=class_weights(np.asarray(y)).to(dev))
    n = len(xt)
    batch_size = min(params.batch_size, n)
    n_batches = (n + batch_size - 1) // batch_size
    xv = yv = None
    if val is not None:
        xv = torch.as_tensor(val[0], dtype=torch.float32).to(dev)
        yv = torch.as_tensor(val[1], dtype=torch.long).to(dev)
    for epoch in range(1, epochs + 1):
        model.train()
        perm = epoch_permutation(n, seed, epoch, dev)
        for b in range(n_batches):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(xt[idx]), yt[idx])
            loss.backward()
            optimizer.step()
        if xv is not None and yv is not None:
            model.eval()
            with torch.no_grad():
                float(criterion(model(xv), yv).item())
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return model
