"""nats-server configuration as text: one server, or one node of an N-node cluster, with optional
users and permissions (NATS's own authorization block), TLS and a websocket listener.

Pure functions of their inputs (ports, directories, hosts, users, TLS files) returning the text a
`nats-server -c FILE` reads, plus `write_atomic` to put it on disk (mode 0600: it may hold the
cluster's route password). No NATS client code and nothing from the environment here: the embedded
stack, `ktrdr up --cluster N`, docker-compose generation and the tests all render through it.
Anonymous clients are refused whenever users are given: no `no_auth_user` is ever written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ktrdr.files import atomic_write

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True)
class Limits:
    """The server-wide settings the embedded default has always run with (see the top-level nats.conf)."""

    # Progress events are small; bars and models travel as Object Store chunks, so 1 MB is plenty.
    max_payload: str = "1MB"
    max_pending: str = "64MB"
    write_deadline: str = "10s"
    max_memory_store: str = "256MB"
    max_file_store: str = "10GB"
    # Acked messages are on disk before the ack (a killed server loses nothing acked); fsync every
    # 2 minutes means a power cut of the host can lose the last unsynced writes. "always" closes
    # that at a throughput cost.
    sync_interval: str = "2m"


@dataclass(frozen=True)
class ServerUser:
    """One entry of `authorization { users = [...] }`: an NKEY public key (preferred) or a
    user + password (a bcrypt hash `$2a$...` or plain text), with allow-lists."""

    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    nkey: str | None = None
    user: str | None = None
    password: str | None = None
    # allow_responses: publish to reply subjects of messages received, at most `max` per request
    # (negative: unlimited) within `expires` (a Go duration such as "15m").
    responses_max: int | None = None
    responses_expires: str | None = None

    def __post_init__(self) -> None:
        if (self.nkey is None) == (self.user is None):
            raise ValueError("a server user needs exactly one of nkey or user")
        if self.nkey is not None and not (self.nkey.startswith("U") and len(self.nkey) == 56):
            raise ValueError("nkey must be a user public key (56 characters starting with U)")


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the PEM files `auth.make_ca_and_server_cert` writes."""

    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class Cluster:
    """This node's part of a cluster: the route listener and the other nodes' route URLs."""

    name: str
    host: str
    port: int
    routes: tuple[str, ...]
    # Route credentials: without them any local process could join as a route and read everything.
    user: str | None = None
    password: str | None = None


@dataclass(frozen=True)
class Websocket:
    host: str
    port: int


@dataclass(frozen=True)
class NodeSpec:
    """Everything one server of a local cluster needs; `cluster_nodes` builds them."""

    server_name: str
    host: str
    port: int
    store_dir: Path
    cluster: Cluster
    http_port: int | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"


def _q(value: str | Path) -> str:
    # Double-quoted strings are never variable-substituted by the config parser, so "$JS.API.>"
    # stays literal; json.dumps escapes quotes and backslashes the same way the parser reads them.
    return json.dumps(str(value))


def _list(items: Sequence[str], indent: str) -> str:
    if not items:
        return "[]"
    inner = f",\n{indent}  ".join(_q(i) for i in items)
    return f"[\n{indent}  {inner}\n{indent}]"


def _check_port(name: str, port: int) -> None:
    if not (0 < port < 65536):
        raise ValueError(f"{name} {port} is not a TCP port (1-65535)")


def authorization_block(users: Sequence[ServerUser]) -> str:
    """`authorization { users = [...] }` with per-user allow-lists. An empty publish allow-list is
    written as a deny of everything (NATS treats a missing list as allow-all)."""
    if not users:
        raise ValueError("an authorization block needs at least one user")
    lines = ["authorization {", "  users = ["]
    for u in users:
        ident = f"nkey: {_q(u.nkey)}" if u.nkey else f"user: {_q(u.user or '')}, password: {_q(u.password or '')}"
        pub = f"allow: {_list(u.publish, '        ')}" if u.publish else 'deny: [">"]'
        sub = f"allow: {_list(u.subscribe, '        ')}" if u.subscribe else 'deny: [">"]'
        lines += ["    {", f"      {ident}", "      permissions: {",
                  f"        publish: {{ {pub} }}", f"        subscribe: {{ {sub} }}"]
        if u.responses_max is not None or u.responses_expires is not None:
            parts = []
            if u.responses_max is not None:
                parts.append(f"max: {int(u.responses_max)}")
            if u.responses_expires is not None:
                parts.append(f"expires: {_q(u.responses_expires)}")
            lines.append(f"        allow_responses: {{ {', '.join(parts)} }}")
        lines += ["      }", "    }"]
    lines += ["  ]", "}"]
    return "\n".join(lines)


def _tls_block(tls: TlsFiles, *, verify_peers: bool, indent: str = "") -> str:
    out = [f"{indent}tls {{", f"{indent}  cert_file: {_q(tls.cert_file)}", f"{indent}  key_file: {_q(tls.key_file)}"]
    if verify_peers:  # routes authenticate each other with certificates from the same CA
        out += [f"{indent}  ca_file: {_q(tls.ca_file)}", f"{indent}  verify: true"]
    out += [f"{indent}  timeout: 5", f"{indent}}}"]
    return "\n".join(out)


