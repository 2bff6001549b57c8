"""Operating the embedded stack with the tools people already use: `ktrdr status` names nats-server's
monitoring endpoint (on a free loopback port) and each actor process's /metrics URL; both answer;
an operation run through the CLI shows in the actors' counters; and the cli login's discovery request
gets one answer per actor (auth on, real processes)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import urllib.request
from pathlib import Path

import nats
import pytest

from ktrdr import auth
from ktrdr.embedded import free_port
from tests.helpers import gather_answers, run_ktrdr, scrape, value

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def run(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_ktrdr(env, *args, timeout=timeout)


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        return resp.read().decode()


@pytest.fixture
def home_env(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "IB_PORT", "KTRDR_"))}
    env.update({"KTRDR_HOME": str(tmp_path / "ktrdr"), "KTRDR_NATS_PORT": str(free_port()),
                "KTRDR_WEB_PORT": str(free_port()), "KTRDR_LOCAL_ROLES": "orchestrator,dummy"})
    yield env
    run(env, "down")


async def test_status_names_the_monitoring_and_metrics_endpoints_and_they_answer(home_env):
    done = await asyncio.to_thread(run, home_env, "dummy", "--iterations", "3", "--interval", "0.01")
    assert done.returncode == 0, done.stderr
    status = json.loads((await asyncio.to_thread(run, home_env, "status", "--json")).stdout)
    monitor = status["servers"][0]["monitor_url"]
    assert monitor.startswith("http://127.0.0.1:")
    assert json.loads(await asyncio.to_thread(get, f"{monitor}/healthz"))["status"] == "ok"
    assert json.loads(await asyncio.to_thread(get, f"{monitor}/varz"))["server_name"] == "ktrdr_embedded"
    urls = {a["role"]: a["metrics_url"] for a in status["actors"]}
    assert set(urls) == {"orchestrator", "dummy"} and len(set(urls.values())) == 1  # one actors process
    samples = await scrape(urls["dummy"])
    assert value(samples, "ktrdr_operations_ended_total", role="dummy", domain="dummy", pool="any",
                 outcome="completed") == 1
    assert value(samples, "process_resident_memory_bytes") > 0
    text = (await asyncio.to_thread(run, home_env, "status")).stdout
    assert f"monitoring {monitor}" in text and f"metrics {urls['dummy']}" in text
    # discovery with the cli's own key, as `nats --inbox-prefix _INBOX_cli micro ls` would ask
    home = Path(home_env["KTRDR_HOME"])
    nc = await nats.connect(status["nats_url"], **auth.connect_options("cli", auth_dir=home / "auth"))
    try:
        answers = await gather_answers(nc, "$SRV.PING", 2)
    finally:
        await nc.close()
    assert sorted(a["name"] for a in answers) == ["ktrdr-dummy", "ktrdr-orchestrator"]
    assert {a["metadata"]["actor_id"] for a in answers} == {a["actor"] for a in status["actors"]}
