"""The MLP classifier, its optimizer and seeding: shared by the instrumented trainer and the baseline.

Same seed + same inputs -> same initial weights, same batch order, same dropout masks, hence (on CPU)
the same metrics bit for bit. Batch order comes from a generator seeded per epoch, so a run resumed
from a checkpoint draws exactly the order an uninterrupted run would have drawn.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from ktrdr.training.strategy import Architecture

N_CLASSES = 3

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}


def build_mlp(input_size: int, architecture: Architecture, n_classes: int = N_CLASSES) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = input_size
    for size in architecture.hidden_layers:
        layers += [nn.Linear(width, size), _ACTIVATIONS[architecture.activation]()]
        if architecture.dropout > 0:
            layers.append(nn.Dropout(architecture.dropout))
        width = size
    layers.append(nn.Linear(width, n_classes))  # logits; CrossEntropyLoss applies the softmax
    return nn.Sequential(*layers)


def make_optimizer(name: str, params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def epoch_permutation(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    """The batch order of one epoch (1-based), independent of anything drawn before it."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=gen).to(device)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def class_weights(y: np.ndarray, n_classes: int = N_CLASSES) -> torch.Tensor:
    """Inverse-frequency weights: HOLD usually dominates, and an unweighted loss learns 'always HOLD'."""
    counts = np.bincount(y, minlength=n_classes).astype("float64")
    weights = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1.0)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)
