"""Who may do what on the bus: per-role NKEY credentials, the least-privilege permission list of
each role (NATS's own `authorization` users; nothing home-made), TLS material, and the connection
options / environment lines a process of a role needs.

Layout under KTRDR_HOME/auth (directory 0700, every file 0600):
  <role>.nk             NKEY seed of the role (nats-py: `nkeys_seed=`); the server knows only the
                        public key, so the server config holds no secret of a client
  authorization.conf    the server's `authorization { users = [...] }` block (for `include`)
  route.pass            the password servers of a cluster use on their routes
  tls/                  ca.pem, ca-key.pem, server.pem, server-key.pem (when a TLS host was given)

Each role gets its own inbox prefix (`_INBOX_<role>`) and may subscribe only below it, so replies
and pull deliveries meant for one role are not readable by another. The JetStream API subjects in
the lists are the ones nats-py 2.16 sends (read from its js/manager.py, js/client.py, js/kv.py and
js/object_store.py); the security tests run every call of every role against a real server.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
import re
import secrets
import shlex
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from events import permissions as _perm
from events.permissions import DEFAULT_POOLS, KV_BUCKETS, OBJECT_BUCKETS, ROLES, STREAMS, Permissions
from ktrdr.creds import (
    AuthError,
    auth_dir,
    check_role,
    connect_options,
    connect_options_from_env,
    inbox_prefix,
    read_seed,
    tls_context,
)
from ktrdr.natsconf import ServerUser, TlsFiles, authorization_block, write_atomic

# The connect-time names live in ktrdr.creds (a connect imports only that) and are this module's too.
__all__ = ["CERT_CLOCK_SKEW", "DEFAULT_POOLS", "KV_BUCKETS", "OBJECT_BUCKETS", "ROLES", "STREAMS", "AuthError",
           "Permissions", "auth_dir", "check_role", "connect_options", "connect_options_from_env", "inbox_prefix",
           "init", "load", "permissions", "read_seed", "tls_context"]

# How far a client's clock may be behind the machine that ran `ktrdr auth init` and still accept the
# certificates: each is valid from (made - CERT_CLOCK_SKEW). A client further behind gets the TLS
# handshake's "certificate is not yet valid" in one line, naming its clock (issue 18, F13).
CERT_CLOCK_SKEW = dt.timedelta(days=2)

_HOST_RE = re.compile(r"^(?=.{1,253}$)(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")






# ------------------------------------------------------------------------------------ permissions



def permissions(role: str, *, pools: Mapping[str, Sequence[str]] = DEFAULT_POOLS) -> Permissions:
    """The allow-lists of one role (events/permissions.py). Anything not listed is refused."""
    try:
        return _perm.permissions(check_role(role), pools=pools)
    except ValueError as exc:
        raise AuthError(str(exc)) from None


# ------------------------------------------------------------------------------------ files
def _secure_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    _verify(path, 0o700)


def _verify(path: Path, mode: int) -> None:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        raise AuthError(f"{path} is a symbolic link", hint="credentials are never read through links")
    if st.st_uid != os.getuid():
        raise AuthError(f"{path} belongs to uid {st.st_uid}, not to this user ({os.getuid()})")
    if stat.S_IMODE(st.st_mode) != mode:
        raise AuthError(f"{path} has mode {stat.S_IMODE(st.st_mode):o}; expected {mode:o}")


def _secure_file(path: Path) -> None:
    """Tighten a file we own to 0600 (an editor or a copy may have loosened it), then check."""
    if path.is_symlink():
        raise AuthError(f"{path} is a symbolic link", hint="credentials are never read through links")
    os.chmod(path, 0o600)
    _verify(path, 0o600)


def _new_seed() -> bytes:
    import nkeys

    return bytes(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER))


def public_key(seed: bytes) -> str:
    import nkeys

    kp = nkeys.from_seed(bytearray(seed))
    try:
        return bytes(kp.public_key).decode()
    finally:
        kp.wipe()





@dataclass(frozen=True)
class AuthFiles:
    dir: Path
    seeds: dict[str, Path]
    public_keys: dict[str, str]
    authorization_conf: Path
    route_password_file: Path
    tls: TlsFiles | None = None
    created: tuple[str, ...] = field(default=())

    def users(self, pools: Mapping[str, Sequence[str]] = DEFAULT_POOLS) -> list[ServerUser]:
        """The server's user list: each role's public key with its permissions."""
        out = []
        for role, key in self.public_keys.items():
            p = permissions(role, pools=pools)
            out.append(ServerUser(nkey=key, publish=p.publish, subscribe=p.subscribe,
                                  responses_max=p.responses_max, responses_expires=p.responses_expires))
        return out

    def route_password(self) -> str:
        _verify(self.route_password_file, 0o600)
        return self.route_password_file.read_text().strip()





def init(
    home: Path,
    *,
    roles: Sequence[str] = ROLES,
    tls_hosts: Sequence[str] | None = None,
    force: bool = False,
    pools: Mapping[str, Sequence[str]] = DEFAULT_POOLS,
) -> AuthFiles:
    """Create (or keep) the credentials of every role under home/auth and write the server's
    authorization block. Idempotent: existing seeds are kept unless `force`. With `tls_hosts`, a
    CA and a server certificate for those names (the CA is kept across runs unless `force`, so
    clients keep trusting it; the server certificate is reissued when the host list changes)."""
    d = auth_dir(home)
    _secure_dir(d)
    seeds, keys, created = {}, {}, []
    for role in roles:
        path = d / f"{check_role(role)}.nk"
        if force or not path.exists():
            write_atomic(path, _new_seed().decode() + "\n")
            created.append(role)
        _secure_file(path)
        seeds[role], keys[role] = path, public_key(read_seed(path))
    route = d / "route.pass"
    if force or not route.exists():
        write_atomic(route, secrets.token_urlsafe(24) + "\n")
    _secure_file(route)
    tls = None
    if tls_hosts:
        tls = make_ca_and_server_cert(d / "tls", tls_hosts, force=force)
    elif (d / "tls" / "ca.pem").exists():
        tls = existing_tls(d / "tls")
    files = AuthFiles(d, seeds, keys, d / "authorization.conf", route, tls, tuple(created))
    write_atomic(files.authorization_conf, authorization_block(files.users(pools)) + "\n")
    _secure_file(files.authorization_conf)
    return files


def load(home: Path, *, roles: Sequence[str] = ROLES) -> AuthFiles:
    """The credentials `init` made, checked (modes, owner, seed format); AuthError when missing."""
    d = auth_dir(home)
    if not d.is_dir():
        raise AuthError(f"no credentials under {d}", hint="run `ktrdr auth init`")
    _verify(d, 0o700)
    seeds, keys = {}, {}
    for role in roles:
        path = d / f"{check_role(role)}.nk"
        _verify(path, 0o600)
        seeds[role], keys[role] = path, public_key(read_seed(path))
    tls = existing_tls(d / "tls") if (d / "tls" / "ca.pem").exists() else None
    return AuthFiles(d, seeds, keys, d / "authorization.conf", d / "route.pass", tls)


# ------------------------------------------------------------------------------------ TLS
def existing_tls(d: Path) -> TlsFiles:
    files = TlsFiles(d / "ca.pem", d / "server.pem", d / "server-key.pem")
    for p in (files.ca_file, files.cert_file, files.key_file, d / "ca-key.pem"):
        _verify(p, 0o600)
    return files


def _san_entries(hosts: Sequence[str]) -> list[Any]:
    from cryptography import x509

    names: list[Any] = []
    for h in dict.fromkeys(h.strip() for h in [*hosts, "localhost", "127.0.0.1"]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h.strip("[]"))))
        except ValueError:
            if not _HOST_RE.match(h):
                raise AuthError(f"{h!r} is not a host name or IP address") from None
            names.append(x509.DNSName(h))
    return names


def make_ca_and_server_cert(d: Path, hosts: Sequence[str], *, force: bool = False) -> TlsFiles:
    """A CA (kept when present) and a server certificate for `hosts` (+ localhost, 127.0.0.1),
    EC P-256, valid for server and client auth (cluster routes verify each other with it), both valid
    from CERT_CLOCK_SKEW before now."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    _secure_dir(d)
    files = TlsFiles(d / "ca.pem", d / "server.pem", d / "server-key.pem")
    ca_key_path = d / "ca-key.pem"
    sans = _san_entries(hosts)
    now = dt.datetime.now(dt.UTC)
    pem = serialization.Encoding.PEM
    no_enc = serialization.NoEncryption()
    pkcs8 = serialization.PrivateFormat.PKCS8
    if force or not (files.ca_file.exists() and ca_key_path.exists()):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ktrdr NATS CA")])
        ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
              .serial_number(x509.random_serial_number()).not_valid_before(now - CERT_CLOCK_SKEW)
              .not_valid_after(now + dt.timedelta(days=3650))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                           content_commitment=False, key_encipherment=False,
                                           data_encipherment=False, key_agreement=False, encipher_only=False,
                                           decipher_only=False), critical=True)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
        write_atomic(ca_key_path, ca_key.private_bytes(pem, pkcs8, no_enc).decode())
        write_atomic(files.ca_file, ca.public_bytes(pem).decode())
        force = True  # a new CA needs a new server certificate
    ca = x509.load_pem_x509_certificate(files.ca_file.read_bytes())
    if not force and files.cert_file.exists() and files.key_file.exists():
        cur = x509.load_pem_x509_certificate(files.cert_file.read_bytes())
        have = cur.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        # Kept while it serves these names for a while yet and a client up to CERT_CLOCK_SKEW behind
        # accepts it (one made before the skew was allowed starts 5 min before it was made).
        if set(have) == set(sans) and cur.not_valid_after_utc > now + dt.timedelta(days=30) \
                and cur.not_valid_before_utc <= now - CERT_CLOCK_SKEW:
            return existing_tls(d)
    signer = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    if not isinstance(signer, ec.EllipticCurvePrivateKey):
        raise AuthError(f"{ca_key_path} is not the EC key `ktrdr auth init` makes", hint="run it with --force")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ktrdr nats-server")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - CERT_CLOCK_SKEW).not_valid_after(now + dt.timedelta(days=825))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
            .sign(signer, hashes.SHA256()))
    write_atomic(files.key_file, key.private_bytes(pem, pkcs8, no_enc).decode())
    write_atomic(files.cert_file, cert.public_bytes(pem).decode())
    return existing_tls(d)





