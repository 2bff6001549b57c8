"""trainer: takes `work.training.<pool>`, runs the training in a child process (TrainingProcess, its own
torch thread budget) and publishes its progress; cancellation is a shared flag the loop reads at every
batch. Nothing it needs is on its own disk: bars come from the object bucket BARS (through this host's
digest cache), each epoch's checkpoint goes to CHECKPOINTS as `<op_id>/latest` (work redelivered after a
trainer died resumes from it, on any host, but only from the checkpoint whose digest the holder reported
in its progress), and the model goes to MODELS with its result and the digest of its weights. The
checkpoint is removed once the model is saved; a failed or cancelled training keeps it for `ktrdr ops
retry` (whose run resumes from it) until CHECKPOINTS' max age removes it. Nothing heavy runs on the
event loop: parsing and bar decoding go to threads, torch only ever runs in the child.

Pools: `KTRDR_POOLS` when set, else the device's (`gpu` when the CUDA driver sees a device, `cpu`
otherwise), always `any`. The device is probed without torch (the driver library through ctypes), so
this process never imports torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import hashlib
import logging
import socket
import threading
from typing import Any, ClassVar

import msgspec
import pandas as pd

from actors.runtime import Actor, OperationContext, metrics
from events import subjects
from events.messages import ProgressState, StartTraining, TrainingContext
from events.subjects import is_op_id
from ktrdr.data.bars_store import BarStore
from ktrdr.data.store import DigestCache
from ktrdr.errors import KtrdrError, ValidationError
from ktrdr.ops.reader import read_view
from ktrdr.training.checkpoint_store import CheckpointStore, Reported, Resume, checkpoint_name
from ktrdr.training.job import CheckedJob, TrainingJob, check_job
from ktrdr.training.model_store import ModelStore
from ktrdr.training.process import TrainingProcess
from ktrdr.transport.objects import CHECKPOINTS


@functools.lru_cache(maxsize=1)
def cuda_devices() -> int:
    """CUDA devices the driver sees (0 without a driver), from libcuda itself: no torch import."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    return 0


def device_pool(device: str) -> str:
    """The pool a device serves: `gpu` for CUDA (KTRDR_DEVICE=cuda[:n], or auto with a CUDA device)."""
    d = device.strip().lower()
    if d.startswith("cuda"):
        return "gpu"
    if d == "auto" and cuda_devices() > 0:
        return "gpu"
    return "cpu"


# How long a checkpoint's upload waits for the report of its digest to be acknowledged: past it, the
# upload goes on (the report is sent; only its ack is late).
FLUSH_BEFORE_STORE_S = 5.0


