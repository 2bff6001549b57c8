"""A userspace TCP delay proxy for the nemesis, for kernels without sch_netem (`tc qdisc ... netem`:
"Specified qdisc kind is unknown"). One process per link: it listens on 127.0.0.1:<port> in the
namespace it runs in and forwards each connection to <host>:<port>, both directions, through a
bounded buffer. What it does to the bytes is switched by signals, so a cluster started through it
runs clean until the fault goes in:

- SIGUSR1: delay. Every chunk read is forwarded DELAY_S +/- JITTER_S after it arrived (uniform),
  in order (a chunk never overtakes the one before it: TCP's bytes stay in sequence);
- SIGUSR2: loss, as TCP sees it: every STALL_EVERY_S (random in that range) the proxy forwards
  nothing for STALL_S (random in that range) on every connection, then goes on. Real loss makes TCP
  retransmit after a timeout, so the application sees stalls, not missing bytes;
- SIGHUP: clean again (queued chunks go out at the times they were given).
`--rate BYTES_PER_S` caps each direction of each connection (0: no cap).

Run as `python -m bench.nemesis.proxy LISTEN_PORT HOST PORT READY_FILE [--rate N]`; it writes
READY_FILE once it listens (the harness waits for it) and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
from pathlib import Path

DELAY_S, JITTER_S = 0.100, 0.050  # Jepsen's packet delay: 100 ms +/- 50 ms
STALL_EVERY_S = (2.0, 5.0)  # a stall starts this often (uniform), in loss mode
STALL_S = (0.2, 1.0)  # and lasts this long (uniform)
CHUNK = 64 * 1024  # one read
BUFFER_CHUNKS = 64  # per direction of a connection: at most 4 MiB held, then the reader waits
CONNECT_TIMEOUT_S = 5.0  # the proxy's own connection to its target


async def upstream_delay_proxy(port: int, delay_s: float) -> tuple[asyncio.Server, int]:
    """In process, for one test or bench: 127.0.0.1:<its port> -> 127.0.0.1:`port`, what the client
    sends arriving `delay_s` later, in order (a client's requests reaching the server late, as on a
    loaded host: tests/actors/test_pull.py, bench/stall.py); the answers come back at once."""
    loop = asyncio.get_running_loop()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", port)
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read_up() -> None:
            while data := await reader.read(65536):
                queue.put_nowait((loop.time() + delay_s, data))

        async def send_up() -> None:
            while True:
                at, data = await queue.get()
                await asyncio.sleep(max(at - loop.time(), 0))
                up_w.write(data)
                await up_w.drain()

        async def down() -> None:
            while data := await up_r.read(65536):
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.create_task(t()) for t in (read_up, send_up, down)]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            for w in (writer, up_w):
                w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


class Proxy:
    def __init__(self, target: tuple[str, int], rate: float = 0.0, seed: int | None = None) -> None:
        self.target = target
        self.rate = rate
        self.mode = "clean"  # "clean", "delay" or "loss"
        self.stalled_until = 0.0
        self.rng = random.Random(seed)

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        if mode != "loss":
            self.stalled_until = 0.0

    async def stalls(self) -> None:
        """In loss mode, a stall every few seconds (every connection's writers wait it out)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.rng.uniform(*STALL_EVERY_S))
            if self.mode == "loss":
                self.stalled_until = loop.time() + self.rng.uniform(*STALL_S)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.wait_for(asyncio.open_connection(*self.target), CONNECT_TIMEOUT_S)
        except (TimeoutError, OSError):
            writer.close()
            return
        pumps = [asyncio.ensure_future(self._pump(reader, up_w)), asyncio.ensure_future(self._pump(up_r, writer))]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for p in pumps:
                p.cancel()
            for w in (writer, up_w):
                w.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(BUFFER_CHUNKS)
        sender = asyncio.ensure_future(self._send(queue, dst))
        me = asyncio.current_task()
        assert me is not None
        sender.add_done_callback(lambda _t: me.cancel())  # a write that failed ends the reading too
        loop = asyncio.get_running_loop()
        last = 0.0
        try:
            while True:
                data = await src.read(CHUNK)
                due = loop.time()
                if self.mode == "delay":
                    due += self.rng.uniform(DELAY_S - JITTER_S, DELAY_S + JITTER_S)
                last = max(last, due)  # in order: never before the chunk ahead of it
                await queue.put((last, data))
                if not data:
                    await sender  # the queued bytes out, then this direction ends
                    return
        finally:
            sender.cancel()

    async def _send(self, queue: asyncio.Queue[tuple[float, bytes]], dst: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await queue.get()
            while (wait := max(due, self.stalled_until) - loop.time()) > 0:
                await asyncio.sleep(wait)  # (a stall that starts meanwhile is waited out too)
            if not data:
                with contextlib.suppress(OSError):
                    dst.write_eof()
                return
            dst.write(data)
            await dst.drain()
            if self.rate > 0:
                await asyncio.sleep(len(data) / self.rate)


async def serve(port: int, target: tuple[str, int], ready: Path, rate: float) -> None:
    proxy = Proxy(target, rate)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig, mode in ((signal.SIGUSR1, "delay"), (signal.SIGUSR2, "loss"), (signal.SIGHUP, "clean")):
        loop.add_signal_handler(sig, proxy.set_mode, mode)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", port)
    stalls = asyncio.ensure_future(proxy.stalls())
    ready.write_text("ready\n")
    try:
        await stop.wait()
    finally:
        stalls.cancel()
        server.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("listen_port", type=int)
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("ready", type=Path)
    ap.add_argument("--rate", type=float, default=0.0, help="bytes per second per direction (0: no cap)")
    args = ap.parse_args()
    asyncio.run(serve(args.listen_port, (args.host, args.port), args.ready, args.rate))


if __name__ == "__main__":
    main()
