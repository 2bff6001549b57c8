"""The live operations page: a small aiohttp server that follows the OPS stream over NATS and pushes
what it folds to browsers as server-sent events (ktrdr.web.server). This module is what the rest of
KTRDR needs to start and find it, and imports nothing heavy: `ktrdr status` and `ktrdr up` use it.

Start it as its own process with `spawn_argv(host, port)` (`python -m ktrdr.web --host H --port P`);
once it listens it prints `ktrdr web: serving on <url>` and records the URL in `<run_dir>/web.url`
(ktrdr.runfiles.web_url_file), which `running_url(settings)` reads back (None when nothing answers).
"""

from __future__ import annotations

import sys

from ktrdr.config import Settings
from ktrdr.runfiles import port_open, web_url_file

DEFAULT_HOST = "127.0.0.1"  # loopback: the page can cancel operations, so it is not exposed by default
DEFAULT_PORT = 8780
READY_PREFIX = "ktrdr web: serving on "


def default_port() -> int:
    """KTRDR_WEB_PORT, else 8780 (0 = any free port)."""
    from ktrdr.config import settings

    return settings().web_port


def spawn_argv(host: str = DEFAULT_HOST, port: int | None = None) -> list[str]:
    """The command line the embedded stack runs for the page (its process name contains ktrdr.web)."""
    return [sys.executable, "-m", "ktrdr.web", "--host", host, "--port", str(default_port() if port is None else port)]


def running_url(settings: Settings) -> str | None:
    """The URL of the page the stack serves, when its server answers; None otherwise."""
    try:
        url = web_url_file(settings).read_text().strip()
    except OSError:
        return None
    hostport = url.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    host = host.strip("[]")
    return url if port.isdigit() and port_open(host or DEFAULT_HOST, int(port)) else None