class CheckpointUploader:
    """Epoch checkpoints from the training thread to CHECKPOINTS, newest only: a slow upload never
    holds the training up, and an older checkpoint never overwrites a newer one. Each checkpoint's
    digest goes into the holder's own progress (`stamp`: every TrainingContext carries the newest
    stored one and the one being stored), and the one being stored is on record (acked) before its
    bytes are: a resumed attempt takes only a checkpoint whose digest its holder reported, and a
    holder killed between storing and reporting leaves it reported all the same (issue 18, F5)."""

    def __init__(self, store: CheckpointStore, op: OperationContext, log: logging.Logger,
                 reported: Reported | None = None) -> None:
        self.store, self.op, self.op_id, self.log = store, op, op.op_id, log
        self.loop = asyncio.get_running_loop()
        self.uploaded_epoch = 0
        self.reported = reported  # the newest checkpoint stored for this operation (a resumed one at first)
        self.pending: Reported | None = None  # the one being stored
        self._latest: tuple[int, bytes, str] | None = None
        self._lock = threading.Lock()
        self._wake = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._run(), name=f"checkpoints-{op.op_id}")

    def submit(self, epoch: int, data: bytes) -> None:
        """Called on the training thread (which also pays for the digest, off the event loop)."""
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            self._latest = (epoch, data, digest)
        self.loop.call_soon_threadsafe(self._wake.set)

    def stamp(self, state: ProgressState) -> ProgressState:
        """`state` with the stored and the pending checkpoint in its TrainingContext (any thread)."""
        reported, pending, ctx = self.reported, self.pending, state.context
        if (reported is None and pending is None) or not isinstance(ctx, TrainingContext):
            return state
        ctx = msgspec.structs.replace(
            ctx, checkpoint_epoch=reported.epoch if reported else 0,
            checkpoint_sha256=reported.sha256 if reported else "",
            checkpoint_pending_sha256=pending.sha256 if pending else "")
        return msgspec.structs.replace(state, context=ctx)

    def emit(self, state: ProgressState) -> None:
        """The training's progress out (any thread), stamped."""
        self.op.progress(self.stamp(state))

    async def _report(self) -> None:
        """Publish the checkpoint digests now, not at the next batch."""
        last = self.op.last_progress or ProgressState()
        if not isinstance(last.context, TrainingContext):
            last = msgspec.structs.replace(last, context=TrainingContext())
        self.emit(last)

    def _take(self) -> tuple[int, bytes, str] | None:
        with self._lock:
            item, self._latest = self._latest, None
        return item

    async def _store(self, epoch: int, data: bytes, digest: str) -> None:
        self.pending = Reported(epoch, digest)
        await self._report()
        with contextlib.suppress(TimeoutError):  # on record before the bytes are stored (bounded wait)
            await asyncio.wait_for(self.op.actor.flush_progress(acked=True), FLUSH_BEFORE_STORE_S)
        stored = await self.store.put(self.op_id, data, attempt=self.op.attempt, epoch=epoch)
        self.reported, self.pending, self.uploaded_epoch = stored, None, epoch
        await self._report()

    async def _run(self) -> None:
        while True:
            item = self._take()
            if item is not None:
                try:
                    await self._store(*item)
                except Exception as exc:  # the next epoch's checkpoint tries again
                    self.log.warning("%s: checkpoint of epoch %d not stored: %s", self.op_id, item[0], exc)
                continue
            if self._closing:
                return
            await self._wake.wait()
            self._wake.clear()

    def abort(self) -> None:
        self._task.cancel()

    async def close(self) -> None:
        """Store what is pending, then stop."""
        self._closing = True
        self._wake.set()
        await asyncio.shield(self._task)


