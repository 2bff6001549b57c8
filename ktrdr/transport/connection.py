"""One NATS connection per process or actor: it reconnects forever (a server restart or the loss of a
cluster node is not fatal) and carries the credentials from Settings."""

from __future__ import annotations

from typing import Any

import nats
from nats.aio.client import Client as NATS

from events import roles
from ktrdr.config import Settings


def server_list(url: str | list[str]) -> list[str]:
    """NATS_URL may name several servers (a cluster), comma-separated."""
    urls = url if isinstance(url, list) else url.split(",")
    out = [u.strip() for u in urls if u.strip()]
    if not out:
        raise ValueError("no NATS server URL given")
    return out


async def connect(url: str | list[str], settings: Settings, name: str, *, role: str = roles.CLI, **kwargs: Any) -> NATS:
    """Connect to `url` (or the first reachable of a list) as `name`, with the credentials of
    `role`; kwargs override the defaults."""
    opts: dict[str, Any] = {
        "servers": server_list(url),
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 2,
        "allow_reconnect": True,
    }
    opts.update(settings.connect_options(role))
    opts.update(kwargs)
    return await nats.connect(**opts)
