"""JetStream plumbing shared by actors and the CLI: connecting, the streams, publishing with
`Nats-Msg-Id`, and reading an operation's stored events back (replay).

Streams are created idempotently by whichever process needs them first; a process whose settings
differ from what the server has says so (a warning naming the field) and uses the server's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client as NATS
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
    *,
    batch: int = 2000,
    timeout: float = 2.0,
) -> AsyncIterator[tuple[str, bytes]]:
    """Yield (subject, data) of every stored OPS message matching the filters, in stream order, then
    stop. Uses an ephemeral in-memory pull consumer that the server drops on its own."""
    cfg = js_api.ConsumerConfig(
        filter_subjects=filter_subjects if len(filter_subjects) > 1 else None,
        filter_subject=filter_subjects[0] if len(filter_subjects) == 1 else None,
        deliver_policy=js_api.DeliverPolicy.ALL,
        ack_policy=js_api.AckPolicy.NONE,
        mem_storage=True,
        inactive_threshold=10.0,
        max_ack_pending=-1,
    )
    info = await js.add_consumer(subjects.STREAM_OPS, cfg)
    remaining = info.num_pending
    if remaining == 0:
        await _delete_consumer(js, info.name)
        return
    sub = await js.pull_subscribe_bind(consumer=info.name, stream=subjects.STREAM_OPS,
                                       pending_msgs_limit=batch * 4)
    try:
        while remaining > 0:
            try:
                msgs = await sub.fetch(min(batch, remaining), timeout=timeout)
            except TimeoutError:
                break
            for m in msgs:
                yield m.subject, m.data
            pending = msgs[-1].metadata.num_pending if msgs else 0
            remaining = pending
    finally:
        await sub.unsubscribe()
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
    async for _subject, data in read_events(js, filters):
        try:
            out.append(decode_event(data))
        except DecodeError:
            continue
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
