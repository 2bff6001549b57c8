"""The one pull loop: fetch from a durable JetStream consumer, hand each message to a handler, keep
going through timeouts, server restarts and handler faults. The orchestrator's command loop and
every worker's work loop (priority_pull_loop: the same loop over one consumer per priority) are this
loop with different handlers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from events import subjects

log = logging.getLogger(__name__)

Handler = Callable[[Msg], Awaitable[None]]
OnFault = Callable[[BaseException, str], Awaitable[None]]


@dataclass(frozen=True)
class Consumer:
    """A durable pull consumer, named by its stream and its name, on the connection that pulls it."""

    nc: NATS
    stream: str
    name: str

    @property
    def next_api(self) -> str:
        return subjects.next_msg_api(self.stream, self.name)


async def fetch(consumer: Consumer, batch: int, expires_s: float) -> list[Msg]:
    """Up to `batch` messages of `consumer`, as soon as any is stored (within `expires_s`, else
    TimeoutError): one pull request, no_wait with an expiry (the server answers as soon as it has
    any message, sends what it has then, and ends the request with a status), on an inbox of its
    own unsubscribed when it ends.

    Not nats-py's PullSubscription.fetch: its pulls of a batch share one inbox, so the status of an
    earlier pull that expired after the client gave up (the client's clock runs out first whenever
    the request reaches the server later than 0.1 ms after the fetch began: a loaded host) is taken
    as the answer to the next fetch's first pull; that fetch then sends a second, lingering pull for
    the whole batch, which outlives it. The next message goes to that orphan, which then waits for
    the rest of its batch and sends no status, so the fetch that received the message keeps waiting
    too: until the consumer's ack wait redelivers it (CMD: 2 s, then handled twice, the second as a
    duplicate) or the orphan expires. That was the 1.8-2.4 s stall of some operations between their
    command and `created` (bench/stall.py; tests/actors/test_pull.py). Here a status is read only by
    the pull it answers."""
    loop = asyncio.get_running_loop()
    replies: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_reply(msg: Msg) -> None:
        replies.put_nowait(msg)

    sub = await consumer.nc.subscribe(consumer.nc.new_inbox(), cb=on_reply)
    msgs: list[Msg] = []
    try:
        req = {"batch": batch, "expires": int(expires_s * 1e9), "no_wait": True}
        await consumer.nc.publish(consumer.next_api, json.dumps(req).encode(), reply=sub.subject)
        # the server's expiry first; a server away answers nothing (a message delivered after this
        # gives up, to an inbox with no interest left, is redelivered after the ack wait)
        deadline = loop.time() + expires_s + NO_WAIT_TIMEOUT_S
        while len(msgs) < batch:
            try:
                msg = await asyncio.wait_for(replies.get(), max(deadline - loop.time(), 0.0))
            except TimeoutError:
                break
            status = (msg.headers or {}).get("Status")
            if status is None:
                msgs.append(msg)
            elif status in ("404", "408"):  # nothing (more) stored / the request expired
                break
            elif status != "100":  # 100: a heartbeat (not asked for)
                raise RuntimeError(f"pull from {consumer.name}: {status} "
                                   f"{(msg.headers or {}).get('Description', '')}")
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    if not msgs:
        raise TimeoutError
    return msgs


async def pull_loop(
    consumer: Consumer,
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
            await _free_slot(slots)
        try:
            msgs = await fetch(consumer, batch, fetch_timeout)
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
            if slots is not None and not await _take_slot(msg, slots):
                continue
            await _handle_one(msg, handle, on_fault)


async def _free_slot(slots: asyncio.Semaphore) -> None:
    """Wait for a free slot without holding it through the poll that follows."""
    await slots.acquire()
    slots.release()


async def _take_slot(msg: Msg, slots: asyncio.Semaphore) -> bool:
    """Take a slot for a fetched message, or send the message back at once (nak) for another worker
    when another pool's loop took the last slot meanwhile; whether it was taken."""
    if slots.locked():
        with contextlib.suppress(Exception):
            await msg.nak(delay=0.2)
        return False
    await slots.acquire()  # free: does not wait
    return True


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


