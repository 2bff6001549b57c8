"""`ktrdr auth`: make the per-role NATS credentials (and TLS material) under KTRDR_HOME/auth, and
print the environment a process of one role needs (`eval "$(ktrdr auth env trainer)"`).

Registered on the main CLI with `app.add_typer(auth_app, name="auth")`. Exit codes: 0 done, 1 a
file problem (wrong owner, unreadable), 2 a usage error (unknown role, bad host, no credentials
yet); errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

import typer

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
    force: bool = typer.Option(False, "--force", help="Replace every key (and the CA): old credentials stop working."),
) -> None:
    """Create the credentials of every role (kept when they exist) and the server's user list."""
    from ktrdr import auth

    try:
        files = auth.init(_home(), tls_hosts=tls_host or None, force=force)
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
