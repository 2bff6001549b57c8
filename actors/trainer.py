"""trainer: the seed's TrainingManager + LocalTrainingRunner (and, started on a GPU host through
hosts/training.py, its training host service). Takes `work.training`, runs the training loop in a
worker thread so the actor keeps answering heartbeats and cancels, and turns the loop's
TrainingProgressBridge updates into progress events. Cancellation is a flag read at every batch.
A checkpoint is written at the end of every epoch under KTRDR_HOME/checkpoints/<op_id>, so work
redelivered after a trainer died resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import pandas as pd

from actors.runtime import Actor, OperationContext
from events.messages import ProgressState, StartTraining
from ktrdr.data.store import DataStore
from ktrdr.training.progress import ProgressUpdate
from ktrdr.training.strategy import parse_strategy
from ktrdr.training.trainer import TrainingOperationContext, train_strategy


class Trainer(Actor):
    role = "trainer"
    work_domain = "training"
    max_concurrency = 1  # one model at a time per device
    training_mode: ClassVar[str] = "local"
    batch_every: ClassVar[int | None] = None  # None: settings.progress_batch_every (KTRDR_PROGRESS_BATCH_EVERY)

    @functools.cached_property
    def torch_thread(self) -> ThreadPoolExecutor:
        """Every torch call of this actor runs on this one long-lived thread. Measured here (2 cores,
        torch 2.13 CPU, OpenMP): once torch has run on two Python threads, each keeps its own OpenMP
        team and every later run is about 3x slower; asyncio.to_thread hands out any pool thread."""
        return ThreadPoolExecutor(1, thread_name_prefix=f"{self.id}-torch")

    async def on_stop(self) -> None:
        if "torch_thread" in self.__dict__:  # created on first use only
            self.torch_thread.shutdown(wait=False, cancel_futures=True)

    async def handle(self, op: OperationContext) -> dict[str, Any]:
        cmd = op.command
        assert isinstance(cmd, StartTraining)
        strategy = parse_strategy(cmd.strategy_yaml, file=cmd.strategy_path or "<strategy>")
        store = DataStore(self.settings.home)
        ctx = TrainingOperationContext(
            op_id=op.op_id, strategy=strategy, symbols=list(cmd.symbols), timeframes=list(cmd.timeframes),
            start=cmd.start, end=cmd.end, epochs=cmd.epochs, device=self.settings.device,
            training_mode=self.training_mode, strategy_path=cmd.strategy_path)
        ctx.simulated = any(
            (meta := store.metadata(sym, tf)) is not None and bool(getattr(meta, "simulated", False))
            for sym in ctx.effective_symbols for tf in ctx.effective_timeframes)

        def load_bars(symbol: str, timeframe: str) -> pd.DataFrame:
            return store.read(symbol, timeframe, cmd.start, cmd.end)

        def emit(u: ProgressUpdate) -> None:  # called from the training thread
            op.progress(ProgressState(percentage=u.percentage, message=u.message, current_step=u.current_step,
                                      total_steps=u.total_steps, items_processed=u.items_processed,
                                      items_total=u.items_total, phase=u.phase, context=u.context))

        checkpoint_dir = self.settings.checkpoints_dir / op.op_id
        run = functools.partial(
            train_strategy, ctx, load_bars=load_bars, emit=emit, cancel=op.token, checkpoint_dir=checkpoint_dir,
            models_dir=self.settings.models_dir, batch_every=self.batch_every or self.settings.progress_batch_every,
            device=self.settings.device)
        result = await asyncio.get_running_loop().run_in_executor(self.torch_thread, run)
        shutil.rmtree(checkpoint_dir, ignore_errors=True)  # the model is saved: the checkpoint has served
        return result

    def cancelled_message(self, op: OperationContext, where: str) -> str:
        return f"Training cancelled at {where}" if where else "Training cancelled"
