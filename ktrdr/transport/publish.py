"""JetStream publishing that a server restart or a cluster election does not turn into a lost event:
every publish carries a `Nats-Msg-Id`, so retrying it until the stream answers stores it once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js import api as js_api

from ktrdr.errors import KtrdrError


class NotStoredError(KtrdrError):
    code = "not_stored"


T = TypeVar("T")


class RetryCount:
    """How many times this process tried a JetStream publish or API call again (a plain integer the
    metrics collector reads at scrape time: nothing more on the publish path)."""

    count = 0


RETRIES = RetryCount()
# JSStreamDuplicateMessageIdInProcess (409): a copy of this message with the same Nats-Msg-Id is being
# stored right now (a retry raced the first try through an election): trying again gets its ack.
IN_PROCESS_ERR_CODE = 10158

# What a publish raises while no stream leader can answer (server restarting, leader election).
PUBLISH_RETRY_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.errors.ConnectionReconnectingError,
    TimeoutError,
)


async def retrying(call: Callable[[], Awaitable[T]], *, retry_for: float = 30.0,
                   errors: tuple[type[BaseException], ...] = PUBLISH_RETRY_ERRORS) -> T:
    """Run a JetStream API call, retrying with backoff for up to `retry_for` seconds while no stream
    leader can answer (a server restarting, a cluster electing a new leader after losing a node)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + retry_for
    delay = 0.05
    while True:
        try:
            return await call()
        except errors:
            if loop.time() + delay > deadline:
                raise
            RETRIES.count += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


async def publish(js: JetStreamContext, subject: str, payload: bytes, msg_id: str, *,
                  retry_for: float = 30.0, timeout: float = 2.0,
                  headers: dict[str, str] | None = None, check: Callable[[], object] | None = None) -> js_api.PubAck:
    """Store `payload` on `subject` once; retry with backoff for up to `retry_for` seconds while the
    stream cannot answer. Other errors (permission, bad request) raise at once. `headers`: more headers
    beside the Nats-Msg-Id (an event's holder proof). `check` runs before every try and stops it by
    raising (the orchestrator's leader fence: a retry must not outlive its lease)."""
    all_headers = {**(headers or {}), "Nats-Msg-Id": msg_id}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + retry_for
    delay = 0.05
    while True:
        if check is not None:
            check()
        try:
            return await js.publish(subject, payload, timeout=timeout, headers=all_headers)
        except PUBLISH_RETRY_ERRORS as exc:  # (ServiceUnavailableError is an APIError: this clause first)
            if loop.time() + delay > deadline:
                raise NotStoredError(f"nothing stored on {subject}: no stream answered within {retry_for:g} s "
                                     f"({type(exc).__name__})",
                                     hint="is the server up and the orchestrator running? see `ktrdr status`") from None
        except nats.js.errors.APIError as exc:
            if getattr(exc, "err_code", None) != IN_PROCESS_ERR_CODE or loop.time() + delay > deadline:
                raise
        RETRIES.count += 1
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)
