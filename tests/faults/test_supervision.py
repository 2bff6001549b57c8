"""The embedded stack supervises its processes: kill -9 of the `actors` process, the simulated gateway,
the page or nats-server, and the supervisor starts it again by itself (same port), `ktrdr status`
says how often and why, and a dummy operation completes afterwards. The supervisor's own death is
shown by `ktrdr status` and mended by the next command that ensures the stack. One stack is shared by
the module (the kills follow each other; each test waits until the stack is whole again)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ktrdr import embedded
from ktrdr.config import Settings
from ktrdr.embedded import free_port
from tests.helpers import run_ktrdr

RECOVER_S = 30.0  # how long a killed process may take to be running again (backoff's first step is 0.5 s)
POLL_S = 0.1  # how often the test looks at the run files meanwhile (a local read, no server)


def run(env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return run_ktrdr(env, *args, timeout=timeout)


def wait_until(check: Callable[[], Any], what: str, timeout: float = RECOVER_S) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(POLL_S)
    return result


def make_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "IB_PORT", "KTRDR_"))}
    env.update({"KTRDR_HOME": str(home), "KTRDR_NATS_PORT": str(free_port()), "KTRDR_WEB_PORT": str(free_port()),
                "KTRDR_LOCAL_ROLES": "orchestrator,dummy", **extra})
    return env


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    env = make_env(tmp_path_factory.mktemp("supervised") / "ktrdr")
    try:
        res = run(env, "up")
        assert res.returncode == 0, res.stderr
        yield env
    finally:
        run(env, "down")


def settings_of(env: dict[str, str]) -> Settings:
    return Settings(home=Path(env["KTRDR_HOME"]))


def procs(env: dict[str, str]) -> dict[str, embedded.ProcInfo]:
    return {p.name: p for p in embedded.process_infos(settings_of(env))}


def status(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    res = run(env, "status", "--json")
    assert res.returncode == 0, res.stderr
    return {p["name"]: p for p in json.loads(res.stdout)["processes"]}


def kill_and_wait_back(env: dict[str, str], name: str) -> int:
    """kill -9 one process of the stack; return the pid of the process the supervisor started instead."""
    before = procs(env)[name]
    assert before.alive and before.pid, before
    os.kill(before.pid, signal.SIGKILL)

    def back() -> int | None:
        p = procs(env)[name]
        return p.pid if p.alive and p.pid != before.pid else None

    return int(wait_until(back, f"{name} restarted by the supervisor"))


def dummy_completes(env: dict[str, str]) -> None:
    res = run(env, "dummy", "--iterations", "2", "--interval", "0.01", "--json", timeout=60)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-2000:])


def test_a_killed_actors_process_is_restarted_and_serves_again(stack: dict[str, str]) -> None:
    dummy_completes(stack)
    kill_and_wait_back(stack, "actors")
    dummy_completes(stack)  # orchestrator and dummy worker are back: the operation runs to completion
    shown = status(stack)
    assert shown["actors"]["alive"] and shown["actors"]["restarts"] == 1, shown["actors"]
    assert shown["actors"]["last_reason"], shown["actors"]  # why it was restarted ("not running", a code)
    assert shown["web"]["restarts"] == 0 and shown["nats"]["restarts"] == 0
    text = run(stack, "status").stdout
    assert "restarted 1 time" in text, text


def test_a_killed_sim_gateway_and_page_come_back_on_their_ports(stack: dict[str, str]) -> None:
    run_dir = Path(stack["KTRDR_HOME"]) / "run"
    ports = {n: (run_dir / f"{n}.port").read_text() for n in ("sim-gateway", "web")}
    for name in ("sim-gateway", "web"):
        kill_and_wait_back(stack, name)
    assert {n: (run_dir / f"{n}.port").read_text() for n in ports} == ports
    shown = status(stack)
    assert shown["sim-gateway"]["restarts"] == 1 and shown["web"]["restarts"] == 1, shown
    assert shown["web"]["last_reason"]


def test_a_killed_nats_server_is_restarted_on_its_store_and_port(stack: dict[str, str]) -> None:
    url = (Path(stack["KTRDR_HOME"]) / "run" / "nats.url").read_text()
    kill_and_wait_back(stack, "nats")
    assert (Path(stack["KTRDR_HOME"]) / "run" / "nats.url").read_text() == url
    dummy_completes(stack)  # the actors reconnected by themselves
    assert status(stack)["nats"]["restarts"] == 1


def test_a_dead_supervisor_is_shown_and_started_again_by_the_next_command(stack: dict[str, str]) -> None:
    sup = procs(stack)["supervisor"]
    assert sup.alive and sup.pid
    os.kill(sup.pid, signal.SIGKILL)
    wait_until(lambda: not procs(stack)["supervisor"].alive, "the supervisor dead")
    shown = status(stack)
    assert not shown["supervisor"]["alive"] and "not restarted" in shown["supervisor"]["detail"], shown
    assert "supervisor" in run(stack, "status").stdout
    listed = run(stack, "ops", "list", "--json")  # any command that ensures the stack
    assert listed.returncode == 0, listed.stderr
    assert procs(stack)["supervisor"].alive
    kill_and_wait_back(stack, "web")  # and it supervises again
