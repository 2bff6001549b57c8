"""The streams and buckets, created idempotently by whichever process needs them first: the streams
CMD, WORK, OPS, OPS_CANCELS, SCHEDULES (with allow_msg_schedules: nats-server fires the schedules); the
KV buckets ACTORS, LEASES, SERIES, PACING; the object buckets BARS, MODELS, CHECKPOINTS
(file storage, settings.replicas; CHECKPOINTS keeps an object at most ops_max_age_s, so the checkpoint
of an operation that ended without its trainer, killed for good, does not stay forever).

A process whose settings differ from what the server has says so (a warning naming the field) and
uses the server's. OPS has a byte limit as well as an age limit (so a flood of events cannot fill the
server's disk) and a per-subject cap, which is each operation's event budget per event type.

Users write to OPS's neighbour, never to OPS: OPS_CANCELS takes `ops.*.*.cancel` (the one ops subject a CLI
key may publish), each message at most a bounded CancelOperation's size, a few per operation, its own
byte limit (oldest dropped), so no flood of cancels pushes an event of any operation out of OPS (the
orchestrator records each cancel it honours in OPS as CancelRequested). OPS's consumers are capped
(ops_max_consumers, stream-wide) and one nobody reads goes away after ops_consumer_inactive_s (the
stream's consumer_limits, which also bound what a consumer may ask for); a reader key may make only
ephemeral ones (events/permissions.py), and a read that finds the cap reached reads by direct gets
instead (ktrdr.transport.replay), so a key that fills it stops no read of the system's. A store made
before these existed (OPS on `ops.>`) is migrated by the provisioner: OPS's subjects become its list
(nothing stored is lost: the old cancels stay readable) and its consumer limits are set, then
OPS_CANCELS is made.

CMD is bounded (QUEUE_MAX_BYTES, new messages refused when full): a CLI key that fills it makes the
server refuse new commands until the orchestrator has taken the queue (it acks each as it creates the
operation), and queued work is never dropped; per-subject bounds would not help (one subject per verb).
"""

from __future__ import annotations

import json
import logging

from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.object_store import OBJ_STREAM_TEMPLATE

from events import subjects
from events.bounds import MAX_CANCEL_BYTES, SCHEDULE_HISTORY
from ktrdr.config import Settings

log = logging.getLogger(__name__)


# CMD and WORK hold what waits to be done: bounded, refusing new messages when full rather than
# dropping queued work (a flood of commands cannot fill the server's disk).
QUEUE_MAX_BYTES = 256 << 20


def stream_configs(settings: Settings) -> list[js_api.StreamConfig]:
    replicas = settings.replicas
    return [
        js_api.StreamConfig(
            name=subjects.STREAM_CMD, subjects=[subjects.CMD_ALL],
            retention=js_api.RetentionPolicy.WORK_QUEUE, storage=js_api.StorageType.FILE,
            duplicate_window=120.0, num_replicas=replicas, max_msg_size=1 << 20, max_bytes=QUEUE_MAX_BYTES,
            discard=js_api.DiscardPolicy.NEW,
        ),
        js_api.StreamConfig(
            name=subjects.STREAM_WORK, subjects=[subjects.WORK_ALL],
            retention=js_api.RetentionPolicy.WORK_QUEUE, storage=js_api.StorageType.FILE,
            duplicate_window=120.0, num_replicas=replicas, max_msg_size=1 << 20, max_bytes=QUEUE_MAX_BYTES,
            discard=js_api.DiscardPolicy.NEW,
        ),
        js_api.StreamConfig(
            name=subjects.STREAM_OPS, subjects=list(subjects.OPS_SUBJECTS),
            retention=js_api.RetentionPolicy.LIMITS, storage=js_api.StorageType.FILE,
            max_age=settings.ops_max_age_s, max_bytes=settings.ops_max_bytes,
            max_msgs_per_subject=settings.ops_max_events_per_subject,
            discard=js_api.DiscardPolicy.OLD, duplicate_window=120.0, allow_direct=True,
            num_replicas=replicas, max_consumers=settings.ops_max_consumers,
            consumer_limits=js_api.StreamConsumerLimits(inactive_threshold=settings.ops_consumer_inactive_s),
        ),
        js_api.StreamConfig(
            name=subjects.STREAM_CANCELS, subjects=[subjects.CANCEL_ALL],
            retention=js_api.RetentionPolicy.LIMITS, storage=js_api.StorageType.FILE,
            max_age=settings.ops_max_age_s, max_bytes=settings.cancels_max_bytes,
            max_msgs_per_subject=settings.cancels_per_op, max_msg_size=MAX_CANCEL_BYTES,
            discard=js_api.DiscardPolicy.OLD, duplicate_window=120.0, allow_direct=True,
            num_replicas=replicas,
        ),
    ]


