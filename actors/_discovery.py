"""NATS service discovery (the micro protocol, ADR-32): every actor answers `$SRV.PING`, `$SRV.INFO`
and `$SRV.STATS`, at the three narrowings (all services, `.<name>`, `.<name>.<id>`), with the JSON
shapes of nats-py's `nats.micro` types, so `nats micro ls` and any micro-aware tool list the actors.

The service name is `ktrdr-<role>` (events.subjects.service_name), the instance id the actor id made
one subject token; the metadata carries the role, the full actor id, the pools, the host and the
version. The endpoints are what the actor handles: request/reply subjects, the cancel broadcast, its
work pools (pull consumers, counted per work item taken), the orchestrator's commands and leases;
each counts requests, errors and processing time as nats.micro's own endpoints do.

Answers go only to a discovery caller's inbox: the roles that may send discovery requests (cli,
observer, events.permissions.DISCOVERY_CALLERS) or NATS's standard `_INBOX.` (an unauthenticated
server; under auth no role may read it). A request whose reply subject is anything else (another
role's inbox, an `ops.` subject the orchestrator may publish on) is dropped and counted: the actors'
allow_responses must not let a caller make them publish where it could not.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.micro.service import EndpointInfo, EndpointStats, ServiceInfo, ServicePing, ServiceStats

import ktrdr
from events import roles, subjects
from events.permissions import DISCOVERY_CALLERS, inbox_prefix

if TYPE_CHECKING:
    from actors._actor import Actor

# Where an answer may go: the discovery callers' inboxes, and the standard one nobody may read under auth.
REPLY_PREFIXES: tuple[str, ...] = (*(f"{inbox_prefix(r)}." for r in DISCOVERY_CALLERS), "_INBOX.")
DESCRIPTIONS: dict[str, str] = {
    roles.ORCHESTRATOR: "accepts commands, creates operations, routes work, supervises liveness",
    roles.IB: "serves IB historical bars, contracts and heads over request/reply",
    roles.JOB_MANAGER: "loads market data: gap analysis, segments, pacing-aware fetches, merge, store",
    roles.TRAINER: "trains strategies on the bars in BARS, stores models in MODELS",
    roles.BACKTESTER: "backtests a stored model on stored bars",
    roles.DUMMY: "a demonstration worker that counts to a number",
}


@dataclass
class Endpoint:
    """One thing an actor handles, with nats.micro's counters."""

    name: str
    subject: str
    queue_group: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    num_requests: int = 0
    num_errors: int = 0
    processing_ns: int = 0
    last_error: str = ""

    def record(self, elapsed_ns: int, error: str | None = None) -> None:
        self.num_requests += 1
        self.processing_ns += max(elapsed_ns, 0)
        if error:
            self.num_errors += 1
            self.last_error = error[:300]

    def info(self) -> EndpointInfo:
        return EndpointInfo(name=self.name, subject=self.subject, queue_group=self.queue_group,
                            metadata=dict(self.metadata))

    def stats(self) -> EndpointStats:
        avg = self.processing_ns // self.num_requests if self.num_requests else 0
        return EndpointStats(name=self.name, subject=self.subject, queue_group=self.queue_group,
                             num_requests=self.num_requests, num_errors=self.num_errors,
                             processing_time=self.processing_ns, average_processing_time=avg,
                             last_error=self.last_error)


class Discovery:
    """One actor's service instance: its endpoints' counters and the answers to discovery requests."""

    def __init__(self, actor: Actor) -> None:
        self.actor = actor
        self.name = subjects.service_name(actor.role)
        self.id = subjects.service_id(actor.id)
        self.started = datetime.now(UTC)
        self.endpoints: dict[str, Endpoint] = {}
        self.refused_replies = 0  # discovery requests whose reply subject is no caller's inbox
        self._subs: list[Subscription] = []

    # ------------------------------------------------------------------ endpoints
    def endpoint(self, name: str, subject: str, queue_group: str = "", **metadata: str) -> Endpoint:
        """The endpoint `name` (registered on first use; the same one after a reconnect or re-activation)."""
        ep = self.endpoints.get(name)
        if ep is None:
            ep = self.endpoints[name] = Endpoint(name, subject, queue_group, dict(metadata))
        return ep

    def counted(self, name: str, subject: str, fn: Callable[[Msg], Awaitable[None]], queue_group: str = "",
                **metadata: str) -> Callable[[Msg], Awaitable[None]]:
        """`fn` with its calls counted on endpoint `name` (an exception counts as an error and is re-raised)."""
        ep = self.endpoint(name, subject, queue_group, **metadata)

        async def wrapped(msg: Msg) -> None:
            t0 = time.perf_counter_ns()
            try:
                await fn(msg)
            except Exception as exc:
                ep.record(time.perf_counter_ns() - t0, f"{type(exc).__name__}: {exc}")
                raise
            ep.record(time.perf_counter_ns() - t0)

        return wrapped

    # ------------------------------------------------------------------ answers
    def metadata(self) -> dict[str, str]:
        a = self.actor
        pools = a.work.pools if a.work is not None else a.served_pools
        return {"role": a.role, "actor_id": a.id, "pools": ",".join(pools), "domain": a.work_domain or "",
                "host": socket.gethostname(), "version": ktrdr.__version__,
                "state": a.presence_state()[:200]}

    def ping(self) -> ServicePing:
        return ServicePing(id=self.id, name=self.name, version=ktrdr.__version__, metadata=self.metadata())

    def info(self) -> ServiceInfo:
        return ServiceInfo(name=self.name, id=self.id, version=ktrdr.__version__,
                           description=DESCRIPTIONS.get(self.actor.role, ""),
                           endpoints=[ep.info() for ep in self.endpoints.values()], metadata=self.metadata())

    def stats(self) -> ServiceStats:
        return ServiceStats(id=self.id, name=self.name, version=ktrdr.__version__,
                            started=self.started.replace(tzinfo=None),
                            endpoints=[ep.stats() for ep in self.endpoints.values()], metadata=self.metadata())

    def answer(self, verb: str) -> dict[str, Any]:
        if verb == "PING":
            return self.ping().to_dict()
        return self.info().to_dict() if verb == "INFO" else self.stats().to_dict()

    # ------------------------------------------------------------------ wire
    async def start(self) -> None:
        nc = self.actor.nc
        assert nc is not None
        for verb in subjects.SRV_VERBS:
            for args in ((), (self.name,), (self.name, self.id)):
                self._subs.append(await nc.subscribe(subjects.discovery(verb, *args),
                                                     cb=self.actor._guard(self._request(verb), "discovery")))

    def _request(self, verb: str) -> Callable[[Msg], Awaitable[None]]:
        async def cb(msg: Msg) -> None:
            if not msg.reply.startswith(REPLY_PREFIXES):
                self.refused_replies += 1
                self.actor.log.debug("discovery request with reply %r not answered", msg.reply[:120])
                return
            nc = self.actor.nc
            if nc is not None:
                await nc.publish(msg.reply, json.dumps(self.answer(verb)).encode())

        return cb
