"""One NATS connection per process or actor: it reconnects forever (a server restart or the loss of a
cluster node is not fatal) and carries the credentials from Settings.

A first connect that fails says why in one line (ConnectRefused): nats-py reports the server's
`-ERR 'Authorization Violation'` and a failed TLS handshake only through the error callback and then
raises a bare NoServersError, so `connect` keeps the last such cause it saw and names it (issue 18,
F12, F13: keys the server does not know; a clock outside the certificates' validity)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.errors import AuthorizationError, NoServersError

from events import roles
from ktrdr.config import MAX_OUTSTANDING_PINGS, Settings
from ktrdr.errors import KtrdrError, NatsUnavailableError


class ConnectRefused(KtrdrError):
    """The first connection failed: the server refused the credentials, the TLS handshake failed, or no
    server answered. The CLI prints it in one line and exits 1."""

    code = "connect"


def server_list(url: str | list[str]) -> list[str]:
    """NATS_URL may name several servers (a cluster), comma-separated."""
    urls = url if isinstance(url, list) else url.split(",")
    out = [u.strip() for u in urls if u.strip()]
    if not out:
        raise ValueError("no NATS server URL given")
    return out


def _is_auth(exc: BaseException) -> bool:
    return isinstance(exc, AuthorizationError) or "authorization violation" in str(exc).lower()


def refused(exc: BaseException, cause: BaseException | None, role: str, servers: list[str]) -> ConnectRefused:
    """The one-line error for a first connect to `servers` that raised `exc` after the error callback
    last saw `cause`."""
    where = ", ".join(servers)[:200]
    seen = cause if cause is not None else exc
    if _is_auth(seen):
        return ConnectRefused(
            f"NATS at {where} refused the credentials of role {role} (Authorization Violation)",
            hint="the server's users come from another `ktrdr auth init`, or NATS_NKEY/NATS_NKEY_SEED is not this "
                 "server's; for the embedded stack `ktrdr down` then `ktrdr up` makes the server take the keys on disk")
    if isinstance(seen, ssl.SSLError):
        detail = str(getattr(seen, "verify_message", None) or getattr(seen, "reason", None) or seen)
        if "not yet valid" in detail or "expired" in detail:
            from ktrdr.auth import CERT_CLOCK_SKEW

            return ConnectRefused(
                f"TLS handshake with NATS at {where} failed: {detail}; is this machine's clock right? it reads "
                f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
                hint="set the clock (NTP); the certificates `ktrdr auth init` makes accept a clock up to "
                     f"{CERT_CLOCK_SKEW.days} days behind the machine that made them")
        return ConnectRefused(f"TLS handshake with NATS at {where} failed: {detail}",
                              hint="check NATS_TLS_CA / NATS_TLS_CA_PEM and the server's name in NATS_URL")
    text = str(seen) or type(seen).__name__
    return ConnectRefused(f"cannot reach NATS at {where} ({text[:200]}); is the server running?",
                          hint="try `ktrdr status`")


async def connect(url: str | list[str], settings: Settings, name: str, *, role: str = roles.CLI, **kwargs: Any) -> NATS:
    """Connect to `url` (or the first reachable of a list) as `name`, with the credentials of
    `role`; kwargs override the defaults. A first connect that fails raises ConnectRefused."""
    opts: dict[str, Any] = {
        "servers": server_list(url),
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 2,
        "allow_reconnect": True,
        "ping_interval": settings.ping_interval_s,  # a server that went silent is left for another
        "max_outstanding_pings": MAX_OUTSTANDING_PINGS,
    }
    opts.update(settings.connect_options(role))
    opts.update(kwargs)
    causes: list[BaseException] = []
    refused_for_good = asyncio.Event()
    theirs: Callable[[Exception], Awaitable[None]] | None = opts.get("error_cb")

    async def on_error(exc: Exception) -> None:
        # Only the reasons a person can act on are kept: the last one names the refusal.
        if _is_auth(exc) or isinstance(exc, ssl.SSLError):
            causes[:] = [exc]
        if _is_auth(exc) or isinstance(exc, ssl.SSLCertVerificationError):
            refused_for_good.set()
        if theirs is not None:
            await theirs(exc)

    opts["error_cb"] = on_error
    attempt = asyncio.ensure_future(nats.connect(**opts))
    refusal = asyncio.ensure_future(refused_for_good.wait())
    try:
        await asyncio.wait({attempt, refusal}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        refusal.cancel()
        if not attempt.done():
            # Keys the server does not know, or a certificate this client refuses (its clock, its CA),
            # are refused on every retry (and after a failed TLS handshake nats-py 2.16 waits forever
            # for the stream to close): stop at the first refusal, and say why.
            attempt.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(attempt, 2.0)
    if attempt.cancelled():
        raise refused(causes[-1], causes[-1], role, opts["servers"])
    try:
        return attempt.result()
    except (NoServersError, OSError, TimeoutError, AuthorizationError, ssl.SSLError) as exc:
        raise refused(exc, causes[-1] if causes else None, role, opts["servers"]) from None


def _unreachable_types() -> tuple[type[BaseException], ...]:
    from nats import errors as e
    from nats.js import errors as js

    return (e.TimeoutError, e.NoRespondersError, e.ConnectionClosedError, e.ConnectionReconnectingError,
            e.StaleConnectionError, e.NoServersError, e.OutboundBufferLimitError, e.FlushTimeoutError,
            js.ServiceUnavailableError)


def unavailable(exc: BaseException) -> NatsUnavailableError | None:
    """The typed, retryable error for an exception raised because NATS could not be reached (in its
    cause chain: nats-py's timeout of a request, no responders, a closed or reconnecting
    connection, JetStream's 503), or None when it is anything else."""
    kinds = _unreachable_types()
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, kinds):
            what = str(cur) or type(cur).__name__
            return NatsUnavailableError(f"NATS unavailable: {type(cur).__name__}: {what}"[:500],
                                        hint="the step is retried once the server answers again")
        cur = cur.__cause__ or cur.__context__
    return None