# SCHEDULES (issue 22): schedule definitions, the firings nats-server stores for them, and the
# orchestrator's record of each. No age limit: a definition stays until removed; each subject keeps its
# last SCHEDULE_HISTORY messages (a definition is one, the server rolls it up).
SCHEDULES_MAX_BYTES = 256 << 20


def schedules_config(settings: Settings) -> dict[str, object]:
    """SCHEDULES' configuration as the JetStream API takes it: `allow_msg_schedules` (nats-server 2.12+)
    is a field nats-py's StreamConfig does not know, so this stream is created by the raw request."""
    cfg = js_api.StreamConfig(
        name=subjects.STREAM_SCHEDULES, subjects=list(subjects.SCHEDULES_SUBJECTS),
        retention=js_api.RetentionPolicy.LIMITS, storage=js_api.StorageType.FILE,
        max_msgs_per_subject=SCHEDULE_HISTORY, max_bytes=SCHEDULES_MAX_BYTES, max_msg_size=1 << 20,
        discard=js_api.DiscardPolicy.OLD, duplicate_window=120.0, allow_direct=True, allow_rollup_hdrs=True,
        num_replicas=settings.replicas,
    ).as_dict()
    cfg["allow_msg_schedules"] = True
    return cfg


async def stream_api(js: JetStreamContext, call: str, body: dict[str, object] | None = None) -> dict[str, object]:
    """A raw JetStream API request (`STREAM.CREATE.<name>`, `STREAM.INFO.<name>`): its JSON answer."""
    prefix = getattr(js, "_prefix", subjects.JS_API)
    nc = js._nc  # type: ignore[attr-defined]  # nats-py keeps the connection here; no public accessor
    msg = await nc.request(f"{prefix}.{call}", json.dumps(body or {}).encode(), timeout=5.0)
    return json.loads(msg.data)


async def _ensure_schedules(js: JetStreamContext, settings: Settings) -> list[str]:
    try:
        info = await stream_api(js, f"STREAM.INFO.{subjects.STREAM_SCHEDULES}")
    except Exception as exc:  # a role that may not see it: it never uses it
        log.debug("stream %s not visible to this process: %s", subjects.STREAM_SCHEDULES, exc)
        return []
    if "error" in info:
        answer = await stream_api(js, f"STREAM.CREATE.{subjects.STREAM_SCHEDULES}", schedules_config(settings))
        err = answer.get("error")
        if isinstance(err, dict) and err.get("err_code") != 10058:  # 10058: created concurrently
            msg = f"stream {subjects.STREAM_SCHEDULES} not created: {err.get('description', err)}"
            log.warning(msg)
            return [msg]
        return []
    cfg = info.get("config")
    if isinstance(cfg, dict) and not cfg.get("allow_msg_schedules"):
        msg = (f"stream {subjects.STREAM_SCHEDULES} exists without allow_msg_schedules (a server older than "
               "2.12?): schedules will not fire")
        log.warning(msg)
        return [msg]
    return []


_COMPARED = ("subjects", "retention", "storage", "max_age", "duplicate_window", "max_bytes",
             "max_msgs_per_subject", "max_msg_size", "max_consumers")
# Limits a provisioner brings an older stream up to (a store made before they existed had none).
_UPGRADED = ("max_bytes", "max_msgs_per_subject", "discard")


async def _upgrade(js: JetStreamContext, cfg: js_api.StreamConfig,
                   have: js_api.StreamConfig) -> js_api.StreamConfig:
    """Bring a stream made by an earlier version up to this one's limits and subjects."""
    changed: list[str] = []
    if have.max_bytes in (None, -1) and cfg.max_bytes not in (None, -1):
        for n in _UPGRADED:  # the byte limit with its discard policy (NEW for a queue: never drop work)
            setattr(have, n, getattr(cfg, n))
        changed += _UPGRADED
    if cfg.subjects and sorted(have.subjects or []) != sorted(cfg.subjects):
        # OPS on `ops.>` (before OPS_CANCELS): narrowed to its event names, so OPS_CANCELS can take cancels.
        # A stream keeps what it stored when its subjects change: no event is lost.
        have.subjects = list(cfg.subjects)
        changed.append("subjects")
    if cfg.max_consumers not in (None, -1) and have.max_consumers in (None, -1):
        # The consumer cap and limits (a store made before them: OPS, whose durable-free consumers
        # may take a cap; a stream's cap can be set, never lowered below the consumers it has).
        have.max_consumers, have.consumer_limits = cfg.max_consumers, cfg.consumer_limits
        changed += ["max_consumers", "consumer_limits"]
    if not changed:
        return have
    info = await js.update_stream(have)
    log.info("stream %s: upgraded (%s)", cfg.name, ", ".join(changed))
    return info.config


