"""`python -m ktrdr.ib.sim`: run the simulated gateway as a process until SIGTERM / SIGINT.

Prints exactly one line, "sim-gateway listening on HOST:PORT (simulated data)", once it accepts
connections (scripts wait for it, and learn the port when --port 0 is given).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from ktrdr.ib.sim.server import SimGateway


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m ktrdr.ib.sim", description="Simulated IB Gateway")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=4002, help="0 picks a free port")
    ap.add_argument("--latency", type=float, default=0.0, help="seconds before each historical answer")
    ap.add_argument("--time-scale", type=float, default=1.0, help="scale of IB's pacing windows")
    ap.add_argument("--csv-dir", default=None, help="replay {SYMBOL}_{tf}.csv files from this folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-pacing", action="store_true", help="do not enforce IB's pacing rules")
    ap.add_argument("--log-level", default="WARNING")
    return ap.parse_args(argv)


async def _run(args: argparse.Namespace) -> None:
    gw = SimGateway(
        args.host,
        args.port,
        latency_s=args.latency,
        seed=args.seed,
        csv_dir=args.csv_dir,
        time_scale=args.time_scale,
        pacing=not args.no_pacing,
    )
    # Handlers first: whoever reads the "listening" line may signal us right away.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await gw.start()
    print(f"sim-gateway listening on {args.host}:{gw.port} (simulated data)", flush=True)
    try:
        await stop.wait()
    finally:
        await gw.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
