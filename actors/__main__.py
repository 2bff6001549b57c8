"""`python -m actors [ROLE ...]`: run actors in one process until SIGTERM/SIGINT.

Roles: orchestrator, dummy, job-manager, ib, trainer (default: all of them).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from actors.registry import ROLES, build
from actors.runtime import run_actors
from ktrdr.config import settings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m actors", description=__doc__)
    p.add_argument("roles", nargs="*", default=list(ROLES), help=f"any of: {', '.join(ROLES)}")
    p.add_argument("--url", default=None, help="NATS URL, or several comma-separated (default: NATS_URL, else "
                                               "the running embedded server's)")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    unknown = [r for r in args.roles if r not in ROLES]
    if unknown:
        p.error(f"unknown role(s) {', '.join(unknown)}; expected any of {', '.join(ROLES)}")
    cfg = settings()
    from ktrdr.embedded import recorded_url

    url = args.url or cfg.nats_url or recorded_url(cfg)
    if not url:
        p.error("no NATS server: set NATS_URL or --url, or start the embedded stack with `ktrdr up`")
    if len(args.roles) > 1:  # one process, several roles: its service is "actors", each span says its role
        from ktrdr import tracing

        tracing.setup("actors", cfg.home)
    asyncio.run(run_actors([build(r, cfg, url=url) for r in args.roles]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