async def _ensure_stream(js: JetStreamContext, cfg: js_api.StreamConfig, upgrade: bool) -> list[str]:
    warnings: list[str] = []
    for _ in range(3):
        try:
            info = await js.stream_info(cfg.name)
        except NotFoundError:
            try:
                await js.add_stream(cfg)
                return warnings
            except BadRequestError:
                continue  # another process created it between our two calls: compare instead
        have = info.config
        if upgrade:
            have = await _upgrade(js, cfg, have)
        for name in _COMPARED:
            want, got = getattr(cfg, name), getattr(have, name)
            if want is None:
                continue  # the server's default: nothing asked for
            if isinstance(want, float) and isinstance(got, float) and abs(want - got) < 1e-3:
                continue
            if want != got:
                msg = (f"stream {cfg.name} exists with {name}={got!r}; this process wants {want!r}; "
                       f"using the server's (delete or edit the stream to change it)")
                log.warning(msg)
                warnings.append(msg)
        return warnings
    return warnings


async def _ensure_kv(js: JetStreamContext, cfg: js_api.KeyValueConfig) -> None:
    try:
        await js.key_value(cfg.bucket)
    except Exception:
        try:
            await js.create_key_value(cfg)
        except BadRequestError:
            pass  # created concurrently


async def _ensure_objects(js: JetStreamContext, bucket: str, replicas: int, ttl: float | None = None) -> None:
    try:
        await js.stream_info(OBJ_STREAM_TEMPLATE.format(bucket=bucket))
        return
    except NotFoundError:
        pass
    except Exception as exc:  # a role that may not see this bucket (it never uses it): not fatal
        log.debug("object bucket %s not visible to this process: %s", bucket, exc)
        return
    try:
        await js.create_object_store(bucket, config=js_api.ObjectStoreConfig(
            storage=js_api.StorageType.FILE, replicas=replicas, ttl=ttl))
    except BadRequestError:
        pass  # created concurrently


async def check_streams(js: JetStreamContext) -> None:
    """For a process that does not provision: the streams must exist (NotFoundError otherwise, and
    the caller tries again later). Every role may read stream info, nobody but the orchestrator
    creates."""
    for name in subjects.STREAMS:
        await js.stream_info(name)


async def ensure_streams(js: JetStreamContext, settings: Settings, *, upgrade: bool = False) -> list[str]:
    """Create CMD, WORK, OPS, OPS_CANCELS and the KV buckets if missing (in that order: OPS gives up
    the cancel subjects before OPS_CANCELS takes them). Returns
    warnings for streams whose settings differ from this process's. With `upgrade` (the
    orchestrator), a stream made before a limit existed gets it (byte limits, the per-operation event
    budget), and OPS on `ops.>` gets its list of subjects."""
    warnings: list[str] = []
    for cfg in stream_configs(settings):
        warnings += await _ensure_stream(js, cfg, upgrade)
    warnings += await _ensure_schedules(js, settings)
    kv_ttl = max(settings.heartbeat_s * 10, 10.0)
    # File storage, with a TTL: presence must survive a server restart (a memory bucket vanishes with
    # the server, and with it every actor's record until each beats again into a bucket nobody made).
    await _ensure_kv(js, js_api.KeyValueConfig(
        bucket=subjects.ACTORS_BUCKET, history=1, ttl=kv_ttl, storage=js_api.StorageType.FILE,
        replicas=settings.replicas))
    await _ensure_kv(js, js_api.KeyValueConfig(
        bucket=subjects.LEASES_BUCKET, history=1, storage=js_api.StorageType.FILE, replicas=settings.replicas))
    await _ensure_kv(js, js_api.KeyValueConfig(  # series writer leases: apart, so workers never write LEASES
        bucket=subjects.SERIES_BUCKET, history=1, storage=js_api.StorageType.FILE, replicas=settings.replicas))
    await _ensure_kv(js, js_api.KeyValueConfig(  # derived from OPS: its summaries age out with it
        bucket=subjects.OPS_INDEX_BUCKET, history=1, ttl=settings.ops_max_age_s, direct=True,
        storage=js_api.StorageType.FILE, replicas=settings.replicas))
    await _ensure_kv(js, js_api.KeyValueConfig(
        bucket=subjects.PACING_BUCKET, history=1, storage=js_api.StorageType.FILE, replicas=settings.replicas))
    await _ensure_objects(js, subjects.BARS_BUCKET, settings.replicas)
    await _ensure_objects(js, subjects.MODELS_BUCKET, settings.replicas)
    await _ensure_objects(js, subjects.CHECKPOINTS_BUCKET, settings.replicas, ttl=settings.ops_max_age_s)
    return warnings
