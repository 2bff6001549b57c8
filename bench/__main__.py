"""`python -m bench [backbone|data|training|faults|objects|calendar|indicators|memory|scale|workflows|disk|ha
...]`: run the benchmarks, print the figures and write bench/results/<suite>.json."""

from __future__ import annotations

import asyncio
import importlib
import sys

from bench._common import report

SUITES = ("backbone", "data", "training", "faults", "objects", "calendar", "indicators", "memory", "scale",
          "workflows", "disk", "ha")


def main() -> None:
    names = sys.argv[1:] or list(SUITES)
    for name in names:
        if name not in SUITES:
            raise SystemExit(f"unknown suite {name!r}; expected any of {', '.join(SUITES)}")
        mod = importlib.import_module(f"bench.{name}")
        report(name, asyncio.run(mod.main()))


if __name__ == "__main__":
    main()
