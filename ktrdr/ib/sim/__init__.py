"""A simulated IB Gateway speaking the real TWS wire protocol, for offline use, tests and benchmarks.

`SimGateway` is the server; `generate_bars` gives the exact bars it serves without a server (tests
use it as the expected data); `main` is the `python -m ktrdr.ib.sim` entry point.
"""

from ktrdr.ib.sim.data import generate_bars
from ktrdr.ib.sim.server import ACCOUNT, RequestRecord, SimGateway

__all__ = ["ACCOUNT", "RequestRecord", "SimGateway", "generate_bars", "main"]


def main(argv: list[str] | None = None) -> int:
    from ktrdr.ib.sim.__main__ import main as _main

    return _main(argv)
