"""The ib actor between NATS and the simulated gateway (real ib_async client inside the actor)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from ktrdr.errors import UnknownSymbolError
from ktrdr.ib.sim import SimGateway
from ktrdr.ib.sim.data import generate_bars
from ktrdr.transport import IbRequester
from tests.conftest import make_settings
from tests.helpers import scrape, value


@pytest.fixture
async def gateway() -> AsyncIterator[SimGateway]:
    gw = SimGateway(port=0)
    await gw.start()
    yield gw
    await gw.stop()


@pytest.fixture
def ib_settings(settings, gateway):
    return make_settings(settings.home, settings.nats_url, ib_port=gateway.port, ib_client_id=7)


async def test_ib_actor_serves_contracts_heads_and_bars_over_nats(start_actors, client, ib_settings, gateway):
    (actor,) = await start_actors("ib", settings=ib_settings)
    before = await scrape(actor.metrics_url)
    ib = IbRequester(client.nc, idle_timeout=20)
    contract, source = await ib.contract("EUR.USD")
    assert contract.sec_type == "CASH" and source == "sim"
    head = await ib.head("AAPL", "1h")
    assert head is not None and head.year < 2020
    start, end = datetime(2024, 3, 4, tzinfo=UTC), datetime(2024, 3, 9, tzinfo=UTC)
    df, source = await ib.bars("AAPL", "1h", start, end)
    assert source == "sim" and len(df) == 5 * 7  # five sessions of seven 1h bars
    from ktrdr.data.calendar import lookup

    expected = generate_bars(lookup("AAPL"), "1h", start, end, seed=0)
    assert (df.index == expected.index).all()
    assert (df["close"].to_numpy() == expected["close"].to_numpy()).all()
    after = await scrape(actor.metrics_url)  # /metrics: each request counted by verb and outcome
    for verb in ("contract", "head", "bars"):
        assert value(after, "ktrdr_ib_requests_total", verb=verb, outcome="ok") == value(
            before, "ktrdr_ib_requests_total", verb=verb, outcome="ok") + 1


async def test_unknown_symbol_comes_back_as_a_typed_error(start_actors, client, ib_settings):
    (actor,) = await start_actors("ib", settings=ib_settings)
    errors = {"verb": "contract", "outcome": "error"}
    before = value(await scrape(actor.metrics_url), "ktrdr_ib_requests_total", **errors)
    ib = IbRequester(client.nc, idle_timeout=20)
    with pytest.raises(UnknownSymbolError) as err:
        await ib.contract("NOPE")
    assert err.value.ib_code == 200 and "NOPE" in str(err.value)
    assert value(await scrape(actor.metrics_url), "ktrdr_ib_requests_total", **errors) == before + 1


async def test_malformed_ib_request_is_answered_and_the_actor_keeps_serving(start_actors, client, ib_settings):
    await start_actors("ib", settings=ib_settings)
    reply = await client.nc.request("ib.bars", b"{garbage", timeout=10)
    assert b'"ok":false' in reply.data and b"malformed" in reply.data
    contract, _ = await IbRequester(client.nc, idle_timeout=20).contract("MSFT")
    assert contract.symbol == "MSFT"


async def test_a_data_load_goes_to_the_ib_pool_it_names(start_actors, settings, client):
    """Two IB accounts/gateways, one ib actor in each pool: `--on acct2` reaches only the second."""
    from events import subjects
    from events.messages import LoadData
    from ktrdr.ib.sim.threaded import SimGatewayThread
    from tests.helpers import wait_terminal

    with SimGatewayThread(port=0, time_scale=0.25) as gw1, SimGatewayThread(port=0, time_scale=0.25) as gw2:
        for pool, gw, cid in (("acct1", gw1, 21), ("acct2", gw2, 22)):
            await start_actors("ib", settings=make_settings(settings.home, settings.nats_url, ib_port=gw.port,
                                                            ib_client_id=cid, pools=[pool], ib_time_scale=0.25))
        await start_actors("orchestrator", "job-manager",
                           settings=make_settings(settings.home, settings.nats_url, pools=["acct1", "acct2"]))
        for pool, gw, other, sym in (("acct2", gw2, gw1, "AAPL"), ("acct1", gw1, gw2, "MSFT")):
            seen_here, seen_there = len(gw.requests), len(other.requests)
            cmd = LoadData(op_id=subjects.new_op_id("data"), symbol=sym, mode="full", pool=pool,
                           start=datetime(2024, 1, 2, tzinfo=UTC), end=datetime(2024, 2, 1, tzinfo=UTC))
            await client.submit(cmd)
            view = await wait_terminal(client, cmd.op_id, timeout=90)
            assert view.status == "completed", view.error
            assert len(gw.requests) > seen_here and len(other.requests) == seen_there, (pool, view.result)
        # presence entries expire with their TTL: on a loaded host a heartbeat can be late, and the
        # list empty for a moment (seen once); both pools must be announced again within the bound
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            pools = {hb.actor: hb.pools for hb in await client.live_actors() if hb.role == "ib"}
            announced = sorted(p for ps in pools.values() for p in ps if p != "any")
            if announced == ["acct1", "acct2"] or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.1)
        assert announced == ["acct1", "acct2"], pools
