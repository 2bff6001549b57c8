"""Shared entry-point plumbing for the host services."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from actors.runtime import Actor, run_actors
from ktrdr.config import Settings, settings


def run_host(name: str, make: type[Actor], argv: list[str] | None, doc: str) -> int:
    p = argparse.ArgumentParser(prog=f"python -m hosts.{name}", description=doc)
    p.add_argument("--replicas", type=int, default=1, help="actors to run in this process (default 1)")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    cfg: Settings = settings()
    if not cfg.nats_url:
        p.error("NATS_URL is not set: a host service joins a remote NATS server, e.g. "
                "NATS_URL=nats://trading-box:4222")
    asyncio.run(run_actors([make(cfg) for _ in range(args.replicas)]))
    return 0
