"""Where the embedded stack's processes say where they listen, and how a reader checks it.

nats-server's client URL (`run/nats.url`) and the live page's URL (`run/web.url`) are files under
KTRDR_HOME/run, written by whoever starts the process and read by `ktrdr status`, the CLI and the
page's launcher; `port_open` tells an address recorded there from one that answers, and `free_port`
finds a port for a process about to start. Standard library only: `ktrdr --help` imports it.
"""

from __future__ import annotations

import socket
from pathlib import Path

from ktrdr.config import Settings


def nats_url_file(settings: Settings) -> Path:
    """The embedded nats-server's client URL (comma-separated for a cluster)."""
    return settings.run_dir / "nats.url"


def web_url_file(settings: Settings) -> Path:
    """The live operations page's URL, written by the page once it listens."""
    return settings.run_dir / "web.url"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the kernel's choice)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
