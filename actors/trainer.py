"""trainer: takes `work.training`, runs the training in a child process (TrainingProcess, its own
torch thread budget) and publishes its progress; cancellation is a shared flag the loop reads at every
batch. Bars are read from the local DataStore and the model is saved to KTRDR_HOME/models for now;
each epoch's checkpoint is written to KTRDR_HOME/checkpoints/<op_id>/latest, so work redelivered after
a trainer died resumes where it stopped. Nothing heavy runs on the event loop: parsing, bar reading and
file writes go to threads, torch only ever runs in the child.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pandas as pd

from actors.runtime import Actor, OperationContext
from events.messages import StartTraining
from events.subjects import is_op_id
from ktrdr.data.store import DataStore
from ktrdr.errors import ValidationError
from ktrdr.training.job import CheckedJob, TrainingJob, check_job
from ktrdr.training.process import TrainingProcess
from ktrdr.training.registry import save_model


class Trainer(Actor):
    role = "trainer"
    work_domain = "training"
    max_concurrency = 1  # one model at a time per device
    training_mode: ClassVar[str] = "local"
    batch_every: ClassVar[int | None] = None  # None: settings.progress_batch_every (KTRDR_PROGRESS_BATCH_EVERY)
    training_threads: ClassVar[int | None] = None  # None: training_threads() (cores - 1, 1..8)

    @functools.cached_property
    def training_process(self) -> TrainingProcess:
        return TrainingProcess(threads=self.training_threads)

    async def on_start(self) -> None:
        # Warm the child (python + torch imports, ~2 s here) in the background: the first training
        # need not wait for it, and the actor's start does not either.
        self._warming = asyncio.create_task(asyncio.to_thread(self.training_process.start), name=f"{self.id}-warm")
        self._warming.add_done_callback(lambda t: t.cancelled() or t.exception())  # reported by run() if it matters

    async def on_stop(self) -> None:
        if "training_process" in self.__dict__:
            await asyncio.to_thread(self.training_process.close)

    async def handle(self, op: OperationContext) -> dict[str, Any]:
        cmd = op.command
        assert isinstance(cmd, StartTraining)
        if not is_op_id(op.op_id):  # it names the checkpoint folder
            raise ValidationError(f"invalid operation id {op.op_id[:80]!r}")
        job = TrainingJob(
            op_id=op.op_id, strategy_yaml=cmd.strategy_yaml, strategy_path=cmd.strategy_path,
            symbols=list(cmd.symbols), timeframes=list(cmd.timeframes), start=cmd.start, end=cmd.end,
            epochs=cmd.epochs, device=self.settings.device, training_mode=self.training_mode,
            batch_every=self.batch_every or self.settings.progress_batch_every,
            host=socket.gethostname(), actor=self.id, pool=str(getattr(cmd, "pool", "any") or "any"))
        checked = await asyncio.to_thread(check_job, job)  # workers re-validate what they pull
        bars, simulated = await asyncio.to_thread(self._read_bars, job, checked)
        job = msgspec.structs.replace(job, simulated=simulated)
        ckpt_dir = self.settings.checkpoints_dir / op.op_id
        resume = await asyncio.to_thread(_read_if_exists, ckpt_dir / "latest")

        def on_checkpoint(_epoch: int, data: bytes) -> None:  # on the run thread, not the loop
            _write_atomic(ckpt_dir / "latest", data)

        outcome = await asyncio.to_thread(self.training_process.run, job, bars, emit=op.progress, cancel=op.token,
                                          resume=resume, on_checkpoint=on_checkpoint)
        paths = await asyncio.to_thread(save_model, self.settings.models_dir, checked.strategy.name,
                                        checked.symbols, checked.model_timeframes, outcome.artifacts)
        await asyncio.to_thread(shutil.rmtree, ckpt_dir, True)  # the model is saved: the checkpoint has served
        return {**outcome.result, "artifacts": {**outcome.result.get("artifacts", {}), **paths}}

    def _read_bars(self, job: TrainingJob, checked: CheckedJob) -> tuple[dict[str, dict[str, pd.DataFrame]], bool]:
        store = DataStore(self.settings.home)
        bars = {sym: {tf: store.read(sym, tf, job.start, job.end) for tf in checked.timeframes}
                for sym in checked.symbols}
        simulated = any((meta := store.metadata(sym, tf)) is not None and bool(getattr(meta, "simulated", False))
                        for sym in checked.symbols for tf in checked.timeframes)
        return bars, simulated

    def cancelled_message(self, op: OperationContext, where: str) -> str:
        return f"Training cancelled at {where}" if where else "Training cancelled"


def _read_if_exists(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".latest.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
