"""The one pull loop: fetch from a durable JetStream consumer, hand each message to a handler, keep
going through timeouts, server restarts and handler faults. The orchestrator's command loop and
every worker's work loop are this loop with different handlers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Hashable

from nats.aio.msg import Msg
from nats.js import JetStreamContext

log = logging.getLogger(__name__)

Handler = Callable[[Msg], Awaitable[None]]
OnFault = Callable[[BaseException, str], Awaitable[None]]


async def pull_loop(
    psub: JetStreamContext.PullSubscription,
    handle: Handler,
    *,
    stopped: Callable[[], bool],
    on_fault: OnFault,
    batch: int = 1,
    slots: asyncio.Semaphore | None = None,
    fetch_timeout: float = 5.0,
    key: Callable[[Msg], Hashable | None] | None = None,
) -> None:
    """Fetch up to `batch` messages at a time and await `handle(msg)` for each, in order.

    With `slots`, a fetch of a single message waits for a free slot, and the handler owns the slot it
    takes (it releases it when the work it spawned ends): that is how a worker runs several operations
    at once without fetching more than it can start. The slot is not held through the long poll: a
    worker in several pools (gpu and any) shares its slots between one loop per pool, and a loop
    holding the only slot while it waits on an idle pool would keep the other pool's work waiting for
    the whole poll. A message fetched when the other loop took the last slot meanwhile goes back at
    once (nak) for another worker. A handler that raises gets the message nak'ed with a delay (it
    comes back later) and the loop goes on.

    With `key` (not with `slots`), a fetched batch is split by key: messages with the same key are
    handled one after another in the order fetched, distinct keys concurrently, a key of None alone;
    the next fetch waits until the whole batch is handled, so a key's messages never overlap across
    batches either. That is how the orchestrator handles many operations' commands at once and each
    operation's in order."""
    while not stopped():
        if slots is not None:
            await slots.acquire()  # wait for a free slot without holding it through the poll
            slots.release()
        try:
            msgs = await psub.fetch(batch, timeout=fetch_timeout)
        except TimeoutError:
            continue
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # server restarting or leader moving: retry shortly
            log.debug("fetch failed: %s", exc)
            await asyncio.sleep(0.5)
            continue
        if key is not None and len(msgs) > 1:
            await _handle_by_key(msgs, handle, on_fault, key)
            continue
        for msg in msgs:
            if slots is not None:
                if slots.locked():
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=0.2)
                    continue
                await slots.acquire()  # free: does not wait
            await _handle_one(msg, handle, on_fault)


async def _handle_one(msg: Msg, handle: Handler, on_fault: OnFault) -> None:
    try:
        await handle(msg)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        await on_fault(exc, f"message on {msg.subject}")
        with contextlib.suppress(Exception):
            await msg.nak(delay=1.0)


async def _handle_by_key(msgs: list[Msg], handle: Handler, on_fault: OnFault,
                         key: Callable[[Msg], Hashable | None]) -> None:
    groups: dict[Hashable, list[Msg]] = {}
    for msg in msgs:
        k = key(msg)
        groups.setdefault(("alone", id(msg)) if k is None else ("key", k), []).append(msg)

    async def in_order(group: list[Msg]) -> None:
        for msg in group:
            await _handle_one(msg, handle, on_fault)

    if len(groups) == 1:
        await in_order(msgs)
        return
    tasks = [asyncio.create_task(in_order(g)) for g in groups.values()]
    try:
        await asyncio.gather(*tasks)
    finally:  # cancelled (stopping): the others stop too, their messages unacked come back
        for t in tasks:
            t.cancel()
