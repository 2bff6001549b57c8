"""`ktrdr auth`: make the per-role NATS credentials (and TLS material) under KTRDR_HOME/auth, and
print the environment a process of one role needs (`eval "$(ktrdr auth env trainer)"`).

Registered on the main CLI with `app.add_typer(auth_app, name="auth")`. Exit codes: 0 done, 1 a
file problem (wrong owner, unreadable), 2 a usage error (unknown role, bad host, no credentials
yet, `init --force` while the embedded stack runs); errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from ktrdr import natsconf

auth_app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                       help="Per-role NATS credentials (NKEYs) and TLS for the bus.")

ROLE_HELP = "cli, observer, orchestrator, job-manager, ib, trainer or dummy"


def _home() -> Path:
    from ktrdr.config import settings

    return settings().home


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


_USAGE_MARKERS = ("unknown role", "not a host name", "no credentials", "auth init")


def _exit_for(exc: Exception) -> typer.Exit:
    text = str(exc).replace("\n", " ")
    return _fail(text, 2 if any(m in text for m in _USAGE_MARKERS) else 1)


@auth_app.command("init")
def init_cmd(
    tls_host: list[str] = typer.Option(
        [], "--tls-host", help="A host name or IP clients use to reach the server (repeat); makes a CA and "
        "a server certificate for them. Needed whenever the server listens beyond loopback."),
    force: bool = typer.Option(False, "--force", help="Replace every key (and the CA): old credentials stop "
                               "working. Refused while the embedded stack runs (`ktrdr down` first)."),
    server_config: Path | None = typer.Option(None, "--server-config", help="Also write the server's config "
                                              "(users, permissions, TLS) here: FILE, or a folder with --cluster."),
    cluster: int = typer.Option(1, "--cluster", help="With --server-config: N nodes named nats-1..nats-N "
                                "(their configs nats-<i>.conf route to each other on port 6222)."),
    store: Path = typer.Option(Path("/data/nats"), "--store", help="With --server-config: the JetStream store."),
    port: int = typer.Option(4222, "--port", help="With --server-config: the client port."),
    monitor_port: int = typer.Option(8222, "--monitor-port", help="With --server-config: nats-server's "
                                     "monitoring port (/varz /jsz ..., on every interface of the container "
                                     "network, for the Prometheus exporter; 0: off)."),
) -> None:
    """Create the credentials of every role (kept when they exist) and the server's user list; with
    --server-config, the nats-server config of a deployment (docker-compose) too."""
    from ktrdr import auth

    if not 1 <= cluster <= 9:
        raise _fail("--cluster is 1 to 9 nodes", 2)
    if force and (running := _running_stack()):
        # New keys under a running server would lock every process out, the CLI and `ktrdr up`
        # included (issue 18, F12): the server reads its users only when it starts.
        raise _fail(f"the embedded stack under {_home()} is running ({', '.join(running)}); new keys would lock "
                    f"every process out: run `ktrdr down` first, then `ktrdr auth init --force` and `ktrdr up`", 2)
    try:
        files = auth.init(_home(), tls_hosts=tls_host or None, force=force)
        if server_config is not None:
            _write_server_configs(files, server_config, cluster, store, port, monitor_port)
    except (auth.AuthError, OSError, ValueError) as exc:
        raise _exit_for(exc) from None
    for role in auth.ROLES:
        state = "created" if role in files.created else "kept"
        typer.echo(f"{role:<13} {state:<8} {files.public_keys[role]}  {files.seeds[role]}")
    typer.echo(f"server users: {files.authorization_conf}")
    if files.tls is not None:
        fp = auth.fingerprint(files.tls.ca_file.read_text())
        typer.echo(f"TLS CA:       {files.tls.ca_file} (sha256 {fp}...); server certificate {files.tls.cert_file}")
    typer.echo("next: `ktrdr auth env ROLE` prints what a process of that role needs")


def _running_stack() -> list[str]:
    """The embedded stack's processes that run now under KTRDR_HOME (whatever NATS_URL says: they use
    these keys)."""
    from ktrdr import embedded
    from ktrdr.config import settings

    return [p.name for p in embedded.process_infos(settings()) if p.alive]


def _limits() -> natsconf.Limits:
    """The server-wide settings a rendered config gets: the fsync policy from KTRDR_NATS_SYNC."""
    from ktrdr import natsconf
    from ktrdr.config import settings

    return natsconf.Limits(sync_interval=settings().nats_sync)


def _write_server_configs(files: object, target: Path, nodes: int, store: Path, port: int,
                          monitor_port: int = 0) -> None:
    """One config (`target` a file) or nats-1..N.conf in `target` (a folder) routing to each other."""
    from ktrdr import auth, natsconf

    assert isinstance(files, auth.AuthFiles)
    limits = _limits()
    http_port = monitor_port or None  # the container network's own interface: the exporter scrapes it
    if nodes == 1:
        natsconf.write_atomic(target, natsconf.render(server_name="ktrdr", host="0.0.0.0", port=port, limits=limits,
                                                      store_dir=store, users=files.users(), tls=files.tls,
                                                      http_port=http_port, http_host="0.0.0.0"))
        typer.echo(f"server config: {target}")
        return
    password = files.route_password()
    for i in range(1, nodes + 1):
        routes = tuple(natsconf.route_url(f"nats-{j}", 6222, "route", password) for j in range(1, nodes + 1) if j != i)
        cluster = natsconf.Cluster("ktrdr", "0.0.0.0", 6222, routes, "route", password)
        path = target / f"nats-{i}.conf"
        natsconf.write_atomic(path, natsconf.render(server_name=f"nats-{i}", host="0.0.0.0", port=port,
                                                    store_dir=store, users=files.users(), tls=files.tls,
                                                    cluster=cluster, limits=limits, http_port=http_port,
                                                    http_host="0.0.0.0"))
        typer.echo(f"server config: {path}")


@auth_app.command("env")
def env_cmd(
    role: str = typer.Argument(..., help=ROLE_HELP),
    url: str | None = typer.Option(None, "--url", help="NATS_URL to print (default: the embedded server's, if known)."),
    inline: bool = typer.Option(False, "--inline", help="Put the seed and the CA in the variables themselves, "
                                "for a host without these files (treat the output as a secret)."),
) -> None:
    """Print shell lines for `eval "$(ktrdr auth env ROLE)"`."""
    from ktrdr import auth

    try:
        lines = auth.env_lines(role, _home(), url=url, inline=inline)
    except (auth.AuthError, OSError, ValueError) as exc:
        raise _exit_for(exc) from None
    typer.echo("\n".join(lines))


@auth_app.command("server-config")
def server_config_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the nats-server config (mode 0600)."),
    listen: str = typer.Option("0.0.0.0", "--listen", help="Address the server listens on."),
    port: int = typer.Option(4222, "--port", help="Client port."),
    store: Path = typer.Option(Path("/data/nats"), "--store", help="JetStream store directory."),
    name: str = typer.Option("ktrdr", "--name", help="Server name (cluster: each node its own)."),
    route: list[str] = typer.Option([], "--route", help="host:port of another cluster node (repeat); with "
                                    "routes the server joins a cluster, listening for routes on --route-port."),
    route_port: int = typer.Option(6222, "--route-port", help="Port this node takes routes on."),
) -> None:
    """Render the nats-server config for a deployment (docker-compose, a server of your own) from the
    credentials `ktrdr auth init` made: every role's user and permissions, TLS beyond loopback, and
    for a cluster the routes (with the route password)."""
    from ktrdr import auth, natsconf

    if not 0 < port < 65536 or not 0 < route_port < 65536:
        raise _fail("ports are 1..65535", 2)
    try:
        files = auth.load(_home())
        cluster = None
        if route:
            routes = []
            for r in route:
                host, _, rport = r.rpartition(":")
                if not host or not rport.isdigit():
                    raise _fail(f"--route {r[:80]!r}: expected host:port", 2)
                routes.append(natsconf.route_url(host, int(rport), "route", files.route_password()))
            cluster = natsconf.Cluster("ktrdr", listen, route_port, tuple(routes), "route", files.route_password())
        text = natsconf.render(server_name=name, host=listen, port=port, store_dir=store, users=files.users(),
                               tls=files.tls, cluster=cluster, limits=_limits())
        natsconf.write_atomic(out, text)
    except (auth.AuthError, OSError, ValueError) as exc:
        raise _exit_for(exc) from None
    typer.echo(f"wrote {out} ({len(files.public_keys)} users{', TLS' if files.tls else ''}"
               f"{f', cluster of {len(route) + 1}' if route else ''})")
