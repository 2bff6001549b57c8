"""Settings from the environment, read once per process. Every knob a user can turn is here."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise SystemExit(f"{name}={raw!r} is not a number") from exc


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=lambda: Path(os.environ.get("KTRDR_HOME", "~/.ktrdr")).expanduser())
    nats_url: str | None = field(default_factory=lambda: os.environ.get("NATS_URL") or None)
    nats_user: str | None = field(default_factory=lambda: os.environ.get("NATS_USER") or None)
    nats_password: str | None = field(default_factory=lambda: os.environ.get("NATS_PASSWORD") or None)
    nats_creds: str | None = field(default_factory=lambda: os.environ.get("NATS_CREDS") or None)
    # OPS retention (seconds); 30 days like the design says.
    ops_max_age_s: float = field(default_factory=lambda: _float("KTRDR_OPS_MAX_AGE", 30 * 86400))
    heartbeat_s: float = field(default_factory=lambda: _float("KTRDR_HEARTBEAT_S", 1.0))
    # A worker silent this long loses its lease: JetStream redelivers the work (ack_wait).
    worker_timeout_s: float = field(default_factory=lambda: _float("KTRDR_WORKER_TIMEOUT", 10.0))
    # An operation nobody has picked up again this long after its worker went silent is failed.
    orphan_timeout_s: float = field(default_factory=lambda: _float("KTRDR_ORPHAN_TIMEOUT", 30.0))
    drain_timeout_s: float = field(default_factory=lambda: _float("KTRDR_DRAIN_TIMEOUT", 5.0))
    max_deliver: int = field(default_factory=lambda: int(_float("KTRDR_MAX_DELIVER", 5)))
    ib_host: str = field(default_factory=lambda: os.environ.get("IB_HOST", "127.0.0.1"))
    ib_port: int | None = field(default_factory=lambda: int(os.environ["IB_PORT"]) if os.environ.get("IB_PORT")
                                else None)
    ib_client_id: int = field(default_factory=lambda: int(_float("IB_CLIENT_ID", 1)))
    # Shrinks IB's pacing windows (sim gateway and client alike) for tests and benchmarks; 1.0 = IB's rules.
    ib_time_scale: float = field(default_factory=lambda: _float("KTRDR_IB_TIME_SCALE", 1.0))
    device: str = field(default_factory=lambda: os.environ.get("KTRDR_DEVICE", "auto"))
    # Training progress: a batch-level event for the first, the last and every N-th batch of an epoch.
    progress_batch_every: int = field(default_factory=lambda: int(_float("KTRDR_PROGRESS_BATCH_EVERY", 20)))

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def data_dir(self) -> Path:
        return self.home

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def checkpoints_dir(self) -> Path:
        return self.home / "checkpoints"


def settings() -> Settings:
    return Settings()
