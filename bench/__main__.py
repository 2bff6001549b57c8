"""`python -m bench [backbone|data|training|faults|objects|calendar|indicators|memory|scale|workflows|disk
|ha|nemesis|sync|partitions|universe|intake|research|metrics|tracing ...] [--quick]`: run the benchmarks, print the
figures and write bench/results/<suite>.json.
`--quick` (the nemesis): a few fault classes only (KTRDR_NEMESIS_QUICK=1)."""

from __future__ import annotations

import asyncio
import importlib
import os
import sys

from bench._common import report

SUITES = ("backbone", "data", "training", "faults", "objects", "calendar", "indicators", "memory", "scale",
          "workflows", "disk", "ha", "nemesis", "sync", "partitions", "universe", "intake", "research", "metrics",
          "tracing")


def main() -> None:
    args = sys.argv[1:]
    if "--quick" in args:
        os.environ["KTRDR_NEMESIS_QUICK"] = "1"
    names = [a for a in args if a != "--quick"] or list(SUITES)
    for name in names:
        if name not in SUITES:
            raise SystemExit(f"unknown suite {name!r}; expected any of {', '.join(SUITES)}")
        mod = importlib.import_module(f"bench.{name}")
        report(name, asyncio.run(mod.main()))


if __name__ == "__main__":
    main()
