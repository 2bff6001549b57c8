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
    x: np.ndarray, y: np.ndarray, strategy: Strategy, epochs: int, seed: int = 42, device: str = "cpu"
) -> nn.Module:
    """Train the strategy's MLP on (x, y) for `epochs` epochs and return the model."""
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
    model.train()
    for epoch in range(1, epochs + 1):
        perm = epoch_permutation(n, seed, epoch, dev)
        for b in range(n_batches):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(xt[idx]), yt[idx])
            loss.backward()
            optimizer.step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return model