# ---------------------------------------------------------------------------------------------- priorities
@dataclass
class Level:
    """One priority of one pool: its durable consumer, and since when this worker has seen items
    queued there while it took higher ones (monotonic; None: not seen waiting)."""

    priority: str
    rank: int  # 0 high, 1 normal, 2 low
    stream: str
    consumer: str
    waiting_since: float | None = None
    # The inbox its no_wait pulls are answered on (_pull_now), made at the first one.
    inbox: str = ""
    sub: Any = None
    replies: asyncio.Queue[Msg] | None = None

    @property
    def next_api(self) -> str:
        return subjects.next_msg_api(self.stream, self.consumer)

    def effective_rank(self, now: float, aging_s: float) -> int:
        """Its rank, one level higher for each `aging_s` it has waited (events.bounds.PRIORITY_AGING_S)."""
        if self.waiting_since is None:
            return self.rank
        return max(0, self.rank - int((now - self.waiting_since) / aging_s))


def take_order(levels: list[Level], now: float, aging_s: float) -> list[Level]:
    """The order a worker asks its levels in: by effective rank, and among equals the one waiting longest
    (an aged low level before the normal one it was raised to)."""
    return sorted(levels, key=lambda lv: (lv.effective_rank(now, aging_s),
                                          lv.waiting_since if lv.waiting_since is not None else now, lv.rank))


async def pull_next(nc: NATS, level: Level, expires_s: float | None) -> Msg | None:
    """One message of `level`'s consumer, or None: at once when nothing is queued (`expires_s` None:
    a no_wait pull, on the level's own inbox kept for the loop's life: the server answers it at once,
    a message or 404), else within `expires_s`. A waiting request has its own inbox, unsubscribed when
    it ends: cancelled (another level answered first), the server drops the request (its reply
    subject has no interest left), so a message is not delivered to a worker that no longer waits for
    it. One delivered in the instant between is redelivered after the ack wait (worker_timeout_s)."""
    if expires_s is None:
        return await _pull_now(nc, level)
    loop = asyncio.get_running_loop()
    got: asyncio.Future[Msg] = loop.create_future()

    async def on_msg(msg: Msg) -> None:
        if not got.done():
            got.set_result(msg)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_msg)
    try:
        req = {"batch": 1, "expires": int(expires_s * 1e9)}
        await nc.publish(level.next_api, json.dumps(req).encode(), reply=inbox)
        msg = await asyncio.wait_for(got, expires_s + NO_WAIT_TIMEOUT_S)
    except TimeoutError:
        return None
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return _message_or_none(level, msg)


async def _pull_now(nc: NATS, level: Level) -> Msg | None:
    """A no_wait pull on the level's own inbox (one subscription for the loop's life: a subscribe and
    unsubscribe per pull cost about twice the round trip, measured). An answer that came after its
    pull gave up (a slow server) is taken first: a message is this worker's to run, a status moot."""
    if level.replies is None:
        replies: asyncio.Queue[Msg] = asyncio.Queue()
        level.inbox = nc.new_inbox()

        async def on_reply(msg: Msg) -> None:
            replies.put_nowait(msg)

        level.sub = await nc.subscribe(level.inbox, cb=on_reply)
        level.replies = replies
    while not level.replies.empty():
        late = _message_or_none(level, level.replies.get_nowait(), strict=False)
        if late is not None:
            return late
    await nc.publish(level.next_api, b'{"batch":1,"no_wait":true}', reply=level.inbox)
    try:  # a no_wait pull always answers: none in time is a server away (the loop waits and asks again)
        msg = await asyncio.wait_for(level.replies.get(), NO_WAIT_TIMEOUT_S)
    except TimeoutError:
        raise ConnectionError(f"no answer to a pull from {level.consumer}") from None
    return _message_or_none(level, msg)


def _message_or_none(level: Level, msg: Msg, strict: bool = True) -> Msg | None:
    status = (msg.headers or {}).get("Status")
    if status is None:
        return msg
    if status in ("404", "408") or not strict:  # nothing queued / the request expired
        return None
    raise RuntimeError(f"pull from {level.consumer}: {status} {(msg.headers or {}).get('Description', '')}")


NO_WAIT_TIMEOUT_S = 2.0  # a pull request's answer beyond its own expiry (a server away answers none)


