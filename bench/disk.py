"""A full disk, measured: how long from freeing space until the embedded stack stores writes again.

The embedded stack (`ktrdr up`, orchestrator only) runs with KTRDR_HOME on a 64 MiB tmpfs (needs root
to mount). Each round fills the disk, makes a BARS put fail (nats-server: "Critical write error"; the
stream then stores nothing until the server restarts), waits until the supervisor has recorded it,
frees the space and times, from the moment of the unlink, a client already connected (the CLI's
role) retrying a small BARS put until one is acknowledged. That span is the supervisor's poll, the
server's restart on its store and the client's reconnect; the CLI's own start (about 1 s) comes on
top for a user. Also reported: how long after the failed write the supervisor had recorded it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ktrdr import disk
from ktrdr.client import Client
from ktrdr.config import Settings
from ktrdr.embedded import free_port, recorded_url
from ktrdr.transport import objects

ROUNDS = 3
MiB = 1 << 20


def _ktrdr(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "-m", "ktrdr", *args], env=env, check=True, capture_output=True, timeout=120)


def _mount(home: Path) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(home)], check=True)


def _umount(home: Path) -> None:
    subprocess.run(["umount", "-l", str(home)], check=False)


def _fill(path: Path) -> Path:
    filler = path / "filler"
    st = os.statvfs(path)
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, max(st.f_bavail * st.f_frsize, 4096))
    return filler


async def _put_until_stored(c: Client, name: str, deadline_s: float = 60.0) -> float:
    began = time.monotonic()
    while time.monotonic() - began < deadline_s:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(objects.put(c.js, objects.BARS, name, b"x" * 1000), 1.0)
            return time.monotonic() - began
        await asyncio.sleep(0.02)
    raise TimeoutError(f"no write stored within {deadline_s:g} s of space freed")


async def _round(c: Client, s: Settings, home: Path, i: int) -> tuple[float, float]:
    filler = _fill(home)
    failing = asyncio.create_task(objects.put(c.js, objects.BARS, f"BENCH/fail{i}", os.urandom(2 * MiB)))
    began = time.monotonic()
    while (h := disk.read_health(s)) is None or h.state != "write_error":
        if time.monotonic() - began > 30:
            raise TimeoutError("the supervisor recorded no write error within 30 s")
        await asyncio.sleep(0.01)
    detected = time.monotonic() - began
    filler.unlink()
    stored = await _put_until_stored(c, f"BENCH/ok{i}")
    failing.cancel()
    with contextlib.suppress(BaseException):
        await failing
    return detected, stored


async def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "ktrdr"
        home.mkdir()
        _mount(home)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "IB_PORT", "KTRDR_"))}
        env.update({"KTRDR_HOME": str(home), "KTRDR_NATS_PORT": str(free_port()), "KTRDR_WEB_PORT": str(free_port()),
                    "KTRDR_LOCAL_ROLES": "orchestrator", "KTRDR_DISK_MIN_FREE": str(8 * MiB)})
        try:
            _ktrdr(env, "up")
            s = Settings(home=home, nats_url=None)
            async with Client(s, url=recorded_url(s)) as c:
                rounds = [await _round(c, s, home, i) for i in range(ROUNDS)]
        finally:
            with contextlib.suppress(Exception):
                _ktrdr(env, "down")
            _umount(home)
    detected, stored = [r[0] for r in rounds], [r[1] for r in rounds]
    return {"disk full (64 MiB tmpfs KTRDR_HOME)": {
        "rounds": ROUNDS,
        "write error recorded after (s)": round(statistics.median(detected), 3),
        "space freed -> write stored (s)": round(statistics.median(stored), 3),
        "space freed -> write stored, max (s)": round(max(stored), 3),
    }}


if __name__ == "__main__":
    from bench._common import report

    report("disk", asyncio.run(main()))
