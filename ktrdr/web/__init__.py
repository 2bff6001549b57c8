"""The live operations page: a small aiohttp server that follows the OPS stream over NATS and pushes
what it folds to browsers as server-sent events (ktrdr.web.server). This module is what the rest of
KTRDR needs to start and find it, and imports nothing heavy: `ktrdr status` and `ktrdr up` use it.

Start it as its own process with `spawn_argv(host, port)` (`python -m ktrdr.web --host H --port P`);
once it listens it prints `ktrdr web: serving on <url>` and records the URL in `<run_dir>/web.url`
(ktrdr.runfiles.web_url_file), which `running_url(settings)` reads back (None when nothing answers).

Who may cancel (issue 18, F15): anyone who can open a socket on this machine can read the page, so it
carries no secret. The server keeps a secret in `<run_dir>/web.secret` (0600: this user's alone);
`login_url(settings)` (what `ktrdr web` prints and opens) signs a one-time code with it, and the
server exchanges the code for an HttpOnly, SameSite=Strict session cookie. Without that cookie the
page is read-only and a cancel is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import sys
import time
from pathlib import Path

from ktrdr.config import Settings
from ktrdr.runfiles import port_open, web_url_file

DEFAULT_HOST = "127.0.0.1"  # loopback: the page can cancel operations, so it is not exposed by default
DEFAULT_PORT = 8780
READY_PREFIX = "ktrdr web: serving on "
MAX_STREAMS = 64  # live pages open at once on one server (--max-streams)
# Live pages one client (a session cookie; without one, a peer address) holds at once, so that one
# local process cannot take every slot (issue 18, F15). Browsers open at most 6 per host anyway.
MAX_STREAMS_PER_CLIENT = 16
LOGIN_CODE_TTL_S = 300  # a login link works once, within this many seconds of `ktrdr web` printing it
SESSION_COOKIE = "ktrdr_session"
LOGIN_PATH = "/login"


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


def web_secret_file(settings: Settings) -> Path:
    """The running page's secret (0600), from which login codes are made."""
    return settings.run_dir / "web.secret"


def write_secret(settings: Settings) -> bytes:
    """A fresh secret for a page about to serve, in a file only this user can read."""
    secret = secrets.token_bytes(32)
    path = web_secret_file(settings)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret.hex() + "\n")
    return secret


def read_secret(settings: Settings) -> bytes | None:
    """The running page's secret; None when there is none, or when the file is not this user's alone."""
    path = web_secret_file(settings)
    try:
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
            return None
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _mac(secret: bytes, body: str) -> str:
    return hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()[:32]


def make_login_code(secret: bytes, now: float | None = None) -> str:
    """`<nonce>.<expiry>.<mac>`: good once, for LOGIN_CODE_TTL_S (the server remembers used nonces)."""
    body = f"{secrets.token_urlsafe(12)}.{int((now or time.time()) + LOGIN_CODE_TTL_S)}"
    return f"{body}.{_mac(secret, body)}"


def check_login_code(secret: bytes, code: str, now: float | None = None) -> tuple[str, float] | None:
    """(nonce, expiry) of a code this secret made that has not expired; None for anything else."""
    if len(code) > 128:
        return None
    nonce, _, rest = code.partition(".")
    expiry, _, mac = rest.partition(".")
    if not nonce or not expiry.isdigit() or not hmac.compare_digest(mac, _mac(secret, f"{nonce}.{expiry}")):
        return None
    if int(expiry) < (now or time.time()):
        return None
    return nonce, float(expiry)


def login_url(settings: Settings) -> str | None:
    """The running page's URL with a fresh one-time login code (None when no page runs or its secret
    cannot be read): opening it gives the browser the cookie that may cancel."""
    url = running_url(settings)
    secret = read_secret(settings)
    if url is None or secret is None:
        return None
    return f"{url.rstrip('/')}{LOGIN_PATH}?code={make_login_code(secret)}"
