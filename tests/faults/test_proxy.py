"""The nemesis's userspace delay proxy (bench.nemesis.proxy) as its own process: bytes through it
arrive whole and in order in every mode (clean, delay, loss), a mode switched by its signal while a
connection is open, and it stops on SIGTERM. (How long it delays is the bench's to measure.)"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from pathlib import Path

from bench.nemesis.cluster import PROXY_SIGNALS

WAIT_S = 20.0  # the proxy listening; one exchange through it (a loss stall is at most a second)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def test_bytes_pass_whole_and_in_order_in_every_mode(tmp_path: Path) -> None:
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    target = echo.sockets[0].getsockname()[1]
    port, ready = _free_port(), tmp_path / "ready"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.nemesis.proxy", str(port), "127.0.0.1",
                                                str(target), str(ready))
    writer: asyncio.StreamWriter | None = None
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_S
        while not ready.exists():
            assert proc.returncode is None and loop.time() < deadline, "the proxy did not start listening"
            await asyncio.sleep(0.05)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for round_, mode in enumerate(("clean", "delay", "loss", "clean")):
            proc.send_signal(PROXY_SIGNALS[mode])
            sent = b"".join(f"{round_}:{i:06d};".encode() for i in range(20000))  # ~220 KiB: several chunks
            writer.write(sent)
            await writer.drain()
            got = await asyncio.wait_for(reader.readexactly(len(sent)), WAIT_S)
            assert got == sent, f"{mode}: the bytes came back changed or out of order"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), WAIT_S) == 0
    finally:
        if writer is not None:
            writer.close()
        if proc.returncode is None:
            proc.kill()
            await asyncio.wait_for(proc.wait(), WAIT_S)
        echo.close()
