"""Epoch checkpoints as bytes: what a resumed run needs to reach the same model as an uninterrupted one.

A checkpoint is the model and optimizer state, the early-stopping bookkeeping, the per-epoch history
and every RNG state, serialised with `torch.save` into bytes. It holds only tensors, numbers, strings,
lists, tuples and dicts, so it loads with `torch.load(weights_only=True)`: a checkpoint is data written
by whoever can reach the store (a disk under KTRDR_HOME today, a JetStream object tomorrow), and a
pickle that names a callable must never run. numpy's and Python's RNG states are kept as tensors and
ints for that reason. Where the bytes go is the caller's business (`on_checkpoint(epoch, data)`);
`CheckpointWriter` serialises and hands them over on a background thread, off the training loop.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from typing import Any

import numpy as np
import torch

from ktrdr.errors import DataError

FORMAT = 2  # bumped when the payload's shape changes; another format is never resumed
OnCheckpoint = Callable[[int, bytes], None]


class CheckpointRefused(DataError):
    """The bytes are not a checkpoint this code wrote (corrupt, another format, or a pickle that
    would run code). The run starts over instead."""

    code = "checkpoint_refused"


def fingerprint(parts: dict[str, Any]) -> str:
    """Identifies the run a checkpoint belongs to; a mismatching checkpoint is never resumed."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def encode(payload: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save({**payload, "format": FORMAT}, buf)
    return buf.getvalue()


def decode(data: bytes) -> dict[str, Any]:
    """The payload, loaded with weights_only=True; CheckpointRefused for anything else."""
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # an UnpicklingError naming a forbidden global, a bad zip, truncated bytes
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointRefused(f"checkpoint refused: {first[:200]}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointRefused("checkpoint refused: not a checkpoint of this format")
    return obj


def rng_state() -> dict[str, Any]:
    """Every RNG the training touches, as tensors and ints (weights_only-loadable)."""
    _name, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def detached_copy(obj: Any) -> Any:
    """A copy of a (nested) state dict whose tensors no later training step can change."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: detached_copy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(detached_copy(v) for v in obj)
    return obj


class CheckpointWriter:
    """Serialises epoch checkpoints and hands the bytes to `on_checkpoint` on a background thread: the
    training thread pays only for copying the state. One write in flight at a time, in epoch order (a
    slow sink holds the next epoch's write, not the training). `close()` waits for the last one, so
    when the run ends (done, cancelled or failed) its last checkpoint has been delivered."""

    def __init__(self, on_checkpoint: OnCheckpoint | None) -> None:
        self.on_checkpoint = on_checkpoint
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="checkpoint") if on_checkpoint else None
        self._last: Future[None] | None = None

    def _write(self, epoch: int, payload: dict[str, Any]) -> None:
        assert self.on_checkpoint is not None
        self.on_checkpoint(epoch, encode(payload))

    def submit(self, epoch: int, payload: dict[str, Any]) -> None:
        if self._pool is None:
            return
        if self._last is not None:
            self._last.result()  # raises the previous write's error here, in the training thread
        self._last = self._pool.submit(self._write, epoch, payload)

    def close(self, *, raise_errors: bool = True) -> None:
        if self._pool is None:
            return
        try:
            if self._last is not None:
                if raise_errors:
                    self._last.result()
                else:
                    wait_for_futures([self._last])
        finally:
            self._pool.shutdown(wait=True)