class Trainer(Actor):
    role = StartTraining.role
    work_domain = "training"
    max_concurrency = 1  # one model at a time per device
    training_mode: ClassVar[str] = "local"
    batch_every: ClassVar[int | None] = None  # None: settings.progress_batch_every (KTRDR_PROGRESS_BATCH_EVERY)
    training_threads: ClassVar[int | None] = None  # None: training_threads() (cores - 1, 1..8)

    @functools.cached_property
    def training_process(self) -> TrainingProcess:
        return TrainingProcess(threads=self.training_threads)

    @functools.cached_property
    def cache(self) -> DigestCache:
        return DigestCache(self.settings.cache_dir, self.settings.cache_max_bytes, self.settings.disk_min_free_bytes)

    def pools(self) -> list[str]:
        named = [p for p in self.settings.pools if subjects.is_token(p)]
        return list(dict.fromkeys([*(named or [device_pool(self.settings.device)]), subjects.DEFAULT_POOL]))

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
        assert isinstance(cmd, StartTraining) and self.js is not None
        if not is_op_id(op.op_id):  # it names the checkpoint object
            raise ValidationError(f"invalid operation id {op.op_id[:80]!r}")
        job = TrainingJob(
            op_id=op.op_id, strategy_yaml=cmd.strategy_yaml, strategy_path=cmd.strategy_path,
            symbols=list(cmd.symbols), timeframes=list(cmd.timeframes), start=cmd.start, end=cmd.end,
            epochs=cmd.epochs, device=self.settings.device, training_mode=self.training_mode,
            batch_every=self.batch_every or self.settings.progress_batch_every,
            host=socket.gethostname(), actor=self.id, pool=str(getattr(cmd, "pool", "any") or "any"))
        checked = await asyncio.to_thread(check_job, job)  # workers re-validate what they pull
        bars, simulated = await self._read_bars(job, checked)
        job = msgspec.structs.replace(job, simulated=simulated)
        checkpoints = CheckpointStore(self.js)
        resume = await self._resume(checkpoints, op)
        uploader = CheckpointUploader(checkpoints, op, self.log, resume.reported)
        try:
            outcome = await asyncio.to_thread(self.training_process.run, job, bars, emit=uploader.emit,
                                              cancel=op.token, resume=resume.data, on_checkpoint=uploader.submit)
        except KtrdrError:  # failed or cancelled: its checkpoint stays for `ktrdr ops retry` (or expires)
            await uploader.close()
            raise
        except BaseException:  # killed: the checkpoint stays for whoever resumes the operation
            uploader.abort()
            raise
        await uploader.close()
        _observe_training(outcome.result, job.pool)
        saved = await ModelStore(self.js).save(checked.strategy.name, checked.symbols, checked.model_timeframes,
                                               outcome.artifacts, result=outcome.result)
        await self._forget(checkpoints, op.op_id)  # the model is saved: the checkpoint has served
        if cmd.retry_of is not None:  # and so has the one of the run it retried
            await self._forget(checkpoints, cmd.retry_of)
        return {**outcome.result, "artifacts": {**outcome.result.get("artifacts", {}), **saved}}

    async def _resume(self, checkpoints: CheckpointStore, op: OperationContext) -> Resume:
        """The checkpoint this attempt resumes from: only the one the operation's holder reported in
        its progress (the fold's view: the newest TrainingContext). A refused one is said in an
        ActorError and a progress message, and the run starts from scratch."""
        assert self.js is not None
        source = op.op_id
        if await checkpoints.stat(source) is None:
            retry_of = getattr(op.command, "retry_of", None)
            # A retry (`ktrdr ops retry`; set by the orchestrator alone) resumes from the checkpoint of
            # the run it retries, under the same rule: the one that run's holder reported.
            if retry_of is None or await checkpoints.stat(retry_of) is None:
                return Resume(None)  # nothing stored: no need to read the operation's history
            source = retry_of
        ctx = (await read_view(self.js, source)).context
        reported = [Reported(ctx.checkpoint_epoch, ctx.checkpoint_sha256),
                    Reported(0, ctx.checkpoint_pending_sha256)] if isinstance(ctx, TrainingContext) else []
        found = await checkpoints.resume(source, [r for r in reported if r.sha256])
        if found.refused:
            note = f"{found.refused}; starting from scratch"
            await self.report_error(op.op_id, note, f"{CHECKPOINTS}/{checkpoint_name(source)}")
            op.progress(message=note, phase="initializing")
        return found

    async def _forget(self, checkpoints: CheckpointStore, op_id: str) -> None:
        try:
            await checkpoints.delete(op_id)
        except Exception as exc:  # CHECKPOINTS' max age removes it eventually
            self.log.warning("%s: checkpoint not removed: %s", op_id, exc)

    async def _read_bars(self, job: TrainingJob, checked: CheckedJob
                         ) -> tuple[dict[str, dict[str, pd.DataFrame]], bool]:
        assert self.js is not None
        store = BarStore(self.js, self.cache)
        bars: dict[str, dict[str, pd.DataFrame]] = {}
        simulated = False
        for sym in checked.symbols:
            for tf in checked.timeframes:
                stored = await store.load(sym, tf, job.start, job.end)  # only the partitions of the range
                bars.setdefault(sym, {})[tf] = stored.df
                simulated = simulated or bool(stored.meta is not None and stored.meta.simulated)
        return bars, simulated

    def cancelled_message(self, op: OperationContext, where: str) -> str:
        return f"Training cancelled at {where}" if where else "Training cancelled"


def _observe_training(result: dict[str, Any], pool: str) -> None:
    """/metrics: the training's samples (train set x epochs) per second of fitting."""
    with contextlib.suppress(KeyError, TypeError, ValueError, ZeroDivisionError):
        samples = int(result["data_summary"]["samples"]["train"])
        epochs = int(result["training_metrics"]["epochs_completed"])
        seconds = float(result["training_metrics"]["training_time_minutes"]) * 60.0
        metrics.TRAINING_SAMPLES_PER_S.labels(pool).set(samples * epochs / seconds)
