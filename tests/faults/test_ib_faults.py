"""IB-side faults against the real stack: a real nats-server, the ib actor with a real ib_async client,
and the simulated gateway on its own thread (as IB Gateway is its own process).

- the gateway dies mid-load: in-flight requests fail at once, the load says it is waiting for the
  gateway, and resumes when the gateway is back on the same port, or fails naming the gateway;
- the ib actor reconnects by itself, forever, to a gateway that comes back on the same port;
- pacing history survives an ib actor restart (KV PACING): no 162 after the restart;
- requests whose caller went away never take a pacing slot nor reach IB;
- a gateway that reads a request late (busy with earlier messages, a pause) still sees the 10-minute
  window obeyed: the limiter counts each request from its answer, not from its send.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta

import pytest

from events import subjects
from events.messages import DataContext, LoadData, OperationProgress
from ktrdr.data.calendar import DEFAULT_UNIVERSE
from ktrdr.errors import DisconnectedError
from ktrdr.ib.pacing import PacingRules
from ktrdr.ib.sim.threaded import SimGatewayThread
from ktrdr.transport import IbRequester, connect
from tests.actors.test_job_manager import assert_same_bars, expected
from tests.conftest import utc
from tests.helpers import eventually, wait_for_event, wait_terminal

DISCONNECTED_STATE = "IB gateway disconnected; reconnecting"


@pytest.fixture
async def restarts(time_scale: float) -> AsyncIterator[Callable[[int], asyncio.Future[SimGatewayThread]]]:
    """restart(port) -> a new SimGatewayThread on that port (stopped at teardown)."""
    started: list[SimGatewayThread] = []

    async def restart(port: int) -> SimGatewayThread:
        gw = SimGatewayThread(port=port, time_scale=time_scale)
        await asyncio.to_thread(gw.start)
        started.append(gw)
        return gw

    yield restart  # type: ignore[misc]
    for gw in started:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(gw.stop)


def _state_is(state: str) -> Callable[[object, object], bool]:
    def check(ev: object, _view: object) -> bool:
        return (isinstance(ev, OperationProgress) and isinstance(ev.progress.context, DataContext)
                and ev.progress.context.state == state)

    return check


async def _start_load_and_kill_gateway(client, gateway, retries: int | None = None) -> tuple[LoadData, int]:
    gateway.latency_s = 0.3
    cmd = LoadData(op_id=subjects.new_op_id("data"), symbol="AAPL", timeframe="1h", mode="full",
                   start=utc(2021, 1, 1), end=utc(2023, 1, 1), retries=retries)
    await client.submit(cmd)
    await wait_for_event(client, cmd.op_id, lambda ev, v: isinstance(v.context, DataContext)
                         and v.context.segments_done >= 2, timeout=60)
    port = gateway.port
    await asyncio.to_thread(gateway.stop)  # the gateway process is gone: its sockets close
    return cmd, port


async def test_gateway_death_mid_load_says_so_and_resumes_when_it_is_back(client, data_stack, gateway, restarts):
    cmd, port = await _start_load_and_kill_gateway(client, gateway)
    await wait_for_event(client, cmd.op_id, _state_is(DISCONNECTED_STATE), timeout=30)
    await restarts(port)
    view = await wait_terminal(client, cmd.op_id, timeout=120)
    assert view.status == "completed", view.error
    assert view.result["segments_failed"] == 0
    assert_same_bars(await data_stack.read("AAPL", "1h"), expected("AAPL", "1h", utc(2021, 1, 1), utc(2023, 1, 1)))


@pytest.mark.parametrize("gateway_wait_s", [5.0])  # KTRDR_IB_GATEWAY_WAIT_S, 30 s by default
async def test_gateway_that_stays_down_fails_the_load_naming_the_gateway(client, data_stack, gateway):
    # No retry policy (--retries 0): the attempt's own failure is the load's (tests/actors/test_retries.py
    # has the default policy retrying it).
    cmd, port = await _start_load_and_kill_gateway(client, gateway, retries=0)
    await wait_for_event(client, cmd.op_id, _state_is(DISCONNECTED_STATE), timeout=30)
    view = await wait_terminal(client, cmd.op_id, timeout=150)
    assert view.status == "failed"
    assert "gateway" in view.error.lower() and f":{port}" in view.error, view.error
    assert "5 s" in view.error  # it waited the configured time, then gave up, naming it
    # What was fetched before the gateway died stays stored.
    assert 0 < len(await data_stack.read("AAPL", "1h"))


# --- the ib actor reconnects by itself, forever, to the same host:port ------------------------------
async def test_ib_actor_reconnects_to_a_gateway_restarted_on_the_same_port(start_actors, client, data_settings,
                                                                             gateway, restarts):
    (actor,) = await start_actors("ib", settings=data_settings)
    ib = IbRequester(client.nc, idle_timeout=30)
    await ib.contract("AAPL")
    port = gateway.port
    await asyncio.to_thread(gateway.stop)
    await eventually(lambda: not actor.client.is_connected, timeout=30)
    # Requests while it is down fail at once, naming the gateway; the actor says it is reconnecting.
    with pytest.raises(DisconnectedError) as err:
        await ib.bars("AAPL", "1h", utc(2024, 3, 4), utc(2024, 3, 9))
    assert "gateway" in str(err.value) and f":{port}" in str(err.value)
    assert "reconnecting" in actor.ib_state()
    again = await restarts(port)
    await eventually(lambda: actor.client.is_connected, timeout=60)
    assert actor.ib_state() == "connected"
    df, source = await ib.bars("AAPL", "1h", utc(2024, 3, 4), utc(2024, 3, 9))
    assert source == "sim" and len(df) == 35 and again.historical_requests == 1


async def test_ib_actor_started_while_the_gateway_is_down_connects_when_it_comes_up(start_actors, client,
                                                                                  data_settings, gateway, restarts):
    port = gateway.port
    await asyncio.to_thread(gateway.stop)
    (actor,) = await start_actors("ib", settings=data_settings)
    with pytest.raises(DisconnectedError):
        await IbRequester(client.nc, idle_timeout=30).contract("AAPL")
    await restarts(port)
    await eventually(lambda: actor.client.is_connected, timeout=60)
    contract, _ = await IbRequester(client.nc, idle_timeout=30).contract("AAPL")
    assert contract.symbol == "AAPL"


# --- pacing history survives a restart; abandoned requests take no pacing slot ------------------------
def _distinct_requests(n: int, offset: int = 0) -> list[tuple[str, datetime, datetime]]:
    """n requests no two alike, spread over the universe so no contract sees a burst."""
    symbols = sorted(DEFAULT_UNIVERSE)
    out = []
    for i in range(offset, offset + n):
        start = utc(2020, 1, 6) + timedelta(weeks=i)
        out.append((symbols[i % len(symbols)], start, start + timedelta(days=5)))
    return out


async def _fill_window(ib: IbRequester, rules: PacingRules) -> None:
    """Use up the whole 10-minute budget (60 requests) through the ib actor: first five per contract
    (round robin, so no contract can look like a burst however the gateway's reads bunch up), then
    the rest once those are answered."""
    reqs = _distinct_requests(rules.max_requests)
    per_wave = (rules.burst_count - 1) * len(DEFAULT_UNIVERSE)
    for wave in (reqs[:per_wave], reqs[per_wave:]):
        await asyncio.gather(*(ib.bars(s, "1h", a, b) for s, a, b in wave))


@pytest.mark.slow
@pytest.mark.parametrize("time_scale", [0.02])  # IB's 10-minute window lasts 12 s
async def test_pacing_history_survives_an_ib_actor_restart(start_actors, client, data_settings, gateway, time_scale):
    rules = PacingRules(time_scale=time_scale)
    (first,) = await start_actors("ib", settings=data_settings)
    ib = IbRequester(client.nc, idle_timeout=60)
    await _fill_window(ib, rules)
    assert gateway.historical_requests == rules.max_requests and gateway.pacing_violations == 0
    await first.stop()
    (second,) = await start_actors("ib", settings=data_settings)
    waits: list[str] = []
    (symbol, start, end), = _distinct_requests(1, offset=rules.max_requests)
    df, _ = await ib.bars(symbol, "1h", start, end, on_wait=lambda _s, why: waits.append(why))
    assert len(df) > 0
    assert gateway.pacing_violations == 0  # the restarted actor knew the window was full
    assert any(f"{rules.max_requests} requests within" in w for w in waits), waits
    assert second.client.limiter.waits >= 1


def _hold_the_gateway_loop(started: threading.Event, seconds: float) -> None:
    """Run on the gateway's loop: it reads nothing meanwhile, so what is sent waits in its socket."""
    started.set()
    time.sleep(seconds)


@pytest.mark.parametrize("time_scale", [0.005])  # the 10-minute window lasts 3 s, its margin 85 ms
async def test_the_10_minute_window_counts_from_when_the_gateway_had_the_request(start_actors, client, data_settings,
                                                                                gateway, time_scale):
    rules = PacingRules(time_scale=time_scale)
    await start_actors("ib", settings=data_settings)
    ib = IbRequester(client.nc, idle_timeout=60)
    for symbol in sorted(DEFAULT_UNIVERSE):  # contracts known: nothing but bars requests from here on
        await ib.contract(symbol)
    # The gateway is busy while the window's first requests are sent: it reads (and stamps) them 0.5 s
    # after they left, as IB Gateway does behind earlier messages or a pause of its own.
    started = threading.Event()
    busy = asyncio.ensure_future(asyncio.to_thread(gateway.call, _hold_the_gateway_loop, started, 0.5))
    assert await asyncio.to_thread(started.wait, 10)
    await _fill_window(ib, rules)
    await busy
    assert gateway.historical_requests == rules.max_requests and gateway.pacing_violations == 0
    # The next request: the gateway's window opens 0.5 s later than the send times say.
    (symbol, start, end), = _distinct_requests(1, offset=rules.max_requests)
    df, _ = await ib.bars(symbol, "1h", start, end)
    assert len(df) > 0 and gateway.pacing_violations == 0


@pytest.mark.slow
@pytest.mark.parametrize("time_scale", [0.02])
async def test_requests_whose_caller_went_away_take_no_pacing_slot(start_actors, client, data_settings, gateway,
                                                                   nats_server, time_scale):
    rules = PacingRules(time_scale=time_scale)
    (actor,) = await start_actors("ib", settings=data_settings)
    ib = IbRequester(client.nc, idle_timeout=60)
    await _fill_window(ib, rules)
    # A second client asks for 70 more: every one of them waits for the window. Then it goes away.
    gone = await connect(nats_server.url, data_settings, "client-that-goes-away")
    waiting: set[int] = set()
    abandoned = IbRequester(gone, idle_timeout=60)
    reqs = _distinct_requests(70, offset=100)
    tasks = [asyncio.create_task(abandoned.bars(s, "1h", a, b, on_wait=lambda _s, _w, i=i: waiting.add(i)))
             for i, (s, a, b) in enumerate(reqs)]
    await eventually(lambda: len(waiting) == len(reqs), timeout=30)
    await gone.close()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await eventually(lambda: actor.abandoned == len(reqs), timeout=60)
    # A caller that is still there is served with the next free slot, not after 70 abandoned requests.
    (symbol, start, end), = _distinct_requests(1, offset=rules.max_requests)
    df, _ = await ib.bars(symbol, "1h", start, end)
    assert len(df) > 0
    assert gateway.historical_requests == rules.max_requests + 1 == actor.client.limiter.recorded
    abandoned_ranges = {(s, a.strftime("%Y%m%d")) for s, a, _ in reqs}
    assert not [r for r in gateway.requests if (r.symbol, r.end[:8]) in abandoned_ranges]
    assert gateway.pacing_violations == 0


async def test_a_request_whose_caller_goes_away_mid_request_is_cancelled_at_ib(start_actors, client, data_settings,
                                                                               gateway, nats_server):
    (actor,) = await start_actors("ib", settings=data_settings)
    await IbRequester(client.nc, idle_timeout=30).contract("AAPL")
    gateway.latency_s = 60.0  # the answer would take a minute: only a cancel ends it early
    gone = await connect(nats_server.url, data_settings, "client-that-goes-away")
    task = asyncio.create_task(IbRequester(gone, idle_timeout=90).bars("AAPL", "1h", utc(2024, 3, 4), utc(2024, 3, 9)))
    await eventually(lambda: len(gateway.requests) == 1, timeout=30)
    await gone.close()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await eventually(lambda: gateway.requests[0].outcome == "cancelled", timeout=30)
    assert actor.abandoned == 1 and gateway.cancels == 1
    assert actor.client.limiter.open_requests == 0
