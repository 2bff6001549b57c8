"""Reading stored events back (ktrdr/transport/replay.py) against a real nats-server: every event in
stream order, an on_msg that raises stops the read without hurting the connection, concurrent reads
on one connection, and a slow consumer of stream_events holds a bounded backlog (the server's
flow-control window), not every stored event. The dispatch hook on nats-py's private _process_msg is
used only within the nats-py range pyproject declares; outside it the public path reads the same."""

from __future__ import annotations

import asyncio
import contextlib
import re
import tomllib
from pathlib import Path

import pytest

from events import subjects
from events.codec import decode_event, encode
from events.messages import DummyContext, OperationProgress, ProgressState
from ktrdr.client import Client
from ktrdr.ops import OperationView, fold
from ktrdr.transport import read_events
from ktrdr.transport import replay as replay_mod
from ktrdr.transport.replay import stream_events


async def _publish(c: Client, op_id: str, n: int) -> None:
    subj = subjects.ops(op_id, "progress")
    for i in range(n):
        ev = OperationProgress(op_id=op_id, progress=ProgressState(
            percentage=i / n * 100, message=f"step {i}", current_step=i, total_steps=n,
            context=DummyContext(iteration=i, iterations=n)))
        # with the header every stored event carries (the read never parses it)
        await c.js.publish_async(subj, encode(ev), headers={"Nats-Msg-Id": f"{op_id}.{i}"})
    await c.js.publish_async_completed()


async def test_read_events_hands_every_event_in_order_and_restores_the_connection(client: Client):
    await client.ensure_streams()
    op_id = subjects.new_op_id("dummy")
    await _publish(client, op_id, 5000)
    steps: list[int] = []
    view = OperationView(op_id=op_id)

    def on_msg(subject: str, data: bytes) -> None:
        assert subject == subjects.ops(op_id, "progress")
        ev = decode_event(data)
        fold(view, ev)
        steps.append(ev.progress.current_step)

    assert await read_events(client.js, [subjects.ops(op_id)], on_msg) == 5000
    assert steps == list(range(5000)) and view.events == 5000
    assert "_process_msg" not in vars(client.nc)  # the dispatch hook is gone with the last read
    # the ordinary paths still work on the same connection
    assert len(await replay_mod.read_operation(client.js, op_id)) == 5000


async def test_no_stream_reads_nothing(client: Client):
    assert await read_events(client.js, [subjects.ops(subjects.new_op_id("dummy"))], lambda s, d: None) == 0
    assert [x async for x in stream_events(client.js, [subjects.ops(subjects.new_op_id("dummy"))])] == []


async def test_an_error_in_on_msg_stops_the_read_and_the_connection_lives_on(client: Client):
    await client.ensure_streams()
    op_id = subjects.new_op_id("dummy")
    await _publish(client, op_id, 2000)
    seen = 0

    def on_msg(_s: str, _d: bytes) -> None:
        nonlocal seen
        seen += 1
        if seen == 10:
            raise BrokenPipeError("reader went away")

    with pytest.raises(BrokenPipeError):
        await read_events(client.js, [subjects.ops(op_id)], on_msg)
    assert seen == 10 and client.nc is not None and client.nc.is_connected
    assert len(await replay_mod.read_operation(client.js, op_id)) == 2000


async def test_concurrent_reads_on_one_connection(client: Client):
    await client.ensure_streams()
    ops = [subjects.new_op_id("dummy") for _ in range(3)]
    for i, op_id in enumerate(ops):
        await _publish(client, op_id, 1000 * (i + 1))
    counts = await asyncio.gather(*(read_events(client.js, [subjects.ops(o)], lambda s, d: None) for o in ops))
    assert counts == [1000, 2000, 3000]


async def test_a_slow_consumer_holds_a_bounded_backlog(client: Client, monkeypatch):
    """64 MB stored; a consumer that yields to the loop between events. Flow control is answered
    only once it has caught up, so the server stops at its window (32 MB in nats-server) instead of
    pushing everything into this process."""
    await client.ensure_streams()
    op_id, n, size = subjects.new_op_id("dummy"), 8000, 8192
    subj = subjects.ops(op_id, "progress")
    for i in range(n):
        await client.js.publish_async(subj, i.to_bytes(4, "big") * (size // 4))
    await client.js.publish_async_completed()
    reads: list[replay_mod._PushRead] = []
    real_start = replay_mod._PushRead.start

    async def start(self: replay_mod._PushRead) -> bool:
        reads.append(self)
        return await real_start(self)

    monkeypatch.setattr(replay_mod._PushRead, "start", start)
    got, backlog = 0, 0
    async with contextlib.aclosing(stream_events(client.js, [subjects.ops(op_id)])) as stream:
        async for _s, data, _proof in stream:
            assert int.from_bytes(data[:4], "big") == got
            got += 1
            backlog = max(backlog, reads[0].delivered - reads[0].consumed)
            for _ in range(3):
                await asyncio.sleep(0)
    assert got == n
    assert backlog * size < 48 << 20, backlog  # bounded by the window, not by what is stored


def test_the_patched_nats_py_range_is_pyprojects() -> None:
    """The hook's range and the dependency's range are one declaration seen from two places."""
    deps = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    spec = next(d for d in deps["dependencies"] if re.match(r"nats-py\b", d))
    bounds = re.fullmatch(r"nats-py>=(\d+)\.(\d+),<(\d+)\.(\d+)", spec)
    assert bounds is not None, spec
    lo_major, lo_minor, hi_major, hi_minor = (int(x) for x in bounds.groups())
    assert ((lo_major, lo_minor), (hi_major, hi_minor)) == replay_mod.NATS_PY_PATCHED
    assert replay_mod.FAST_PATH  # the installed nats-py is in the range
    assert [replay_mod.patch_applies(v) for v in ("2.8.4", "2.9.0", "2.16.0", "2.17.0", "3.0.0", "2.16.0rc1")] \
        == [False, True, True, False, False, True]
    assert not replay_mod.patch_applies("main")


async def test_outside_the_range_the_public_path_reads_every_event_in_order(client: Client, monkeypatch):
    monkeypatch.setattr(replay_mod, "FAST_PATH", False)
    await client.ensure_streams()
    op_id = subjects.new_op_id("dummy")
    await _publish(client, op_id, 3000)
    steps: list[int] = []

    def on_msg(subject: str, data: bytes) -> None:
        assert "_process_msg" not in vars(client.nc)  # nats-py's dispatch untouched
        assert subject == subjects.ops(op_id, "progress")
        steps.append(decode_event(data).progress.current_step)

    assert await read_events(client.js, [subjects.ops(op_id)], on_msg) == 3000
    assert steps == list(range(3000))
    paced: list[int] = []
    async with contextlib.aclosing(stream_events(client.js, [subjects.ops(op_id)])) as stream:
        async for _s, data, _proof in stream:
            paced.append(decode_event(data).progress.current_step)
            if len(paced) % 100 == 0:
                await asyncio.sleep(0)  # a consumer with a pace of its own
    assert paced == list(range(3000))
    assert [e.progress.current_step for e in await replay_mod.read_operation(client.js, op_id)] == list(range(3000))
