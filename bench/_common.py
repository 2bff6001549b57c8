"""Shared benchmark plumbing: a private nats-server with the project's nats.conf, percentiles, output."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ktrdr.config import Settings
from ktrdr.embedded import free_port, start_nats_server

RESULTS = Path(__file__).parent / "results"


class BenchServer:
    def __init__(self, name: str, **overrides: Any) -> None:
        self.name = name
        self.overrides = overrides

    def __enter__(self) -> BenchServer:
        self.tmp = Path(tempfile.mkdtemp(prefix=f"ktrdr-bench-{self.name}-"))
        port = free_port()
        self.proc = start_nats_server(self.tmp / "store", port, self.tmp / "nats.log")
        self.url = f"nats://127.0.0.1:{port}"
        (self.tmp / "home").mkdir()
        kwargs: dict[str, Any] = {"home": self.tmp / "home", "nats_url": self.url, "heartbeat_s": 0.5}
        kwargs.update(self.overrides)
        self.settings = Settings(**kwargs)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.tmp, ignore_errors=True)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def report(name: str, results: dict[str, Any]) -> None:
    print(f"== {name}")
    for section, figures in results.items():
        print(f"  {section}:")
        for k, v in figures.items():
            print(f"    {k:<28} {_fmt(v)}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2, default=str))