def render(
    *,
    server_name: str,
    host: str,
    port: int,
    store_dir: Path,
    users: Sequence[ServerUser] | None = None,
    tls: TlsFiles | None = None,
    cluster: Cluster | None = None,
    websocket: Websocket | None = None,
    http_port: int | None = None,
    http_host: str = "127.0.0.1",
    limits: Limits = Limits(),
) -> str:
    """The complete config of one server. Refuses a non-loopback client or websocket listener
    without TLS (credentials would cross the network in clear)."""
    _check_port("port", port)
    if not server_name or any(c.isspace() for c in server_name):
        raise ValueError(f"server_name {server_name!r} must be a non-empty word")
    if tls is None and host not in LOOPBACK:
        raise ValueError(f"listening on {host} needs TLS (run `ktrdr auth init --tls-host {host}`)")
    out = [
        "# Generated by ktrdr.natsconf; edits are overwritten by `ktrdr up`.",
        f"server_name: {_q(server_name)}",
        f"host: {_q(host)}",
        f"port: {port}",
        f"max_payload: {limits.max_payload}",
        f"max_pending: {limits.max_pending}",
        f"write_deadline: {_q(limits.write_deadline)}",
    ]
    if http_port is not None:
        _check_port("http_port", http_port)
        # monitoring (/varz /connz /jsz /healthz): loopback unless a deployment's own network carries it
        out.append(f"http: {_q(f'{http_host}:{http_port}')}")
    out += [
        "jetstream {",
        f"  store_dir: {_q(store_dir)}",
        f"  max_memory_store: {limits.max_memory_store}",
        f"  max_file_store: {limits.max_file_store}",
        f"  sync_interval: {_q(limits.sync_interval)}",
        "}",
    ]
    if tls is not None:
        out.append(_tls_block(tls, verify_peers=False))
    if users:
        out.append(authorization_block(users))
    if cluster is not None:
        out.append(_cluster_block(cluster, tls))
    if websocket is not None:
        _check_port("websocket port", websocket.port)
        if tls is None and websocket.host not in LOOPBACK:
            raise ValueError(f"a websocket listener on {websocket.host} needs TLS")
        ws = ["websocket {", f"  host: {_q(websocket.host)}", f"  port: {websocket.port}"]
        ws.append(_tls_block(tls, verify_peers=False, indent="  ") if tls is not None else "  no_tls: true")
        out += [*ws, "}"]
    return "\n".join(out) + "\n"


def _cluster_block(c: Cluster, tls: TlsFiles | None) -> str:
    _check_port("cluster port", c.port)
    if tls is None and c.host not in LOOPBACK:
        raise ValueError(f"cluster routes on {c.host} need TLS")
    out = ["cluster {", f"  name: {_q(c.name)}", f"  listen: {_q(f'{c.host}:{c.port}')}"]
    if c.user is not None:
        out += ["  authorization {", f"    user: {_q(c.user)}", f"    password: {_q(c.password or '')}",
                "    timeout: 2", "  }"]
    if tls is not None and c.host not in LOOPBACK:
        out.append(_tls_block(tls, verify_peers=True, indent="  "))
    out.append(f"  routes: {_list(c.routes, '  ')}")
    out.append("}")
    return "\n".join(out)


def route_url(host: str, port: int, user: str | None = None, password: str | None = None) -> str:
    cred = f"{user}:{password}@" if user is not None else ""
    return f"nats-route://{cred}{host}:{port}"


def cluster_nodes(
    n: int,
    *,
    base_dir: Path,
    client_ports: Sequence[int],
    route_ports: Sequence[int],
    host: str = "127.0.0.1",
    cluster_name: str = "ktrdr",
    route_user: str | None = None,
    route_password: str | None = None,
    http_ports: Sequence[int] | None = None,
) -> list[NodeSpec]:
    """N nodes on one host (`ktrdr up --cluster N`): node i is `ktrdr-<i>`, store base_dir/n<i>,
    routes to every other node. The caller picks the ports (free ones)."""
    if not 1 <= n <= 9:
        raise ValueError("a local cluster has 1 to 9 nodes")
    if len(client_ports) != n or len(route_ports) != n or (http_ports is not None and len(http_ports) != n):
        raise ValueError(f"need {n} client ports and {n} route ports")
    nodes = []
    for i in range(n):
        routes = tuple(route_url(host, route_ports[j], route_user, route_password) for j in range(n) if j != i)
        nodes.append(NodeSpec(
            server_name=f"ktrdr-{i + 1}", host=host, port=client_ports[i], store_dir=base_dir / f"n{i + 1}",
            cluster=Cluster(cluster_name, host, route_ports[i], routes, route_user, route_password),
            http_port=http_ports[i] if http_ports is not None else None,
        ))
    return nodes


def render_node(node: NodeSpec, **kwargs: object) -> str:
    """render() for one NodeSpec; kwargs: users, tls, websocket, limits."""
    return render(server_name=node.server_name, host=node.host, port=node.port, store_dir=node.store_dir,
                  cluster=node.cluster, http_port=node.http_port, **kwargs)  # type: ignore[arg-type]


def write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Write a config atomically, mode 0600 from its creation (it may hold the route password): a
    server (re)starting at the same moment reads the old file or the new one, never half of one."""
    atomic_write(path, text, mode=mode)
