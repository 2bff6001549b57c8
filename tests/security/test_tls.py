"""TLS off loopback: a client trusting our CA connects; one trusting only the system CAs, and one
speaking plain TCP, are refused before any credential is looked at."""

from __future__ import annotations

import asyncio
import json
import ssl

import nats
import pytest

from ktrdr import auth
from tests.security.conftest import Server

pytestmark = pytest.mark.timeout(60)


def _opts(server: Server, **extra: object) -> dict[str, object]:
    return {"allow_reconnect": False, "max_reconnect_attempts": 0, "connect_timeout": 5, **extra}


async def test_client_with_the_ca_connects(tls_nats: Server) -> None:
    assert tls_nats.files.tls is not None
    opts = auth.connect_options("cli", auth_dir=tls_nats.files.dir, tls_ca=tls_nats.files.tls.ca_file)
    nc = await nats.connect(tls_nats.url, **_opts(tls_nats), **opts)
    try:
        assert nc.is_connected
        await nc.jetstream().account_info()
    finally:
        await nc.close()


async def test_client_with_the_ca_as_text_connects(tls_nats: Server) -> None:
    assert tls_nats.files.tls is not None
    env = {"KTRDR_ROLE": "cli", "NATS_NKEY_SEED": auth.read_seed(tls_nats.files.seeds["cli"]).decode(),
           "NATS_TLS_CA_PEM": tls_nats.files.tls.ca_file.read_text()}
    nc = await nats.connect(tls_nats.url, **_opts(tls_nats), **auth.connect_options_from_env(env=env))
    await nc.close()


async def test_client_without_the_ca_is_refused(tls_nats: Server) -> None:
    opts = auth.connect_options("cli", auth_dir=tls_nats.files.dir)
    with pytest.raises(ssl.SSLCertVerificationError):
        await nats.connect(tls_nats.url, **_opts(tls_nats), tls=ssl.create_default_context(), **opts)


async def test_client_without_tls_is_refused(tls_nats: Server) -> None:
    # nats-py upgrades to TLS when the server requires it, with the system's CAs: not ours.
    opts = auth.connect_options("cli", auth_dir=tls_nats.files.dir)
    with pytest.raises(ssl.SSLCertVerificationError):
        await nats.connect(f"nats://127.0.0.1:{tls_nats.port}", **_opts(tls_nats), **opts)


async def test_plain_tcp_is_refused(tls_nats: Server) -> None:
    """Speak the protocol in clear: the server requires TLS and drops the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", tls_nats.port)
    try:
        info = await asyncio.wait_for(reader.readline(), 10)
        assert info.startswith(b"INFO ")
        assert json.loads(info[5:])["tls_required"] is True
        writer.write(b'CONNECT {"verbose":false}\r\nPING\r\nSUB ops.> 1\r\n')
        await writer.drain()
        rest = await asyncio.wait_for(reader.read(), 10)  # until the server closes
        assert b"PONG" not in rest
    finally:
        writer.close()
