"""The embedded default: `ktrdr up/status/down` manage nats-server + actors + simulated gateway under
KTRDR_HOME, and survive stale pid files, a taken port and two CLIs starting at once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ktrdr.embedded import free_port
from tests.helpers import run_ktrdr

pytestmark = pytest.mark.slow


def run(env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return run_ktrdr(env, *args, timeout=timeout)


@pytest.fixture
def home_env(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "IB_PORT")}
    env.update({"KTRDR_HOME": str(tmp_path / "ktrdr"), "KTRDR_NATS_PORT": str(free_port()),
                "KTRDR_WEB_PORT": str(free_port()), "KTRDR_LOCAL_ROLES": "orchestrator,dummy"})
    yield env
    run(env, "down")


def test_up_status_down_and_operations_survive_a_restart(home_env):
    first = run(home_env, "dummy", "--iterations", "2", "--interval", "0.01")  # starts the stack on demand
    assert first.returncode == 0, first.stderr
    status = json.loads(run(home_env, "status", "--json").stdout)
    procs = {p["name"]: p["alive"] for p in status["processes"]}
    assert procs == {"nats": True, "sim-gateway": True, "actors": True, "web": True, "supervisor": True}
    assert status["web_url"] == f"http://127.0.0.1:{home_env['KTRDR_WEB_PORT']}/"
    assert status["streams"]["OPS"]["messages"] > 0
    assert {a["role"] for a in status["actors"]} == {"orchestrator", "dummy"}
    conf = (Path(home_env["KTRDR_HOME"]) / "run" / "nats.conf").read_text()
    assert 'sync_interval: "always"' in conf  # every acked event on disk before its ack (KTRDR_NATS_SYNC)
    assert "stopped:" in run(home_env, "down").stdout
    # Everything is down; ops list starts it again and the history is still there.
    listed = json.loads(run(home_env, "ops", "list", "--json").stdout)
    assert [v["status"] for v in listed] == ["completed"]


def test_stale_pid_files_and_taken_port_are_survived(home_env):
    run_dir = Path(home_env["KTRDR_HOME"]) / "run"
    run_dir.mkdir(parents=True)
    for name in ("nats", "actors", "sim-gateway"):
        (run_dir / f"{name}.pid").write_text("999999\n")  # no such process
    (run_dir / "nats.url").write_text(f"nats://127.0.0.1:{home_env['KTRDR_NATS_PORT']}\n")
    with socket.socket() as squatter:  # someone else holds the preferred port
        squatter.bind(("127.0.0.1", int(home_env["KTRDR_NATS_PORT"])))
        squatter.listen()
        res = run(home_env, "dummy", "--iterations", "1", "--interval", "0.01")
        assert res.returncode == 0, res.stderr
        url = (run_dir / "nats.url").read_text().strip()
        assert not url.endswith(f":{home_env['KTRDR_NATS_PORT']}")


def test_two_clis_starting_the_stack_at_once_share_one_stack(home_env):
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: run(home_env, "dummy", "--iterations", "1", "--interval", "0.01"),
                                range(2)))
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    status = json.loads(run(home_env, "status", "--json").stdout)
    assert len([a for a in status["actors"] if a["role"] == "orchestrator"]) == 1
    assert len(json.loads(run(home_env, "ops", "list", "--json").stdout)) == 2


def test_up_returns_when_every_actor_serves_and_an_instant_cancel_is_never_lost(home_env):
    res = run(home_env, "up")
    assert res.returncode == 0, res.stderr
    assert "actors orchestrator, dummy" in res.stdout
    status = json.loads(run(home_env, "status", "--json").stdout)
    assert {a["role"] for a in status["actors"]} == {"orchestrator", "dummy"}  # right after up, not later
    assert all(status["streams"][s] is not None for s in ("CMD", "WORK", "OPS"))
    op_id = run(home_env, "dummy", "--iterations", "50", "--interval", "0.2", "--no-wait").stdout.strip()
    cancelled = run(home_env, "ops", "cancel", op_id)  # at once: the operation may not even exist yet
    assert cancelled.returncode == 0, cancelled.stderr
    shown = json.loads(run(home_env, "ops", "show", op_id, "--json").stdout)
    assert shown["status"] == "cancelled"


def test_a_restarted_sim_gateway_keeps_its_port(home_env):
    home_env = {**home_env, "KTRDR_LOCAL_ROLES": "orchestrator,dummy,ib"}
    assert run(home_env, "up").returncode == 0
    run_dir = Path(home_env["KTRDR_HOME"]) / "run"
    port = (run_dir / "sim-gateway.port").read_text().strip()
    pid = int((run_dir / "sim-gateway.pid").read_text())
    os.kill(pid, 9)
    assert run(home_env, "up").returncode == 0
    assert (run_dir / "sim-gateway.port").read_text().strip() == port
    assert int((run_dir / "sim-gateway.pid").read_text()) != pid
