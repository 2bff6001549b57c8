"""One `ktrdr ops list`, in phases, for bench.backbone's cold-start breakdown: each phase's wall time
in this fresh process (the imports in the order the lean path makes them, so a module shared by two
phases counts in the first), printed as one JSON line. Rendering goes to /dev/null."""

from __future__ import annotations

import time

T0 = time.perf_counter()
import sys  # noqa: E402  (the clock starts before any import)

from ktrdr.cli import _startup  # noqa: E402

_startup.install()  # as ktrdr.cli.entry does


def main() -> None:
    marks: list[tuple[str, float]] = [("start", T0)]

    def mark(name: str) -> None:
        marks.append((name, time.perf_counter()))

    import asyncio

    mark("asyncio")
    import msgspec  # noqa: F401

    mark("msgspec")
    import nats.aio.client  # noqa: F401  (nats-py imports nats.js, its JetStream API, with it)

    mark("nats_py")
    import events.codec  # noqa: F401

    mark("events")
    from ktrdr.cli import _lean

    kwargs = _lean.parse_list([])
    from ktrdr.cli import _listing, _run
    from ktrdr.ops.index import Filters

    mark("ktrdr_cli")
    import ktrdr.client  # noqa: F401

    mark("ktrdr_client")
    s = _run.settings()
    s.connect_options("cli")
    mark("settings_and_creds")
    assert kwargs is not None

    async def go() -> tuple[list[object], float, float]:
        async with _run.client() as c:
            t1 = time.perf_counter()
            views = await c.list_operations(limit=50, filters=Filters())
            t2 = time.perf_counter()
        return views, t1, t2

    views, t1, t2 = asyncio.run(go())
    marks.append(("connect", t1))
    marks.append(("read", t2))
    mark("close")
    import os

    out = sys.stdout
    sys.stdout = open(os.devnull, "w")
    try:
        asyncio.run(_listing._ops_list(50, False, False, Filters(), None))
    finally:
        sys.stdout = out
    mark("second_connect_read_render")
    phases = {name: round(t - marks[i][1], 6) for i, (name, t) in enumerate(marks[1:])}
    phases["rows"] = len(views)
    print(__import__("json").dumps(phases))


if __name__ == "__main__":
    main()
