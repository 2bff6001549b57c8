"""`python -m hosts.training`: the trainer actor on a GPU host, against a remote NATS_URL.

It takes `work.training` from the same durable consumer as any local trainer (JetStream shares the
work between them) and pushes progress like any actor. KTRDR_DEVICE=auto picks CUDA when present;
the result's resource_usage says which device trained the model and training_mode is "host".
"""

from __future__ import annotations

from typing import ClassVar

from actors.trainer import Trainer
from hosts._main import run_host


class HostTrainer(Trainer):
    training_mode: ClassVar[str] = "host"


def main(argv: list[str] | None = None) -> int:
    return run_host("training", HostTrainer, argv, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
