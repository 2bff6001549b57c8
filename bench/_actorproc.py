"""`python -m bench._actorproc ROLE[:CONCURRENCY] ...`: actors in one process for the benchmarks, so
their memory and CPU can be read from outside. CONCURRENCY widens a role's max_concurrency (the
dummy worker runs 8 at a time; the scaling benchmark needs 1,000 in flight in one worker).
KTRDR_BENCH_PROFILE=PATH runs the process under cProfile and writes the stats to PATH on exit."""

from __future__ import annotations

import asyncio
import os
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
    profile = os.environ.get("KTRDR_BENCH_PROFILE")  # a path: cProfile the whole run, stats written at exit
    if not profile:
        asyncio.run(run_actors(actors))
        return
    import cProfile

    prof = cProfile.Profile()
    prof.enable()
    try:
        asyncio.run(run_actors(actors))
    finally:
        prof.disable()
        prof.dump_stats(profile)


if __name__ == "__main__":
    main(sys.argv[1:])
