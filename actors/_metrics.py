"""Prometheus metrics: every actor process serves `/metrics` (prometheus-client's own threaded HTTP
server, off the event loop) on `KTRDR_METRICS_HOST:KTRDR_METRICS_PORT` (127.0.0.1 and a free port by
default; `off` serves none) and advertises the URL in its presence record (`ktrdr status` shows it).

What is counted where it happens, once per operation or request (never per progress event): the
operations each worker started and ended (by domain, pool and outcome), their run time and their wait
in the queue (histograms), the work in flight, lease renewals (by result) and the orchestrator's
takeovers, IB requests (by verb and outcome) and the seconds they waited for pacing, the last
training's samples per second and the last backtest's bars per second. What the hot paths already
count as plain integers (progress events published and resent, the transport's publish retries, each
discovery endpoint's requests, errors and time) is read at scrape time by a collector, so publishing
a progress event costs nothing more with metrics on. The process's RSS, CPU and open files come from
the client's process collector.

Several actors in one process (the tests, `python -m actors A B`) share one registry and one server;
each series carries the actor's `role`.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

import ktrdr
from ktrdr.transport.publish import RETRIES

if TYPE_CHECKING:
    from actors._actor import Actor

log = logging.getLogger(__name__)
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

# Operations last from a second (a dummy) to hours (a training on a CPU); queue waits from
# milliseconds (an idle pool) to hours (a pool with no live worker).
DURATION_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 1800, 3600)

OPERATIONS_STARTED = Counter("ktrdr_operations_started", "Operations a worker started running",
                             ["role", "domain", "pool"], registry=REGISTRY)
OPERATIONS_ENDED = Counter("ktrdr_operations_ended", "Operations a worker ended, by outcome (completed, failed, "
                           "cancelled, handed_back)", ["role", "domain", "pool", "outcome"], registry=REGISTRY)
OPERATION_DURATION = Histogram("ktrdr_operation_duration_seconds", "A worker's run time of one operation",
                               ["role", "domain", "pool", "outcome"], buckets=DURATION_BUCKETS, registry=REGISTRY)
QUEUE_WAIT = Histogram("ktrdr_queue_wait_seconds", "From an operation's creation to a worker starting it",
                       ["role", "domain", "pool"], buckets=WAIT_BUCKETS, registry=REGISTRY)
WORK_IN_FLIGHT = Gauge("ktrdr_work_in_flight", "Operations a worker is running now", ["role", "domain", "pool"],
                       registry=REGISTRY)
LEASE_RENEWALS = Counter("ktrdr_lease_renewals", "A worker's lease renewals, by result (ok, lost, error)",
                         ["role", "domain", "result"], registry=REGISTRY)
ATTEMPTS_RETRIED = Counter("ktrdr_attempts_retried", "Attempts that failed retryably and were handed back to "
                           "JetStream for a next attempt after the policy's wait, by error code",
                           ["role", "domain", "code"], registry=REGISTRY)
LEASE_TAKEOVERS = Counter("ktrdr_lease_takeovers", "Leases the orchestrator granted to another worker after the "
                          "holder went silent", ["domain"], registry=REGISTRY)
IB_REQUESTS = Counter("ktrdr_ib_requests", "IB requests served, by verb and outcome (ok, error)",
                      ["verb", "outcome"], registry=REGISTRY)
IB_PACING_WAIT = Counter("ktrdr_ib_pacing_wait_seconds", "Seconds IB requests waited for IB's pacing rules",
                         ["verb"], registry=REGISTRY)
TRAINING_SAMPLES_PER_S = Gauge("ktrdr_training_samples_per_second",
                               "The last training's training samples x epochs per second of fitting", ["pool"],
                               registry=REGISTRY)
BACKTEST_BARS_PER_S = Gauge("ktrdr_backtest_bars_per_second", "The last backtest's bars per second", ["pool"],
                            registry=REGISTRY)

_live: weakref.WeakSet[Actor] = weakref.WeakSet()
_lock = threading.Lock()
_server: tuple[WSGIServer, threading.Thread, str] | None = None


class _ActorCollector(Collector):
    """At scrape time: what the live actors of this process count as plain integers."""

    def collect(self) -> Iterator[Metric]:
        with _lock:
            actors = list(_live)
        info = GaugeMetricFamily("ktrdr_actor_info", "One per live actor of this process",
                                 labels=["role", "actor", "pools", "version"])
        progress = CounterMetricFamily("ktrdr_progress_events_published", "Progress events handed to the server",
                                       labels=["role"])
        resends = CounterMetricFamily("ktrdr_publish_resends", "Progress events sent again (ack missing or refused)",
                                      labels=["role"])
        given_up = CounterMetricFamily("ktrdr_publish_given_up", "Progress events given up past the dedupe window",
                                       labels=["role"])
        requests = CounterMetricFamily("ktrdr_endpoint_requests", "Messages each endpoint handled (as $SRV.STATS "
                                       "reports them)", labels=["role", "endpoint"])
        errors = CounterMetricFamily("ktrdr_endpoint_errors", "Endpoint messages that ended in an error",
                                     labels=["role", "endpoint"])
        seconds = CounterMetricFamily("ktrdr_endpoint_processing_seconds", "Time spent handling endpoint messages",
                                      labels=["role", "endpoint"])
        for a in actors:
            pools = a.work.pools if a.work is not None else a.served_pools
            info.add_metric([a.role, a.id, ",".join(pools), ktrdr.__version__], 1)
            if a.publisher is not None:
                progress.add_metric([a.role], a.publisher.sent)
                resends.add_metric([a.role], a.publisher.resent)
                given_up.add_metric([a.role], a.publisher.given_up)
            for ep in a.discovery.endpoints.values():
                requests.add_metric([a.role, ep.name], ep.num_requests)
                errors.add_metric([a.role, ep.name], ep.num_errors)
                seconds.add_metric([a.role, ep.name], ep.processing_ns / 1e9)
        retries = CounterMetricFamily("ktrdr_publish_retries", "JetStream publishes tried again while no stream "
                                      "answered (server restart, election)")
        retries.add_metric([], RETRIES.count)
        yield from (info, progress, resends, given_up, requests, errors, seconds, retries)


REGISTRY.register(_ActorCollector())


def serve(actor: Actor) -> str:
    """Count `actor` among this process's live actors and make sure /metrics is served; its URL ("" when
    metrics are off or the port cannot be had: the actor runs without them, and says so in its log).
    One server per process, kept for the process's life (the first actor's host and port choose it):
    actors that stop and start again in one process find it there."""
    global _server
    with _lock:
        _live.add(actor)
    port = actor.settings.metrics_port
    if port is None:
        return ""
    with _lock:
        if _server is None:
            host = actor.settings.metrics_host
            try:
                httpd, thread = start_http_server(port, addr=host, registry=REGISTRY)
            except OSError as exc:
                log.warning("%s: no metrics: cannot serve on %s:%s (%s)", actor.id, host, port, exc)
                return ""
            thread.name = "ktrdr-metrics"
            shown = f"[{host}]" if ":" in host else host
            _server = (httpd, thread, f"http://{shown}:{httpd.server_port}/metrics")
        return _server[2]


def leave(actor: Actor) -> None:
    """`actor` stopped: it is no longer collected."""
    with _lock:
        _live.discard(actor)


def outcome_of(event: Any) -> str:
    """The outcome label of a worker's verdict (None: handed back, no verdict of ours)."""
    name = getattr(event, "name", None)
    return name if name in ("completed", "failed", "cancelled") else "handed_back"
