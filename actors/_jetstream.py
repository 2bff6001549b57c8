"""JetStream plumbing shared by actors and the CLI: connecting, the streams, publishing with
`Nats-Msg-Id`, and reading an operation's stored events back (replay).

Streams are created idempotently by whichever process needs them first; a process whose settings
differ from what the server has says so (a warning naming the field) and uses the server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, NotFoundError

from events import subjects
from events.codec import DecodeError, decode_event
from events.messages import AnyEvent
from ktrdr.config import Settings

log = logging.getLogger(__name__)

LIFECYCLE_EVENTS = ("created", "rejected", "started", "completed", "failed", "cancelled", "cancel")


async def connect(settings: Settings, name: str, url: str | None = None, **kwargs: Any) -> NATS:
    """One connection per process/actor; it reconnects forever (a server restart is not fatal)."""
    url = url or settings.nats_url
    if url is None:
        from ktrdr.embedded import current_url

        url = current_url(settings)
    opts: dict[str, Any] = {
        "servers": [url],
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 2,
        "allow_reconnect": True,
    }
    if settings.nats_user:
        opts["user"], opts["password"] = settings.nats_user, settings.nats_password
    if settings.nats_creds:
        opts["user_credentials"] = settings.nats_creds
    opts.update(kwargs)
    return await nats.connect(**opts)


def stream_configs(settings: Settings) -> list[js_api.StreamConfig]:
    return [
        js_api.StreamConfig(
            name=subjects.STREAM_CMD, subjects=[subjects.CMD_ALL],
            retention=js_api.RetentionPolicy.WORK_QUEUE, storage=js_api.StorageType.FILE,
            duplicate_window=120.0,
        ),
        js_api.StreamConfig(
            name=subjects.STREAM_WORK, subjects=[subjects.WORK_ALL],
            retention=js_api.RetentionPolicy.WORK_QUEUE, storage=js_api.StorageType.FILE,
            duplicate_window=120.0,
        ),
        js_api.StreamConfig(
            name=subjects.STREAM_OPS, subjects=[subjects.OPS_ALL],
            retention=js_api.RetentionPolicy.LIMITS, storage=js_api.StorageType.FILE,
            max_age=settings.ops_max_age_s, duplicate_window=120.0, allow_direct=True,
        ),
    ]


_COMPARED = ("subjects", "retention", "storage", "max_age", "duplicate_window")


async def ensure_streams(js: JetStreamContext, settings: Settings) -> list[str]:
    """Create CMD, WORK and OPS if missing. Returns warnings for streams whose settings differ."""
    warnings: list[str] = []
    for cfg in stream_configs(settings):
        for _ in range(3):
            try:
                info = await js.stream_info(cfg.name)
            except NotFoundError:
                try:
                    await js.add_stream(cfg)
                    break
                except BadRequestError:
                    continue  # another process created it between our two calls: compare instead
            have = info.config
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
            break
    kv_ttl = max(settings.heartbeat_s * 10, 10.0)
    try:
        await js.key_value(subjects.ACTORS_BUCKET)
    except Exception:
        try:
            await js.create_key_value(js_api.KeyValueConfig(
                bucket=subjects.ACTORS_BUCKET, history=1, ttl=kv_ttl, storage=js_api.StorageType.MEMORY))
        except BadRequestError:
            pass  # created concurrently
    return warnings


def msg_id_headers(msg_id: str) -> dict[str, str]:
    return {"Nats-Msg-Id": msg_id}


async def read_events(
    js: JetStreamContext,
    filter_subjects: list[str],
    on_msg: Callable[[str, bytes], None],
    *,
    timeout: float = 10.0,
) -> int:
    """Call on_msg(subject, data) for every stored OPS message matching the filters, in stream
    order; return how many there were. An ephemeral push consumer (no acks, flow control) on a plain
    core subscription, handled inside the subscription callback: about 1.6x the rate of nats-py's
    ordered consumer, which parses every reply subject (figures in bench/backbone.py)."""
    nc = js._nc  # the connection behind the context; nats-py exposes no public accessor
    inbox = nc.new_inbox()
    done = asyncio.Event()
    total: list[int] = []
    delivered = 0

    async def cb(msg: Msg) -> None:
        nonlocal delivered
        if not msg.data and msg.headers and "Status" in msg.headers:
            if msg.reply:  # flow control request: answer it or the server pauses delivery
                await nc.publish(msg.reply, b"")
            return
        delivered += 1
        on_msg(msg.subject, msg.data)
        if total and delivered >= total[0]:
            done.set()

    sub = await nc.subscribe(inbox, cb=cb, pending_msgs_limit=1_000_000, pending_bytes_limit=1 << 30)
    cfg = js_api.ConsumerConfig(
        deliver_subject=inbox,
        filter_subjects=filter_subjects if len(filter_subjects) > 1 else None,
        filter_subject=filter_subjects[0] if len(filter_subjects) == 1 else None,
        deliver_policy=js_api.DeliverPolicy.ALL,
        ack_policy=js_api.AckPolicy.NONE,
        flow_control=True,
        idle_heartbeat=5.0,
        mem_storage=True,
        inactive_threshold=10.0,
    )
    info = None
    try:
        info = await js.add_consumer(subjects.STREAM_OPS, cfg)
        total.append(info.num_pending or 0)
        if delivered >= total[0]:
            done.set()
        last = -1
        while not done.is_set():  # time out only when delivery stalls, not on a long replay
            try:
                await asyncio.wait_for(done.wait(), timeout)
            except TimeoutError:
                if delivered == last:
                    raise
                last = delivered
        return total[0]
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        if info is not None:
            await _delete_consumer(js, info.name)


async def _delete_consumer(js: JetStreamContext, name: str) -> None:
    try:
        await js.delete_consumer(subjects.STREAM_OPS, name)
    except Exception:  # already gone (inactive_threshold) or server away: nothing to clean
        pass


async def read_operation(js: JetStreamContext, op_id: str, *, lifecycle_only: bool = False) -> list[AnyEvent]:
    """Every stored event of one operation (decoded; undecodable ones skipped)."""
    if lifecycle_only:
        filters = [subjects.ops(op_id, e) for e in LIFECYCLE_EVENTS]
    else:
        filters = [subjects.ops(op_id)]
    out: list[AnyEvent] = []

    def on_msg(_subject: str, data: bytes) -> None:
        try:
            out.append(decode_event(data))
        except DecodeError:
            pass  # garbage published on an ops subject is not an event of this operation

    await read_events(js, filters, on_msg)
    return out


async def call_with_retry(
    fn: Callable[[], Awaitable[Any]], *, attempts: int = 5, base_delay: float = 0.1,
    cancelled: Callable[[], bool] = lambda: False,
) -> Any:
    """Retry with exponential backoff (the seed's AsyncServiceAdapter retries); a cancel stops it."""
    delay = base_delay
    for attempt in range(attempts):
        try:
            return await fn()
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError,
                TimeoutError):
            if attempt == attempts - 1 or cancelled():
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")
