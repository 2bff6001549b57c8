"""`python -m hosts.backtest`: the backtester actor on another host, against a remote NATS_URL.

It takes `work.backtest.<pool>` from the same durable consumers as any local backtester (JetStream
shares the work between them); the model and the bars come over NATS (MODELS, BARS), so its disk
holds only a cache.
"""

from __future__ import annotations

from actors.backtester import Backtester
from hosts._main import run_host


def main(argv: list[str] | None = None) -> int:
    return run_host("backtest", Backtester, argv, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
