"""Settings from the environment. Every knob a user can turn is here, and no other module reads
os.environ for one: a bad value is refused here, with the variable's name.

`settings()` builds this process's Settings from the environment once and returns that same frozen
object for as long as the variables Settings reads (`KTRDR_*`, `NATS_*`, `IB_*`) keep their values;
when one changes (a test's monkeypatch, CliRunner's `env=`) the next call builds a new one.
`Settings(...)` itself reads, at each construction, every variable whose field it is not given:
tests and tools build their own that way.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from events.bounds import PRIORITY_AGING_S

CACHE_MAX_BYTES = 4 << 30  # the bars cache's size bound when KTRDR_CACHE_MAX_BYTES does not set one


TRACES_DIR_ENV = "KTRDR_TRACES_DIR"
OTEL_PREFIX = "OTEL_"  # the OpenTelemetry SDK's standard variables: passed through to it, which checks them


def otel_env() -> dict[str, str]:
    """The OTEL_* variables and KTRDR_TRACES_DIR of this process, for ktrdr/tracing.py (the SDK reads
    and checks OTEL_* itself; this is the one place of ours that looks at them)."""
    return {k: v for k, v in os.environ.items() if k.startswith(OTEL_PREFIX) or k == TRACES_DIR_ENV}


def _env(name: str) -> str | None:
    raw = os.environ.get(name)
    return raw if raw not in (None, "") else None


def _path(name: str) -> Path | None:
    raw = _env(name)
    return Path(raw).expanduser() if raw is not None else None


def _float(name: str, default: float, lo: float = 0.0, hi: float = float("inf")) -> float:
    raw = _env(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise SystemExit(f"{name}={raw!r} is not a number") from exc
    if not lo <= value <= hi:
        raise SystemExit(f"{name}={raw!r} is out of range [{lo:g}, {hi:g}]")
    return value


def _int(name: str, default: int, lo: int = 0, hi: int = 2**62) -> int:
    return int(_float(name, default, lo, hi))


PING_MIN_S, PING_MAX_S, MAX_OUTSTANDING_PINGS = 5.0, 30.0, 2  # (Settings.ping_s)
SYNC_PATTERN = re.compile(r"always|[1-9][0-9]{0,5}(ms|s|m|h)")  # nats-server's sync_interval values we accept


def _sync(name: str, default: str) -> str:
    raw = _env(name) or default
    if not SYNC_PATTERN.fullmatch(raw):
        raise SystemExit(f"{name}={raw!r}: expected 'always' or a duration such as 1s, 500ms, 2m")
    return raw


def _metrics_port() -> int | None:
    """KTRDR_METRICS_PORT: the port an actor process serves /metrics on; 0 (the default) picks a free
    one (advertised in the presence record); `off` serves none."""
    if (_env("KTRDR_METRICS_PORT") or "").lower() == "off":
        return None
    return _int("KTRDR_METRICS_PORT", 0, 0, 65535)


def _list(name: str) -> list[str]:
    return [v for v in (_env(name) or "").replace(",", " ").split() if v]


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=lambda: Path(_env("KTRDR_HOME") or "~/.ktrdr").expanduser())
    nats_url: str | None = field(default_factory=lambda: _env("NATS_URL"))
    nats_user: str | None = field(default_factory=lambda: _env("NATS_USER"))
    nats_password: str | None = field(default_factory=lambda: _env("NATS_PASSWORD"))
    nats_creds: str | None = field(default_factory=lambda: _env("NATS_CREDS"))
    nats_nkey: str | None = field(default_factory=lambda: _env("NATS_NKEY"))  # a seed file
    nats_nkey_seed: str | None = field(default_factory=lambda: _env("NATS_NKEY_SEED"))  # the seed itself
    nats_tls_ca: str | None = field(default_factory=lambda: _env("NATS_TLS_CA"))
    nats_tls_ca_pem: str | None = field(default_factory=lambda: _env("NATS_TLS_CA_PEM"))
    # Where the per-role credentials are (default KTRDR_HOME/auth): a container mounts them elsewhere.
    auth_dir_override: str | None = field(default_factory=lambda: _env("KTRDR_AUTH_DIR"))
    # Who this process is on the bus (its credentials' role); "" = no per-role credentials.
    role: str = field(default_factory=lambda: _env("KTRDR_ROLE") or "")
    # Embedded stack: where nats-server listens (loopback unless told otherwise) and which actors run.
    # The embedded stack's fsync policy (nats-server sync_interval): "always" stores every acked
    # message on disk before the ack (a power cut loses nothing acked); a duration fsyncs that often
    # (nats-server's default 2m: a power cut loses what was acked since). See README, "Faults".
    nats_sync: str = field(default_factory=lambda: _sync("KTRDR_NATS_SYNC", "always"))
    nats_host: str = field(default_factory=lambda: _env("KTRDR_NATS_HOST") or "127.0.0.1")
    nats_port: int = field(default_factory=lambda: _int("KTRDR_NATS_PORT", 4222, 1, 65535))
    local_roles: list[str] = field(default_factory=lambda: _list("KTRDR_LOCAL_ROLES"))
    # Work pools this process's workers join (always with "any"); a trainer joins them instead of its
    # device's pool (e.g. KTRDR_POOLS=gpu on a box whose driver is not seen).
    pools: list[str] = field(default_factory=lambda: _list("KTRDR_POOLS"))
    # Stream and bucket replicas: 1 on one server, 3 on a 3-node cluster.
    replicas: int = field(default_factory=lambda: _int("KTRDR_REPLICAS", 1, 1, 5))
    # OPS retention: age (30 days), bytes, and events per subject (per operation
    # and event type: its event budget).
    ops_max_age_s: float = field(default_factory=lambda: _float("KTRDR_OPS_MAX_AGE", 30 * 86400, 1.0))
    ops_max_bytes: int = field(default_factory=lambda: _int("KTRDR_OPS_MAX_BYTES", 4 << 30, 1 << 20))
    ops_max_events_per_subject: int = field(
        default_factory=lambda: _int("KTRDR_OPS_MAX_EVENTS_PER_SUBJECT", 2_000_000, 100))
    # OPS_CANCELS (what users write on ops.*.*.cancel, apart from OPS): its bytes (oldest dropped first)
    # and how many requests it keeps per operation (the newest).
    cancels_max_bytes: int = field(default_factory=lambda: _int("KTRDR_CANCELS_MAX_BYTES", 256 << 20, 1 << 20))
    cancels_per_op: int = field(default_factory=lambda: _int("KTRDR_CANCELS_PER_OP", 8, 1, 1000))
    # OPS's consumers: at most this many at once (reads beyond it use direct gets), and one nobody
    # reads for this long is removed by the server (a reader's that was abandoned).
    ops_max_consumers: int = field(default_factory=lambda: _int("KTRDR_OPS_MAX_CONSUMERS", 1000, 1, 1_000_000))
    ops_consumer_inactive_s: float = field(
        default_factory=lambda: _float("KTRDR_OPS_CONSUMER_INACTIVE_S", 60.0, 10.0, 86400))
    # A flood of malformed cancels for one operation: at most one ActorError per this many seconds.
    malformed_cancel_every_s: float = field(
        default_factory=lambda: _float("KTRDR_MALFORMED_CANCEL_EVERY_S", 60.0, 0.0, 86400))
    # Prometheus metrics of each actor process (actors/_metrics.py): loopback unless told otherwise.
    metrics_host: str = field(default_factory=lambda: _env("KTRDR_METRICS_HOST") or "127.0.0.1")
    metrics_port: int | None = field(default_factory=_metrics_port)
    # Where the collector-free `ktrdr` span exporter writes (ktrdr/tracing.py); None: KTRDR_HOME/traces.
    traces_dir: Path | None = field(default_factory=lambda: _path(TRACES_DIR_ENV))
    heartbeat_s: float = field(default_factory=lambda: _float("KTRDR_HEARTBEAT_S", 1.0, 0.01, 60))
    # A worker silent this long loses its lease: JetStream redelivers the work (ack_wait).
    worker_timeout_s: float = field(default_factory=lambda: _float("KTRDR_WORKER_TIMEOUT", 10.0, 0.1, 3600))
    # An operation nobody has picked up again (or nobody in its pool can take) this long is failed.
    orphan_timeout_s: float = field(default_factory=lambda: _float("KTRDR_ORPHAN_TIMEOUT", 30.0, 0.1, 86400))
    # The orchestrators' leader lease: a standby takes over once the active one has not renewed it for
    # this long (it renews every quarter of it); the active one stops acting after 0.8 of it unrenewed.
    leader_ttl_s: float = field(default_factory=lambda: _float("KTRDR_LEADER_TTL_S", 2.0, 0.2, 60))
    drain_timeout_s: float = field(default_factory=lambda: _float("KTRDR_DRAIN_TIMEOUT", 5.0, 0, 3600))
    # A test hook, never set in use: the orchestrator exits at once (os._exit(9)) at the named point
    # (actors/_orch_index.py: "after-event-before-index").
    test_crash: str = field(default_factory=lambda: _env("KTRDR_TEST_CRASH") or "")
    # A connection whose server stopped answering (its machine gone, the network cut: no reset ever
    # arrives) is given up after MAX_OUTSTANDING_PINGS pings this far apart went unanswered, and the
    # client reconnects to another server of NATS_URL. 0: half the worker timeout, within
    # [PING_MIN_S, PING_MAX_S]. (nats-py's own 120 s kept a worker on a cut-off node for minutes, far
    # past its lease: the new active orchestrator failed its operation as lost while it ran. Under
    # 5 s a client flooding its own connection (10,000 messages) missed its pongs and reconnected
    # mid-read: tests/faults/test_fuzz_and_load.py failed at 2 s and passes at 5 s.)
    ping_s: float = field(default_factory=lambda: _float("KTRDR_PING_S", 0.0, 0.0, 300))
    max_deliver: int = field(default_factory=lambda: _int("KTRDR_MAX_DELIVER", 5, 1, 1000))
    # Priorities (events.bounds.PRIORITY_AGING_S): a level a worker saw waiting this long is taken as
    # if one level higher (twice this long: two levels), so no low item starves behind high ones.
    priority_aging_s: float = field(default_factory=lambda: _float("KTRDR_PRIORITY_AGING", PRIORITY_AGING_S, 0.05,
                                                                   86400))
    ib_host: str = field(default_factory=lambda: _env("IB_HOST") or "127.0.0.1")
    ib_port: int | None = field(default_factory=lambda: _int("IB_PORT", 0, 1, 65535) if _env("IB_PORT") else None)
    ib_client_id: int = field(default_factory=lambda: _int("IB_CLIENT_ID", 1, 0, 2**31 - 1))
    # Shrinks IB's pacing windows (sim gateway and client alike) for tests and benchmarks; 1.0 = IB's rules.
    ib_time_scale: float = field(default_factory=lambda: _float("KTRDR_IB_TIME_SCALE", 1.0, 1e-4, 100))
    # How long a data load rides out an IB gateway that does not answer before it fails, naming it.
    ib_gateway_wait_s: float = field(default_factory=lambda: _float("KTRDR_IB_GATEWAY_WAIT_S", 30.0, 0.0, 86400))
    device: str = field(default_factory=lambda: _env("KTRDR_DEVICE") or "auto")
    # Training progress: a batch-level event for the first, the last and every N-th batch of an epoch.
    progress_batch_every: int = field(default_factory=lambda: _int("KTRDR_PROGRESS_BATCH_EVERY", 20, 1, 10**6))
    # The active orchestrator's command intake: up to N commands fetched at once, a batch's distinct
    # operations handled concurrently (one operation's commands in order); 0 (the default for now) =
    # one at a time, as before.
    orch_cmd_batch: int = field(default_factory=lambda: _int("KTRDR_ORCH_CMD_BATCH", 0, 0, 1000))
    # KTRDR_HOME/cache (bars by digest) is trimmed, least recently used first, above this size.
    cache_max_bytes: int = field(default_factory=lambda: _int("KTRDR_CACHE_MAX_BYTES", CACHE_MAX_BYTES, 1 << 20))
    # Free space kept on a disk we write to: the cache evicts (or skips caching) rather than leave
    # less on its disk, and the embedded supervisor waits for this much on the server's disk before
    # it restarts a server whose store hit a write error (a smaller margin fills up again at once).
    disk_min_free_bytes: int = field(default_factory=lambda: _int("KTRDR_DISK_MIN_FREE", 64 << 20, 0))
    # Object chunks no object points to (a writer killed mid-put, or one whose clean-up the server
    # refused) are purged by the job-manager once their newest chunk is this old, looked for as often:
    # well past a put's longest pause (a chunk's publish is retried for 30 s).
    chunk_orphan_age_s: float = field(default_factory=lambda: _float("KTRDR_CHUNK_ORPHAN_AGE_S", 120.0, 1.0, 86400))
    # The live operations page (`ktrdr up` serves it on loopback); 0 = any free port.
    web_port: int = field(default_factory=lambda: _int("KTRDR_WEB_PORT", 8780, 0, 65535))

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def checkpoints_dir(self) -> Path:
        return self.home / "checkpoints"

    @property
    def auth_dir(self) -> Path:
        return Path(self.auth_dir_override).expanduser() if self.auth_dir_override else self.home / "auth"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def ping_interval_s(self) -> float:
        return self.ping_s or min(max(self.worker_timeout_s / 2, PING_MIN_S), PING_MAX_S)

    def connect_options(self, role: str) -> dict[str, Any]:
        """nats.connect keyword arguments for a process of `role`: its inbox prefix and credentials
        (NATS_NKEY_SEED, NATS_NKEY, NATS_USER/NATS_PASSWORD or NATS_CREDS; else the embedded stack's
        KTRDR_HOME/auth/<role>.nk when it exists) and a TLS context trusting our CA (NATS_TLS_CA[_PEM],
        else KTRDR_HOME/auth/tls/ca.pem when it exists)."""
        from events import roles
        from ktrdr import creds  # not ktrdr.auth: its server-side part is most of a verb's import time

        env = {name: value for name, value in (
            ("NATS_NKEY_SEED", self.nats_nkey_seed), ("NATS_NKEY", self.nats_nkey), ("NATS_USER", self.nats_user),
            ("NATS_PASSWORD", self.nats_password), ("NATS_CREDS", self.nats_creds),
            ("NATS_TLS_CA", self.nats_tls_ca), ("NATS_TLS_CA_PEM", self.nats_tls_ca_pem)) if value}
        known = role if role in roles.ROLES else roles.CLI  # a test or bench actor of no real role
        adir = self.auth_dir
        local_ca = adir / "tls" / "ca.pem"
        if "NATS_TLS_CA" not in env and "NATS_TLS_CA_PEM" not in env and local_ca.exists():
            env["NATS_TLS_CA"] = str(local_ca)
        if self.auth_dir_override and not any(k in env for k in ("NATS_NKEY", "NATS_NKEY_SEED", "NATS_USER")):
            seed = adir / f"{known}.nk"
            if seed.exists():
                env["NATS_NKEY"] = str(seed)
        return creds.connect_options_from_env(known, home=self.home, env=env)


READ_PREFIXES = ("KTRDR_", "NATS_", "IB_")  # every variable a Settings field reads starts so
_built: tuple[tuple[tuple[str, str], ...], Settings] | None = None
_lock = threading.Lock()


def settings() -> Settings:
    """This process's Settings: built at the first call, the same object while the environment it
    reads is unchanged (each call compares those variables: a few tens of microseconds)."""
    global _built
    seen = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(READ_PREFIXES)))
    with _lock:
        if _built is None or _built[0] != seen:
            _built = (seen, Settings())
        return _built[1]