async def priority_pull_loop(
    nc: NATS,
    js: JetStreamContext,
    levels: list[Level],
    handle: Handler,
    *,
    stopped: Callable[[], bool],
    on_fault: OnFault,
    slots: asyncio.Semaphore,
    aging_s: float,
    fetch_timeout: float = 5.0,
) -> None:
    """pull_loop with priorities: each time a slot is free, ask the levels (one durable consumer each)
    in take_order with a no_wait pull each and take the first message; with nothing queued anywhere,
    long-poll every level at once and take whichever answers first (the others are withdrawn), so an
    idle worker starts new work of any priority as soon as it is stored. A normal item on an idle
    worker costs what it did: the long poll of its own consumer.

    Starvation: after taking an item of one level, the worker reads (off the path that starts the
    item) how many items the lower levels hold undelivered, and marks a level waiting from then until
    it takes one of its items or finds it empty; a waiting level rises one rank each `aging_s`."""
    by_rank = sorted(levels, key=lambda lv: lv.rank)
    aging: set[asyncio.Task[None]] = set()
    try:
        await _take_loop(nc, js, by_rank, handle, stopped, on_fault, slots, aging_s, fetch_timeout, aging)
    finally:
        for level in by_rank:
            if level.sub is not None:
                with contextlib.suppress(Exception):
                    await level.sub.unsubscribe()
                level.sub, level.replies = None, None


async def _take_loop(nc: NATS, js: JetStreamContext, by_rank: list[Level], handle: Handler,
                     stopped: Callable[[], bool], on_fault: OnFault, slots: asyncio.Semaphore, aging_s: float,
                     fetch_timeout: float, aging: set[asyncio.Task[None]]) -> None:
    while not stopped():
        await _free_slot(slots)
        try:
            taken = await _scan(nc, take_order(by_rank, time.monotonic(), aging_s))
            if taken is None:
                taken = await _idle_poll(nc, by_rank, fetch_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # server restarting or leader moving: retry shortly
            log.debug("priority fetch failed: %s", exc)
            await asyncio.sleep(0.5)
            continue
        if taken is None:
            continue
        level, msg = taken
        if not await _take_slot(msg, slots):
            continue
        level.waiting_since = None
        lower = [lv for lv in by_rank if lv.rank > level.rank]
        if lower:
            t = asyncio.create_task(_mark_waiting(js, lower, time.monotonic()))
            aging.add(t)
            t.add_done_callback(aging.discard)
        await _handle_one(msg, handle, on_fault)


async def _scan(nc: NATS, order: list[Level]) -> tuple[Level, Msg] | None:
    for level in order:
        msg = await pull_next(nc, level, None)
        if msg is not None:
            return level, msg
    return None


async def _idle_poll(nc: NATS, levels: list[Level], expires_s: float) -> tuple[Level, Msg] | None:
    polls = {asyncio.create_task(pull_next(nc, lv, expires_s)): lv for lv in levels}
    try:
        pending: set[asyncio.Task[Msg | None]] = set(polls)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            got = sorted(((polls[t], t.result()) for t in done if t.exception() is None and t.result() is not None),
                         key=lambda p: p[0].rank)
            if got:
                for _lv, extra in got[1:]:  # two at once (rare): the first is taken, the others go back
                    with contextlib.suppress(Exception):
                        await extra.nak()
                return got[0]
            failed = next((t.exception() for t in done if t.exception() is not None), None)
            if failed is not None:
                raise failed
        return None
    finally:
        # The others are withdrawn without waiting for them to wind down (each unsubscribes its inbox):
        # awaiting them here held the item taken ~1 ms longer (bench/priority_pull.py, idle worker).
        for t in polls:
            if not t.done():
                t.cancel()
                _withdrawn.add(t)
                t.add_done_callback(_forget_withdrawn)


_withdrawn: set[asyncio.Task[Msg | None]] = set()  # withdrawn polls still winding down (kept referenced)


def _forget_withdrawn(t: asyncio.Task[Msg | None]) -> None:
    _withdrawn.discard(t)
    if not t.cancelled() and t.exception() is not None:  # retrieved: a poll's failure after its withdrawal is moot
        log.debug("withdrawn poll ended with %s", t.exception())


async def _mark_waiting(js: JetStreamContext, lower: list[Level], at: float) -> None:
    for level in lower:
        try:
            info = await js.consumer_info(level.stream, level.consumer)
        except Exception as exc:  # the next take asks again
            log.debug("consumer info of %s: %s", level.consumer, exc)
            continue
        if (info.num_pending or 0) > 0:
            if level.waiting_since is None:
                level.waiting_since = at
        else:
            level.waiting_since = None
