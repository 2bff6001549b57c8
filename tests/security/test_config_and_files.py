"""Rendered configs are accepted by nats-server itself (`-t`), refuse to expose a listener without
TLS, and carry no anonymous user; credential files are 0600 in a 0700 directory, kept across runs,
replaced only when forced; `ktrdr auth` prints what a host needs and never a traceback."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ktrdr import auth, natsconf
from ktrdr.cli.auth_commands import auth_app
from tests.security.conftest import nats_server_binary

pytestmark = pytest.mark.timeout(60)


def server_accepts(text: str, tmp_path: Path) -> None:
    conf = tmp_path / "check.conf"
    natsconf.write_atomic(conf, text)
    run = subprocess.run([nats_server_binary(), "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stdout + run.stderr


def test_single_server_config_with_everything_is_valid(tmp_path: Path) -> None:
    files = auth.init(tmp_path / "home", tls_hosts=["nats.example.org", "10.1.2.3"])
    text = natsconf.render(server_name="one", host="0.0.0.0", port=4222, store_dir=tmp_path / "store",
                           users=files.users(), tls=files.tls, websocket=natsconf.Websocket("0.0.0.0", 8443),
                           http_port=8222)
    server_accepts(text, tmp_path)
    assert "no_auth_user" not in text
    assert "max_payload: 1MB" in text and 'sync_interval: "2m"' in text
    assert text.count("nkey:") == len(auth.ROLES)


def test_cluster_node_configs_are_valid(tmp_path: Path) -> None:
    files = auth.init(tmp_path / "home")
    nodes = natsconf.cluster_nodes(3, base_dir=tmp_path / "nats", client_ports=[14222, 14223, 14224],
                                   route_ports=[16222, 16223, 16224], route_user="route",
                                   route_password=files.route_password())
    names = set()
    for node in nodes:
        text = natsconf.render_node(node, users=files.users())
        server_accepts(text, tmp_path)
        names.add(node.server_name)
        assert text.count("nats-route://route:") == 2  # the two other nodes, with route credentials
    assert len(names) == 3 and len({n.store_dir for n in nodes}) == 3


def test_listeners_beyond_loopback_need_tls(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs TLS"):
        natsconf.render(server_name="x", host="0.0.0.0", port=4222, store_dir=tmp_path)
    with pytest.raises(ValueError, match="needs TLS"):
        natsconf.render(server_name="x", host="127.0.0.1", port=4222, store_dir=tmp_path,
                        websocket=natsconf.Websocket("0.0.0.0", 8080))
    with pytest.raises(ValueError, match="need TLS"):
        natsconf.render(server_name="x", host="127.0.0.1", port=4222, store_dir=tmp_path,
                        cluster=natsconf.Cluster("c", "10.0.0.1", 6222, ()))
    with pytest.raises(ValueError, match="port"):
        natsconf.render(server_name="x", host="127.0.0.1", port=70000, store_dir=tmp_path)


def test_quoting_keeps_subjects_literal(tmp_path: Path) -> None:
    user = natsconf.ServerUser(user="a", password='p"q\\r', publish=("$JS.API.>",), subscribe=())
    text = natsconf.render(server_name="q", host="127.0.0.1", port=4222, store_dir=tmp_path, users=[user])
    server_accepts(text, tmp_path)
    assert '"$JS.API.>"' in text and 'deny: [">"]' in text


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_init_is_private_and_idempotent(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = auth.init(home, tls_hosts=["host-a"])
    assert _mode(first.dir) == 0o700 and _mode(first.dir / "tls") == 0o700
    private = [*first.seeds.values(), first.authorization_conf, first.route_password_file]
    assert first.tls is not None
    private += [first.tls.ca_file, first.tls.cert_file, first.tls.key_file, first.dir / "tls" / "ca-key.pem"]
    assert all(_mode(p) == 0o600 for p in private)
    assert set(first.created) == set(auth.ROLES)
    ca = first.tls.ca_file.read_bytes()
    cert = first.tls.cert_file.read_bytes()
    os.chmod(first.seeds["trainer"], 0o644)  # loosened by hand: tightened again
    again = auth.init(home, tls_hosts=["host-a"])
    assert again.created == () and again.public_keys == first.public_keys
    assert _mode(again.seeds["trainer"]) == 0o600
    assert again.tls is not None and again.tls.cert_file.read_bytes() == cert
    moved = auth.init(home, tls_hosts=["host-b"])  # new host: new server cert, same CA
    assert moved.tls is not None and moved.tls.ca_file.read_bytes() == ca
    assert moved.tls.cert_file.read_bytes() != cert
    forced = auth.init(home, force=True)
    assert set(forced.created) == set(auth.ROLES)
    assert all(forced.public_keys[r] != first.public_keys[r] for r in auth.ROLES)
    assert auth.load(home).public_keys == forced.public_keys


def test_loose_or_foreign_files_are_refused(tmp_path: Path) -> None:
    files = auth.init(tmp_path / "home", roles=["cli"])
    os.chmod(files.seeds["cli"], 0o640)
    with pytest.raises(auth.AuthError, match="mode 640"):
        auth.load(tmp_path / "home", roles=["cli"])
    with pytest.raises(auth.AuthError, match="readable by others"):
        auth.connect_options("cli", auth_dir=files.dir)
    files.seeds["cli"].write_text("not a seed\n")
    os.chmod(files.seeds["cli"], 0o600)
    with pytest.raises(auth.AuthError, match="NKEY seed"):
        auth.connect_options("cli", auth_dir=files.dir)
    with pytest.raises(auth.AuthError, match="unknown role"):
        auth.connect_options("root")
    with pytest.raises(auth.AuthError, match="not a host name"):
        auth.make_ca_and_server_cert(tmp_path / "tls", ["bad host/name"])


def test_env_lines_are_the_whole_setup(tmp_path: Path) -> None:
    home = tmp_path / "home"
    files = auth.init(home, tls_hosts=["nats.lan"])
    lines = auth.env_lines("trainer", home, url="tls://nats.lan:4222")
    env = {}
    for line in lines:
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            env[key] = shlex.split(value)[0]
    assert env["NATS_URL"] == "tls://nats.lan:4222"
    assert env["NATS_NKEY"] == str(files.seeds["trainer"])
    assert files.tls is not None and env["NATS_TLS_CA"] == str(files.tls.ca_file)
    assert env["KTRDR_ROLE"] == "trainer"
    opts = auth.connect_options_from_env(env=env)
    assert opts["inbox_prefix"] == "_INBOX_trainer" and opts["nkeys_seed"] == str(files.seeds["trainer"])
    assert "tls" in opts
    inline = auth.env_lines("trainer", home, inline=True)
    assert any(line.startswith("export NATS_NKEY_SEED=SU") for line in inline)
    assert any("BEGIN CERTIFICATE" in line for line in inline)


def test_embedded_default_finds_the_local_seed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    files = auth.init(home)
    opts = auth.connect_options_from_env("job-manager", home=home, env={})
    assert opts == {"inbox_prefix": "_INBOX_job-manager", "nkeys_seed": str(files.seeds["job-manager"])}


def test_cli_init_and_env(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"KTRDR_HOME": str(tmp_path / "home")}
    first = runner.invoke(auth_app, ["init", "--tls-host", "nats.lan"], env=env)
    assert first.exit_code == 0, first.output
    assert "created" in first.output
    again = runner.invoke(auth_app, ["init"], env=env)
    assert again.exit_code == 0 and "kept" in again.output
    out = runner.invoke(auth_app, ["env", "trainer"], env=env)
    assert out.exit_code == 0 and "export KTRDR_ROLE=trainer" in out.output
    bad = runner.invoke(auth_app, ["env", "root"], env=env)
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and "Traceback" not in bad.output
    host = runner.invoke(auth_app, ["init", "--tls-host", "bad host"], env=env)
    assert host.exit_code == 2 and "Traceback" not in host.output
    empty = runner.invoke(auth_app, ["env", "cli"], env={"KTRDR_HOME": str(tmp_path / "nothing")})
    assert empty.exit_code == 2 and "ktrdr auth init" in empty.output
