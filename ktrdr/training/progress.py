"""TrainingProgressBridge: turns training-loop moments into the wire `ProgressState` (with a
`TrainingContext`), the one progress shape every domain emits.

The seed's semantics: phases (initializing, loading_data, building_features, training,
evaluating, saving) are each reported once; training reports one update per epoch with its metrics
and throttled batch updates (the first, the last and every N-th batch of an epoch). The percentage
runs over epochs x batches inside the training band (10%..90% by default); the phases before and
after take the rest. The bridge knows nothing of NATS or processes: it calls `emit(state)`; in a training
child process that is a pipe to the trainer actor, which publishes it as an `OperationProgress` event.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from events.messages import ProgressState, TrainingContext

PHASES: tuple[str, ...] = (
    "initializing",
    "loading_data",
    "building_features",
    "training",
    "evaluating",
    "saving",
)

# Where each phase starts on the 0..100 scale; training fills TRAIN_START..TRAIN_END.
PHASE_START: dict[str, float] = {
    "initializing": 0.0,
    "loading_data": 2.0,
    "building_features": 6.0,
    "training": 10.0,
    "evaluating": 90.0,
    "saving": 95.0,
}
TRAIN_START, TRAIN_END = 10.0, 90.0
# The epoch metrics printed in the progress line; the rest (learning rate, epoch time, GPU) stay in
# the context's metrics.
SUMMARY_KEYS = frozenset({"train_loss", "train_accuracy", "val_loss", "val_accuracy"})


Emit = Callable[[ProgressState], None]


def shorten_symbols(symbols: Sequence[str], limit: int = 2) -> str:
    """`AAPL, MSFT` or `AAPL, MSFT (+1 more)` past `limit` symbols."""
    shown = ", ".join(symbols[:limit])
    return f"{shown} (+{len(symbols) - limit} more)" if len(symbols) > limit else shown


def format_training_line(
    symbols: Sequence[str],
    timeframes: Sequence[str],
    epoch: int,
    epochs: int,
    batch: int | None = None,
    batches: int | None = None,
    model_type: str = "mlp",
) -> str:
    """`Training MLP on AAPL, MSFT [1h, 4h] [epoch 15/50]`, or with a batch
    `Training MLP on AAPL, MSFT [1h, 4h] [Epoch 1/50 · Batch 120/640]`. Renderers reuse this."""
    head = f"Training {model_type.upper()} on {shorten_symbols(symbols)} [{', '.join(timeframes)}]"
    if batch is not None and batches is not None:
        return f"{head} [Epoch {epoch}/{epochs} · Batch {batch}/{batches}]"
    return f"{head} [epoch {epoch}/{epochs}]"


class TrainingProgressBridge:
    """Stateful adapter between the training loop and a progress sink."""

    def __init__(
        self,
        emit: Emit,
        *,
        strategy: str,
        symbols: Sequence[str],
        timeframes: Sequence[str],
        total_epochs: int,
        model_type: str = "mlp",
        batch_every: int = 20,
    ) -> None:
        self._emit = emit
        self.batch_every = max(1, int(batch_every))
        self.symbols = list(symbols)
        self.timeframes = list(timeframes)
        self.model_type = model_type
        self.total_epochs = total_epochs
        self.total_batches = 0
        self.phase_name = "initializing"
        self.percentage = 0.0
        self.device = ""
        self.gpu_name: str | None = None
        self.gpu_memory_gb: float | None = None
        self.resumed_from_epoch: int | None = None
        self.strategy = strategy
        self.last_metrics: dict[str, float] = {}

    # -- context ------------------------------------------------------------------------------------
    def set_device(
        self, device: str, gpu_name: str | None = None, gpu_memory_gb: float | None = None
    ) -> None:
        self.device, self.gpu_name, self.gpu_memory_gb = device, gpu_name, gpu_memory_gb

    def set_shape(self, total_epochs: int, total_batches: int) -> None:
        self.total_epochs, self.total_batches = total_epochs, total_batches

    def _context(self, epoch: int, batch: int, metrics: dict[str, float]) -> TrainingContext:
        return TrainingContext(
            model_type=self.model_type,
            strategy=self.strategy,
            symbols=list(self.symbols),
            timeframes=list(self.timeframes),
            epoch=epoch,
            total_epochs=self.total_epochs,
            batch=batch,
            total_batches=self.total_batches,
            metrics=dict(metrics),
            device=self.device,
            gpu_name=self.gpu_name,
            gpu_memory_gb=self.gpu_memory_gb,
            gpu_memory_used_gb=metrics.get("gpu_memory_used_gb"),
            gpu_memory_peak_gb=metrics.get("gpu_memory_peak_gb"),
            gpu_utilization_pct=metrics.get("gpu_utilization_pct"),
            resumed_from_epoch=self.resumed_from_epoch,
        )

    def _send(
        self,
        message: str,
        *,
        epoch: int = 0,
        batch: int = 0,
        metrics: dict[str, float] | None = None,
        current_step: int = 0,
        items_processed: int = 0,
    ) -> None:
        self._emit(
            ProgressState(
                percentage=round(self.percentage, 2),
                message=message,
                current_step=current_step,
                total_steps=self.total_epochs,
                items_processed=items_processed,
                items_total=self.total_epochs * self.total_batches,
                phase=self.phase_name,
                context=self._context(epoch, batch, metrics if metrics is not None else self.last_metrics),
            )
        )

    # -- phases -------------------------------------------------------------------------------------
    def phase(self, name: str, message: str) -> None:
        """Enter a phase (one of PHASES) and report it."""
        self.phase_name = name
        self.percentage = max(self.percentage, PHASE_START[name])
        self._send(
            message,
            current_step=0 if name != "evaluating" and name != "saving" else self.total_epochs,
            items_processed=self._items_done_for_phase(name),
        )

    def _items_done_for_phase(self, name: str) -> int:
        return self.total_epochs * self.total_batches if name in ("evaluating", "saving") else 0

    def resumed(self, epoch: int) -> None:
        """A checkpoint was loaded: training continues after `epoch` (1-based, completed)."""
        self.resumed_from_epoch = epoch
        self.phase_name = "training"
        self.percentage = self._training_pct(epoch, 0)
        self._send(
            f"Resumed from checkpoint at epoch {epoch}",
            epoch=epoch,
            current_step=epoch,
            items_processed=epoch * self.total_batches,
        )

    def message(self, text: str) -> None:
        """A free-form note in the current phase (e.g. the device chosen)."""
        self._send(text)

    # -- training -----------------------------------------------------------------------------------
    def _training_pct(self, epoch_done: int, batch_done: int) -> float:
        total = max(1, self.total_epochs * max(1, self.total_batches))
        done = epoch_done * max(1, self.total_batches) + batch_done
        return TRAIN_START + (TRAIN_END - TRAIN_START) * min(1.0, done / total)

    def wants_batch(self, batch: int) -> bool:
        """Throttle: the first, the last and every N-th batch (1-based) of an epoch."""
        return batch == 1 or batch == self.total_batches or batch % self.batch_every == 0

    def batch(self, epoch: int, batch: int, metrics: dict[str, float] | None = None) -> None:
        self.percentage = self._training_pct(epoch - 1, batch)
        self._send(
            format_training_line(
                self.symbols,
                self.timeframes,
                epoch,
                self.total_epochs,
                batch,
                self.total_batches,
                self.model_type,
            ),
            epoch=epoch,
            batch=batch,
            metrics=metrics or {},
            current_step=epoch,
            items_processed=(epoch - 1) * self.total_batches + batch,
        )

    def training_line(self, epoch: int) -> str:
        """`Training MLP on AAPL [1h] [epoch 3/10]` for this run."""
        return format_training_line(
            self.symbols, self.timeframes, epoch, self.total_epochs, model_type=self.model_type
        )

    def epoch(self, epoch: int, metrics: dict[str, float], note: str = "") -> None:
        """An epoch finished: all its metrics go in the context, the loss/accuracy ones in the line."""
        self.last_metrics = dict(metrics)
        self.percentage = self._training_pct(epoch, 0)
        line = self.training_line(epoch)
        summary = " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k in SUMMARY_KEYS)
        self._send(
            f"{line} {summary}{' · ' + note if note else ''}",
            epoch=epoch,
            metrics=metrics,
            current_step=epoch,
            items_processed=epoch * self.total_batches,
        )

    def done(self, message: str) -> None:
        self.percentage = 100.0
        self._send(
            message,
            epoch=self.total_epochs,
            current_step=self.total_epochs,
            items_processed=self.total_epochs * self.total_batches,
        )
