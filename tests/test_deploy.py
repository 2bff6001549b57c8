"""deploy/: the Prometheus scrape config and the Grafana dashboard agree with what runs. The scrape
targets are exactly the compose services that serve /metrics (and the NATS exporter of nats-server's
monitoring port); every KTRDR metric the dashboard queries is one the actors export; with promtool on
the machine (Debian's `prometheus` package), the config passes `promtool check config`, the
dashboard's queries parse as PromQL (`promtool check rules`) and the actors' exposition passes
`promtool check metrics`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from actors import _metrics

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PROMETHEUS = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
DASHBOARD: dict[str, Any] = json.loads((DEPLOY / "grafana" / "dashboards" / "ktrdr.json").read_text())
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
MONITORING = yaml.safe_load((DEPLOY / "docker-compose.monitoring.yml").read_text())["services"]
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")


def _targets(job: str) -> list[str]:
    (scrape,) = [s for s in PROMETHEUS["scrape_configs"] if s["job_name"] == job]
    return [t for sc in scrape["static_configs"] for t in sc["targets"]]


def _exprs() -> list[str]:
    return [t["expr"] for p in DASHBOARD["panels"] for t in p["targets"]]


def test_scrape_targets_are_the_compose_services_that_serve_metrics():
    serving = {f"{name}:{svc['environment']['KTRDR_METRICS_PORT']}" for name, svc in COMPOSE.items()
               if "KTRDR_METRICS_PORT" in svc.get("environment", {})}
    assert serving == set(_targets("ktrdr-actors"))
    assert all(COMPOSE[t.split(":")[0]]["environment"]["KTRDR_METRICS_HOST"] == "0.0.0.0" for t in serving)
    # nats-server's monitoring port, on in the rendered config, read by the exporter Prometheus scrapes
    auth_cmd = COMPOSE["auth"]["command"]
    monitor_port = auth_cmd[auth_cmd.index("--monitor-port") + 1]
    assert MONITORING["nats-exporter"]["command"][-1] == f"http://nats:{monitor_port}"
    assert _targets("nats") == ["nats-exporter:7777"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in MONITORING["prometheus"]["volumes"]


def test_the_dashboard_queries_only_metrics_the_actors_export():
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids)) and DASHBOARD["uid"] == "ktrdr-overview"
    exported = {m.name for m in _metrics.REGISTRY.collect()}
    used = {re.sub(r"_(total|bucket|count|sum)$", "", n) for e in _exprs() for n in re.findall(r"\bktrdr_\w+", e)}
    assert used and used <= exported, used - exported
    # the brief's list, each on the dashboard
    for name in ("ktrdr_operations_started", "ktrdr_operations_ended", "ktrdr_operation_duration_seconds",
                 "ktrdr_queue_wait_seconds", "ktrdr_work_in_flight", "ktrdr_lease_renewals", "ktrdr_lease_takeovers",
                 "ktrdr_publish_retries", "ktrdr_publish_resends", "ktrdr_ib_requests", "ktrdr_ib_pacing_wait_seconds",
                 "ktrdr_training_samples_per_second", "ktrdr_backtest_bars_per_second"):
        assert name in used, name
    assert any("process_resident_memory_bytes" in e for e in _exprs())
    assert any("process_cpu_seconds_total" in e for e in _exprs())


@needs_promtool
def test_promtool_accepts_the_scrape_config():
    res = subprocess.run([str(PROMTOOL), "check", "config", str(DEPLOY / "prometheus.yml")], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path):
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:q{i}", "expr": e}
                                                          for i, e in enumerate(_exprs())]}]}
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    res = subprocess.run([str(PROMTOOL), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


@needs_promtool
def test_promtool_finds_nothing_to_lint_in_the_actors_exposition():
    _metrics.OPERATION_DURATION.labels("dummy", "dummy", "any", "completed")  # a histogram's series too
    res = subprocess.run([str(PROMTOOL), "check", "metrics"], input=generate_latest(_metrics.REGISTRY).decode(),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and not res.stdout.strip(), res.stdout + res.stderr
