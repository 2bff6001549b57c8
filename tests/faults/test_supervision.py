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


def test_a_process_the_supervisor_started_is_restarted_again_with_its_exit_status(stack: dict[str, str]) -> None:
    kill_and_wait_back(stack, "actors")  # the actors the supervisor started: its own child this time
    shown = status(stack)["actors"]
    assert shown["restarts"] == 2 and shown["last_reason"] == "killed by SIGKILL", shown
    dummy_completes(stack)


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


def test_backoff_doubles_from_half_a_second_to_its_cap() -> None:
    from ktrdr import supervisor

    waits = [supervisor.backoff_s(n) for n in range(8)]
    assert waits[:4] == [0.5, 1.0, 2.0, 4.0] and waits[-1] == supervisor.BACKOFF_MAX_S == 30.0


def test_restarts_wait_their_backoff_and_a_process_stopped_on_purpose_stays_stopped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor's decisions over a clock it is given: `embedded.restart` and liveness replaced by
    a record of what was asked (the restart itself is the module's stack tests above)."""
    from ktrdr import disk, supervisor

    s = Settings(home=tmp_path)
    s.run_dir.mkdir(parents=True)
    alive: dict[str, bool] = {"nats": True, "sim-gateway": True, "actors": False, "web": False}
    (s.run_dir / "actors.pid").write_text("999999\n")  # died
    restarted: list[tuple[str, float]] = []
    now = 100.0

    def restart(_s: Settings, name: str) -> bool:
        restarted.append((name, now))
        return True

    monkeypatch.setattr(embedded, "restart", restart)
    monkeypatch.setattr(embedded, "is_alive", lambda _s, name: alive[name])
    monkeypatch.setattr(embedded, "supervised_names", lambda _s: list(alive))
    monkeypatch.setattr(embedded, "read_pid", lambda _s, name: None if name == "web" else 999999)
    record = supervisor.Record(disk.health_file(s))
    tracked: dict[str, supervisor.Tracked] = {}
    try:
        for now in (100.0, 100.4):  # seen dead; its first backoff (0.5 s) has not passed
            supervisor.look_processes(s, tracked, record, now)
        assert restarted == [] and record.health.processes["actors"].state == "backoff"
        supervisor.look_processes(s, tracked, record, now := 100.5)
        assert restarted == [("actors", 100.5)]
        for now in (101.0, 101.9):  # died again at once: the next wait is twice as long
            supervisor.look_processes(s, tracked, record, now)
        assert len(restarted) == 1
        supervisor.look_processes(s, tracked, record, now := 102.0)
        assert len(restarted) == 2
        alive["actors"] = True  # it stays up past STABLE_S: the count of restarts in a row resets
        supervisor.look_processes(s, tracked, record, now := 102.0 + supervisor.STABLE_S)
        assert record.health.processes["actors"].attempts == 0
        assert [n for n, _ in restarted] == ["actors", "actors"]  # web (no pid file: stopped on purpose) never
        shown = disk.read_health(s)
        assert shown is not None and shown.processes["actors"].restarts == 2
        assert shown.processes["actors"].last_reason == "not running" and shown.processes["web"].restarts == 0
    finally:
        record.close()


@pytest.mark.slow
def test_standby_orchestrators_run_next_to_each_node_and_are_supervised(tmp_path: Path) -> None:
    """`up --cluster 2` with standby orchestrators turned on runs `orchestrator-2` next to node 2 (its
    NATS_URL lists that node first); it is supervised, and `down` stops it. Until the leader lease
    lands two orchestrators on one server are unsafe, so the standby runs a role that is safe twice
    (dummy) through the same path."""
    env = make_env(tmp_path / "ktrdr", **{embedded.STANDBY_ENV: "dummy"})
    try:
        res = run(env, "up", "--cluster", "2", timeout=120)
        assert res.returncode == 0, res.stderr
        shown = status(env)
        assert shown["orchestrator-2"]["alive"], shown
        pid = int(shown["orchestrator-2"]["pid"])
        environ = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
        port2 = (Path(env["KTRDR_HOME"]) / "run" / "nats-2.port").read_text().strip()
        assert environ["NATS_URL"].split(",")[0].endswith(f":{port2}"), environ["NATS_URL"]
        assert Path(f"/proc/{pid}/cmdline").read_text().split("\0")[-2] == "dummy"
        new_pid = kill_and_wait_back(env, "orchestrator-2")
        assert status(env)["orchestrator-2"]["restarts"] == 1
        stopped = run(env, "down")
        assert "orchestrator-2" in stopped.stdout, stopped.stdout
        assert not Path(f"/proc/{new_pid}").exists() or not embedded._alive(new_pid, "actors")
    finally:
        run(env, "down")
