"""`python -m bench._actorproc ROLE[:CONCURRENCY] ...`: actors in one process for the benchmarks, so
their memory and CPU can be read from outside. CONCURRENCY widens a role's max_concurrency (the
dummy worker runs 8 at a time; the scaling benchmark needs 1,000 in flight in one worker)."""

from __future__ import annotations

import asyncio
import sys

from actors.registry import ROLES, build
from actors.runtime import run_actors
from ktrdr.config import settings


def main(argv: list[str]) -> None:
    cfg = settings()
    actors = []
    for spec in argv:
        role, _, width = spec.partition(":")
        if role not in ROLES:
            raise SystemExit(f"unknown role {role!r}")
        actor = build(role, cfg)
        if width:
            actor.max_concurrency = int(width)  # an instance attribute shadows the class's
        actors.append(actor)
    asyncio.run(run_actors(actors))


if __name__ == "__main__":
    main(sys.argv[1:])
