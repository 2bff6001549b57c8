"""What one training run is about, and what it gives back: the contract between the trainer actor, the
training child process and the training domain. Torch-free, and msgspec-encodable so it can cross a
process boundary (or a NATS one) as it is.

`TrainingJob` is checked once by `check_job` wherever it is consumed (a worker re-validates what it
pulls; it does not trust the sender): bounded epochs, symbols in the data layer's alphabet, the
strategy's own timeframes. `TrainingOutcome` carries KTRDR's unified result schema plus the model's
files as bytes; storing them (a local models folder, an object store) is the caller's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import msgspec

from events.bounds import MAX_EPOCHS, MAX_SYMBOLS, Timeframe
from ktrdr.data.symbols import normalize_symbol
from ktrdr.errors import ValidationError
from ktrdr.training.strategy import Strategy, parse_strategy

ARTIFACT_FILES: tuple[str, ...] = ("model.pt", "config.json", "metrics.json", "features.json", "metadata.json")


class TrainingJob(msgspec.Struct, frozen=True, kw_only=True):
    """One training run. Empty symbols/timeframes mean the strategy's own; `epochs` overrides the
    strategy's epoch count. host/actor/pool say who ran it (reported in session_info)."""

    op_id: str
    strategy_yaml: str
    strategy_path: str = ""
    symbols: list[str] = msgspec.field(default_factory=list)
    timeframes: list[Timeframe] = msgspec.field(default_factory=list)
    start: datetime | None = None
    end: datetime | None = None
    epochs: int | None = None
    device: str = "auto"  # auto | cpu | cuda[:n]; the caller resolves KTRDR_DEVICE through Settings
    seed: int = 42
    training_mode: str = "local"  # local | host
    batch_every: int = 20  # a batch-level progress event for the first, last and every N-th batch
    simulated: bool = False  # the bars came from the simulated gateway: marked in the artifacts
    host: str = ""
    actor: str = ""
    pool: str = "any"


class TrainingOutcome(msgspec.Struct, frozen=True):
    result: dict[str, Any]  # KTRDR's unified result schema (JSON-serialisable)
    artifacts: dict[str, bytes]  # ARTIFACT_FILES -> contents


class CancelFlag(Protocol):
    """What the training loop reads at every batch: a CancellationToken in-process, a shared-memory
    flag in the training child process."""

    @property
    def is_cancelled(self) -> bool: ...

    @property
    def reason(self) -> str: ...


@dataclass(frozen=True)
class CheckedJob:
    strategy: Strategy
    symbols: list[str]
    timeframes: list[Timeframe]
    epochs: int

    @property
    def model_timeframes(self) -> list[Timeframe]:
        """The timeframes in the model's key: the base one alone for a single-timeframe strategy."""
        td = self.strategy.training_data
        return [td.base_timeframe] if len(self.timeframes) == 1 else list(self.timeframes)


def check_job(job: TrainingJob) -> CheckedJob:
    """Parse the strategy and bound every field the run will use; ValidationError (StrategyError for
    the strategy) names what is wrong."""
    if not isinstance(job, TrainingJob):
        raise ValidationError(f"expected a TrainingJob, got {type(job).__name__}")
    strategy = parse_strategy(job.strategy_yaml, file=job.strategy_path or "<strategy>")
    if len(job.symbols) > MAX_SYMBOLS:
        raise ValidationError(f"symbols: at most {MAX_SYMBOLS}, got {len(job.symbols)}")
    symbols = [normalize_symbol(s) for s in job.symbols] or list(strategy.training_data.symbols)
    if len(set(symbols)) != len(symbols):
        raise ValidationError(f"symbols: duplicates in {symbols}")
    timeframes = list(strategy.training_data.timeframes)
    if job.timeframes and list(job.timeframes) != timeframes:
        # Features are defined per timeframe by the strategy; other timeframes would change the model.
        raise ValidationError(f"timeframes {[str(t) for t in job.timeframes]} differ from the strategy's "
                              f"{[str(t) for t in timeframes]}",
                              hint="edit the strategy's training_data.timeframes instead")
    epochs = job.epochs if job.epochs is not None else strategy.model.training.epochs
    if isinstance(epochs, bool) or not 1 <= epochs <= MAX_EPOCHS:
        raise ValidationError(f"epochs must be between 1 and {MAX_EPOCHS}, got {epochs}")
    if not 1 <= job.batch_every <= 1_000_000:
        raise ValidationError(f"batch_every must be between 1 and 1000000, got {job.batch_every}")
    if job.training_mode not in ("local", "host"):
        raise ValidationError(f"training_mode must be local or host, got {job.training_mode[:20]!r}")
    return CheckedJob(strategy, symbols, timeframes, epochs)
