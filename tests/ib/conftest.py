"""Fixtures: a SimGateway on a free port, in-process, and an IbClient (real ib_async) connected to it."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest

from ktrdr.ib import IbClient, PacingRules
from ktrdr.ib.sim import SimGateway

_client_ids = itertools.count(1)


@pytest.fixture
async def gateway() -> AsyncIterator[SimGateway]:
    gw = SimGateway(port=0)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


@pytest.fixture
async def client(gateway: SimGateway) -> AsyncIterator[IbClient]:
    c = IbClient("127.0.0.1", gateway.port, next(_client_ids), pacing=PacingRules(), connect_timeout=5.0)
    await c.connect()
    try:
        yield c
    finally:
        await c.close()