# ------------------------------------------------------------------------------------ clients



def env_lines(role: str, home: Path, *, url: str | None = None, inline: bool = False) -> list[str]:
    """Shell lines for `eval "$(ktrdr auth env ROLE)"`. With `inline`, the seed and the CA travel in
    the variables themselves (NATS_NKEY_SEED, NATS_TLS_CA_PEM), for a host without these files."""
    check_role(role)
    files = load(home, roles=[role])
    if url is None:
        try:
            url = (home / "run" / "nats.url").read_text().strip() or None
        except OSError:
            url = None
    lines = ["unset NATS_USER NATS_PASSWORD NATS_CREDS NATS_NKEY NATS_NKEY_SEED NATS_TLS_CA NATS_TLS_CA_PEM"]
    if url:
        lines.append(f"export NATS_URL={shlex.quote(url)}")
    if inline:
        lines.append(f"export NATS_NKEY_SEED={shlex.quote(read_seed(files.seeds[role]).decode())}")
    else:
        lines.append(f"export NATS_NKEY={shlex.quote(str(files.seeds[role]))}")
    if files.tls is not None:
        if inline:
            lines.append(f"export NATS_TLS_CA_PEM={shlex.quote(files.tls.ca_file.read_text())}")
        else:
            lines.append(f"export NATS_TLS_CA={shlex.quote(str(files.tls.ca_file))}")
    lines.append(f"export KTRDR_ROLE={shlex.quote(role)}")
    return lines


def fingerprint(pem: str) -> str:
    """Short SHA-256 of a certificate, for `ktrdr auth init` to print (compare across hosts)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    digest = x509.load_pem_x509_certificate(pem.encode()).fingerprint(hashes.SHA256())
    return base64.b16encode(digest).decode()[:16]
