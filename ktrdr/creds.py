"""The credentials a process connects with: nats.connect keyword arguments from the variables `ktrdr
auth env` prints or the embedded stack's files, and their checks. Split from ktrdr/auth.py (which
makes the credentials and re-exports these names) so that a connect imports only this: every verb
that connects reads it, and ktrdr.auth's server-side part (users, permissions, certificates) costs a
CLI verb's start-up (issue 23, item 5; `python -m bench.backbone cold`)."""

from __future__ import annotations

import re
import ssl
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from events import roles
from ktrdr.errors import KtrdrError

_SEED_RE = re.compile(r"^SU[A-Z2-7]{56}$")


class AuthError(KtrdrError):
    code = "auth"


def check_role(role: str) -> str:
    try:
        return roles.check_role(role)
    except ValueError as exc:
        raise AuthError(str(exc)) from None


def inbox_prefix(role: str) -> str:
    return roles.inbox_prefix(check_role(role))


def read_seed(path: Path) -> bytes:
    try:
        raw = path.read_bytes().strip()
    except OSError as exc:
        raise AuthError(f"cannot read NKEY seed {path}: {exc.strerror}", hint="run `ktrdr auth init`") from exc
    if not _SEED_RE.match(raw.decode(errors="replace")):
        raise AuthError(f"{path} does not hold a user NKEY seed (SU... 58 characters)",
                        hint="run `ktrdr auth init --force` to make new credentials")
    return raw


def auth_dir(home: Path) -> Path:
    return home / "auth"


def tls_context(ca_file: Path | None = None, *, ca_pem: str | None = None) -> ssl.SSLContext:
    """A client context that trusts only our CA and checks the server's name."""
    if (ca_file is None) == (ca_pem is None):
        raise AuthError("a TLS context needs exactly one of a CA file or CA PEM text")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None,
                                     cadata=ca_pem)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def connect_options(
    role: str,
    *,
    auth_dir: Path | None = None,
    seed_file: Path | None = None,
    seed: str | None = None,
    user: str | None = None,
    password: str | None = None,
    creds_file: Path | None = None,
    tls_ca: Path | None = None,
    tls_ca_pem: str | None = None,
) -> dict[str, Any]:
    """nats.connect() keyword arguments for a process of `role`: its inbox prefix, one way of
    authenticating (first given wins: seed, seed_file, auth_dir/<role>.nk, user+password, creds),
    and a TLS context verifying our CA when a CA is given."""
    opts: dict[str, Any] = {"inbox_prefix": inbox_prefix(role)}
    if seed is not None:
        if not _SEED_RE.match(seed.strip()):
            raise AuthError("NATS_NKEY_SEED is not a user NKEY seed (SU... 58 characters)")
        opts["nkeys_seed_str"] = seed.strip()
    elif seed_file is not None or auth_dir is not None:
        path = seed_file if seed_file is not None else auth_dir / f"{role}.nk"  # type: ignore[operator]
        read_seed(path)  # fail here, with a hint, rather than inside the connect
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise AuthError(f"{path} is readable by others (mode {mode:o})", hint=f"chmod 600 {path}")
        opts["nkeys_seed"] = str(path)
    elif user is not None:
        opts["user"], opts["password"] = user, password or ""
    elif creds_file is not None:
        opts["user_credentials"] = str(creds_file)
    if tls_ca is not None or tls_ca_pem is not None:
        opts["tls"] = tls_context(tls_ca, ca_pem=tls_ca_pem)
    return opts


def connect_options_from_env(role: str | None = None, *, home: Path | None = None,
                             env: Mapping[str, str]) -> dict[str, Any]:
    """connect_options() from the variables `ktrdr auth env` prints: KTRDR_ROLE (overrides `role`),
    NATS_NKEY_SEED, NATS_NKEY, NATS_USER/NATS_PASSWORD, NATS_CREDS, NATS_TLS_CA_PEM, NATS_TLS_CA.
    With none of the credential variables, home/auth/<role>.nk when it exists (the embedded stack)."""
    role = check_role(env.get("KTRDR_ROLE") or role or roles.CLI)

    def get(name: str) -> str | None:
        return env.get(name) or None

    local = auth_dir(home) if home is not None and (auth_dir(home) / f"{role}.nk").exists() else None
    nkey = get("NATS_NKEY")
    ca = get("NATS_TLS_CA")
    return connect_options(
        role, seed=get("NATS_NKEY_SEED"), seed_file=Path(nkey).expanduser() if nkey else None,
        user=get("NATS_USER"), password=get("NATS_PASSWORD"),
        creds_file=Path(c).expanduser() if (c := get("NATS_CREDS")) else None,
        auth_dir=local if not any(get(v) for v in ("NATS_USER", "NATS_CREDS")) else None,
        tls_ca=Path(ca).expanduser() if ca else None, tls_ca_pem=get("NATS_TLS_CA_PEM"),
    )
