"""The last message of every subject under a filter (a KV bucket's live keys, an object bucket's meta
records), read by one ordered consumer that delivers last-per-subject.

Why not nats-py's `kv.keys()`: it decides "nothing there" from the client's count of delivered
messages, taken just after the consumer is made; on a loaded host the server has already pushed every
message but none has reached the callback yet, so it reports no keys while the bucket holds them (the
fuzz test saw `live_actors()` empty with four actors alive). Here the server says: the read ends at the
message whose metadata says nothing is pending after it, or when the consumer's own info says nothing
is pending and it has delivered exactly what arrived (nothing, for an empty bucket).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from nats.js import JetStreamContext
from nats.js import api as js_api

__all__ = ["last_per_subject", "live_kv_values"]

_KV_OPERATION = "KV-Operation"
_MARKER_REASON = "Nats-Marker-Reason"  # nats-server 2.11+: a TTL / purge / remove marker


async def last_per_subject(js: JetStreamContext, stream: str, subject: str, *,
                           timeout: float = 30.0) -> list[Any]:
    """The last stored message of each subject matching `subject` in `stream` (headers included)."""
    out: list[Any] = []
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_msg(msg: Any) -> None:
        if done.done():
            return
        out.append(msg)
        if msg.metadata.num_pending == 0:
            done.set_result(None)

    sub = await js.subscribe(subject, cb=on_msg, ordered_consumer=True, stream=stream,
                             deliver_policy=js_api.DeliverPolicy.LAST_PER_SUBJECT)
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while True:
            # The server's count, not the client's: `consumer_seq` is what it has delivered to us (its
            # `stream_seq` is first_seq - 1 on a stream whose messages all expired, never 0).
            info = await sub.consumer_info()
            if info.num_pending == 0 and (info.delivered.consumer_seq if info.delivered else 0) == len(out):
                return out  # all it will deliver has arrived (none at all: nothing matches)
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(f"{stream}: {subject} not read within {timeout} s")
            with contextlib.suppress(TimeoutError):
                # done, or ask again: a message that expires once counted as pending is never sent
                await asyncio.wait_for(asyncio.shield(done), min(left, 1.0))
                return out
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def live_kv_values(js: JetStreamContext, bucket: str, *, timeout: float = 30.0) -> dict[str, bytes]:
    """key -> value of every live key of KV `bucket` (deleted, purged and expired keys left out)."""
    pre = f"$KV.{bucket}."
    out: dict[str, bytes] = {}
    for msg in await last_per_subject(js, f"KV_{bucket}", f"{pre}>", timeout=timeout):
        headers = msg.headers or {}
        if headers.get(_KV_OPERATION) in ("DEL", "PURGE") or _MARKER_REASON in headers or not msg.data:
            continue
        out[msg.subject[len(pre):]] = msg.data
    return out
