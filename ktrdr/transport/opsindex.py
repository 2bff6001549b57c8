"""The operations index in KV (events.subjects.OPS_INDEX_BUCKET): what is stored under which key
(ktrdr.ops.index says which), read without a consumer and written with compare-and-set.

Reads are batched direct gets on the bucket's stream (history 1: the stream holds the newest value of
each key and a marker for a deleted one), so a reader key needs no consumer and no write right: the
hour markers `h.>` in one request (which hours have any operation: 30 days of empty hours cost
nothing), then one request per hour walked, newest first. Writes belong to the active orchestrator
(IndexWriter): a summary replaces the stored one only when it folds a later OPS event (`seq`), by
compare-and-set on the revision, so redelivery, a repair after a crash and a stale orchestrator's
late write change nothing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from collections.abc import AsyncIterator, Collection, Iterable

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import KeyDeletedError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from events import subjects
from events.codec import DecodeError, decode, encode
from events.messages import IndexMark, OpSummary
from ktrdr.ops.index import HOUR_PREFIX, LIVE_PREFIX, MARK_KEY, TIME_PREFIX, hour_key, hour_marker, keys_of, newer
from ktrdr.ops.search import WORDS_MARK_KEY, op_of_word_key, word_filter, word_key, word_keys, words_of
from ktrdr.transport.replay import walk_tail

STREAM = f"KV_{subjects.OPS_INDEX_BUCKET}"
_PREFIX = f"$KV.{subjects.OPS_INDEX_BUCKET}."
BATCH = 1000  # values per direct-get request
READ_TIMEOUT_S = 10.0
MULTI_LAST_MAX = 1024  # keys one multi-last get answers (nats-server: more is 413 Too Many Results)
WORD_BATCH = 1000  # word keys published before their acks are awaited
FILED_MAX = 20_000  # operations whose filed words the writer remembers
MARKER_TTL_S = 60.0  # a removed key's marker goes after this long (per-message TTL, nats-server 2.11+)


class IndexMissing(Exception):
    """No index to read (a stack from before it, or not built yet): read the log instead."""


def _summary(data: bytes) -> OpSummary | None:
    try:
        return decode(data, OpSummary)
    except DecodeError:
        return None  # not ours to show: the log still has the operation (ops reindex rewrites it)


async def _direct_batch(js: JetStreamContext, filter_subject: str,
                        seq: int) -> tuple[list[tuple[str, bytes]], int, int]:
    """Up to BATCH stored values on `filter_subject` from stream sequence `seq` (deletes left out, by
    their KV-Operation header), the last sequence the batch reached, and how many more match."""
    nc = js._nc  # nats-py exposes no public accessor for the connection behind a context
    got: list[tuple[str, bytes]] = []
    last = seq - 1
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def on_msg(msg: Msg) -> None:
        nonlocal last
        h = msg.headers or {}
        status = h.get("Status")
        if status is None:
            last = int(h.get("Nats-Sequence", 0))
            if h.get("KV-Operation") is None:
                got.append((h.get("Nats-Subject", "")[len(_PREFIX):], msg.data))
        elif not done.done():  # 204: end of batch (with what still matches); 404: none
            done.set_result(int(h.get("Nats-Num-Pending", 0)) if status == "204" else 0)

    sub = await nc.subscribe(nc.new_inbox(), cb=on_msg)
    try:
        request = {"seq": seq, "next_by_subj": filter_subject, "batch": BATCH}
        await nc.publish(subjects.direct_get_api(STREAM), json.dumps(request).encode(), reply=sub.subject)
        pending = await asyncio.wait_for(done, READ_TIMEOUT_S)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return got, last, pending


class _TooMany(Exception):
    """A multi-last get matched more keys than the server answers at once (MULTI_LAST_MAX)."""


async def _multi_last(js: JetStreamContext, key_filter: str | list[str]) -> list[tuple[str, bytes]]:
    """The values of the keys matching `key_filter` (a pattern, or several keys), found through the
    stream's subject index (cost: the keys matched, not the stream's length): one request; _TooMany
    beyond MULTI_LAST_MAX keys."""
    nc = js._nc
    got: list[tuple[str, bytes]] = []
    done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_msg(msg: Msg) -> None:
        h = msg.headers or {}
        status = h.get("Status")
        if status is None:
            if h.get("KV-Operation") is None:
                got.append((h.get("Nats-Subject", "")[len(_PREFIX):], msg.data))
        elif not done.done():  # 204: end of batch; 404: none; 413: too many
            done.set_result(status)

    sub = await nc.subscribe(nc.new_inbox(), cb=on_msg)
    try:
        filters = [key_filter] if isinstance(key_filter, str) else key_filter
        request = {"multi_last": [_PREFIX + f for f in filters], "batch": MULTI_LAST_MAX}
        await nc.publish(subjects.direct_get_api(STREAM), json.dumps(request).encode(), reply=sub.subject)
        status = await asyncio.wait_for(done, READ_TIMEOUT_S)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    if status == "413":
        raise _TooMany(str(key_filter))
    return got


async def read_keys(js: JetStreamContext, key_filter: str) -> list[tuple[str, bytes]]:
    """Every stored (key, value) whose key matches `key_filter`, deletes left out: by the subject
    index when they are few enough, else by walking the stream (scan)."""
    try:
        return await _multi_last(js, key_filter)
    except _TooMany:
        return await scan(js, key_filter)


async def scan(js: JetStreamContext, key_filter: str) -> list[tuple[str, bytes]]:
    """Every stored (key, value) whose key matches `key_filter` (a KV key pattern), deletes left out,
    walking the stream in batches (its length: for a filter that matches many keys)."""
    out: list[tuple[str, bytes]] = []
    seq = 1
    while True:
        got, last, pending = await _direct_batch(js, _PREFIX + key_filter, seq)
        out += got
        if not pending or last < seq:
            return out
        seq = last + 1


async def read_mark(js: JetStreamContext) -> IndexMark:
    """The watermark; IndexMissing when there is no index (no bucket, or never written)."""
    try:
        raw = await js.get_last_msg(STREAM, _PREFIX + MARK_KEY, direct=True)
    except (NotFoundError, nats.errors.NoRespondersError) as exc:
        raise IndexMissing("no operations index yet") from exc
    if not raw.data:
        raise IndexMissing("the operations index was removed")
    try:
        return decode(raw.data, IndexMark)
    except DecodeError as exc:
        raise IndexMissing(f"the index's watermark is unreadable ({exc})") from exc


async def behind(js: JetStreamContext) -> int:
    """How many lifecycle events OPS stores past the index's watermark (0: caught up); IndexMissing
    without an index."""
    mark = await read_mark(js)
    n = 0
    async with contextlib.aclosing(walk_tail(js, mark.seq + 1)) as walk:
        async for _seq, subject, _data, _proof in walk:
            n += subjects.is_lifecycle(subject)
    return n


async def hours(js: JetStreamContext) -> list[str]:
    """The hours (yyyymmddHH) that hold any operation, newest first."""
    return sorted((k[len(HOUR_PREFIX):] for k, _v in await read_keys(js, f"{HOUR_PREFIX}*")), reverse=True)


def _summaries(items: list[tuple[str, bytes]]) -> list[OpSummary]:
    return [s for _k, v in items if (s := _summary(v)) is not None]


async def in_hour(js: JetStreamContext, hour: str) -> list[OpSummary]:
    """Every summary of one hour."""
    out: list[OpSummary] = []
    async with contextlib.aclosing(hour_buckets(js, hour)) as parts:
        async for part in parts:
            out += part
    return out


async def hour_buckets(js: JetStreamContext, hour: str) -> AsyncIterator[list[OpSummary]]:
    """One hour's summaries, newest part first: the whole hour in one read when it holds few enough
    (MULTI_LAST_MAX), else minute by minute, read as asked for (a page of a busy hour stops at its
    newest minutes)."""
    try:
        yield _summaries(await _multi_last(js, f"{TIME_PREFIX}{hour}.*.*"))
        return
    except _TooMany:
        pass
    for m in range(59, -1, -1):
        yield _summaries(await read_keys(js, f"{TIME_PREFIX}{hour}.{m:02d}.*"))


async def has_words(js: JetStreamContext) -> bool:
    """Whether every summary in the index has its search words filed (ktrdr.ops.search): an index
    built by an indexer from before them has not, until `ops reindex`."""
    try:
        raw = await js.get_last_msg(STREAM, _PREFIX + WORDS_MARK_KEY, direct=True)
    except (NotFoundError, nats.errors.NoRespondersError):
        return False
    return bool(raw.data) and not (raw.headers or {}).get("KV-Operation")  # (a delete or purge marker: none)


async def ops_of_word(js: JetStreamContext, word: str, hour: str | None = None) -> list[str] | None:
    """The op ids filed under a search word (in one hour when given); None when they are more than
    one read answers (MULTI_LAST_MAX): read them hour by hour instead."""
    try:
        return [op_of_word_key(k) for k, _v in await _multi_last(js, word_filter(word, hour))]
    except _TooMany:
        if hour is None:
            return None
        return [op_of_word_key(k) for k, _v in await scan(js, word_filter(word, hour))]


async def ops_of_word_in(js: JetStreamContext, word: str, hours: list[str]) -> list[str] | None:
    """The op ids filed under a search word in these hours (one read); None when they are more than
    one read answers (MULTI_LAST_MAX)."""
    try:
        return [op_of_word_key(k) for k, _v in await _multi_last(js, [word_filter(word, h) for h in hours])]
    except _TooMany:
        return None


async def summaries_of(js: JetStreamContext, op_ids: list[str]) -> dict[str, OpSummary]:
    """The stored summaries of these operations (those that have one), by their keys: one read per
    MULTI_LAST_MAX of them."""
    out: dict[str, OpSummary] = {}
    for i in range(0, len(op_ids), MULTI_LAST_MAX):
        for _k, v in await _multi_last(js, [hour_key(o) for o in op_ids[i:i + MULTI_LAST_MAX]]):
            if (s := _summary(v)) is not None:
                out[s.op_id] = s
    return out


async def live(js: JetStreamContext) -> list[OpSummary]:
    """The summaries of the operations that have not ended."""
    return _summaries(await read_keys(js, f"{LIVE_PREFIX}*"))


async def _put_empty(js: JetStreamContext, keys: list[str]) -> None:
    """Store an empty value under each of these subjects of the bucket's stream, pipelined: every
    publish carries the reply subject `<inbox>.<n>` under one wildcard subscription, and the PubAcks
    are counted (nats-py's publish_async spends most of its time on a future and an inbox each)."""
    nc = js._nc  # nats-py exposes no public accessor for the connection behind a context
    inbox = nc.new_inbox()
    left, failed = len(keys), 0
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_ack(msg: Msg) -> None:
        nonlocal left, failed
        failed += b'"error"' in msg.data or bool(msg.headers and msg.headers.get("Status"))
        left -= 1
        if left <= 0 and not done.done():
            done.set_result(None)

    sub = await nc.subscribe(f"{inbox}.*", cb=on_ack)
    try:
        for n, key in enumerate(keys):
            await nc.publish(key, b"", reply=f"{inbox}.{n}")
        await asyncio.wait_for(done, READ_TIMEOUT_S)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    if failed:
        raise RuntimeError(f"{failed} of {len(keys)} search words not stored")


class IndexWriter:
    """The active orchestrator's writes (kv: the bucket bound with its credentials)."""

    def __init__(self, kv: KeyValue, js: JetStreamContext | None = None) -> None:
        self.kv = kv
        self.js = js  # word keys go out pipelined on its connection (else one put each)
        # op id -> (its words, ended) as last filed: words are filed again only when they change, and
        # once more when the operation ends (so they age out of the bucket no sooner than its summary)
        self.filed: collections.OrderedDict[str, tuple[tuple[str, ...], bool]] = collections.OrderedDict()
        self.revisions: dict[str, int] = {}  # op id -> revision of its hour key as we last wrote it
        self.hours: set[str] = set()  # hour markers known to exist
        self.skipped = 0  # writes not made: the stored summary already folded a later event

    async def put(self, s: OpSummary, *, live_exists: bool | None = None) -> bool:
        """Store `s` unless the stored one is as new (compare-and-set); its live key follows (not
        removed when the caller knows there is none: `live_exists` False). False when skipped."""
        key = hour_key(s.op_id)
        data = encode(s)
        rev = self.revisions.get(s.op_id)
        for _ in range(20):
            try:
                new = await (self.kv.create(key, data) if rev is None else self.kv.update(key, data, last=rev))
                break
            except Exception as exc:
                from ktrdr.transport.leases import is_cas_failure  # the writer's only: a reader starts without it

                if not is_cas_failure(exc):
                    raise
            try:  # someone else's write (an earlier run, a reindex): newer than ours?
                entry = await self.kv.get(key)
            except (KeyNotFoundError, KeyDeletedError):
                entry = None
            old = _summary(bytes(entry.value)) if entry is not None and entry.value else None
            if old is not None and not newer(old, s):
                self.skipped += 1
                self.revisions[s.op_id] = int(entry.revision)  # type: ignore[union-attr]
                await self._live(old)  # what the stored one says (a crash may have come before its live key)
                return False
            rev = int(entry.revision) if entry is not None else None
        else:
            raise RuntimeError(f"index key {key} kept changing under 20 compare-and-sets")
        self.revisions[s.op_id] = int(new)
        await self._live(s, data, removing=live_exists is not False)
        if s.status in ("completed", "failed", "cancelled", "rejected"):
            self.revisions.pop(s.op_id, None)
        hour = hour_marker(s.op_id)
        if hour not in self.hours:
            with contextlib.suppress(Exception):  # exists already: fine
                await self.kv.create(hour, b"")
            self.hours.add(hour)
        return True

    async def _live(self, s: OpSummary, data: bytes | None = None, *, removing: bool = True) -> None:
        """The live key as `s` says: the summary while not ended, none after."""
        put, drop = keys_of(s)
        for k in put[1:]:  # (put[0]: the hour key)
            await self.kv.put(k, data if data is not None else encode(s))
        if not removing or (s.status == "rejected" and s.created_at is None):
            return  # none to remove (rejected at intake never had one)
        for k in drop:
            await self.remove(k)

    async def put_all(self, summaries: Iterable[OpSummary], *, concurrency: int = 64,
                      without_live: Collection[str] = ()) -> int:
        """Store many (each as put; `without_live`: op ids known to have no live key); how many were
        written."""
        sem = asyncio.Semaphore(concurrency)

        async def one(s: OpSummary) -> bool:
            async with sem:
                return await self.put(s, live_exists=False if s.op_id in without_live else None)

        return sum(await asyncio.gather(*(one(s) for s in summaries)))

    async def file_words(self, summaries: Iterable[OpSummary]) -> int:
        """File the summaries' search words (an empty key each, ktrdr.ops.search.word_key); called
        before the summaries are stored, so a word is never missing for a stored summary (a kill -9
        in between leaves words whose summary the next activation stores: a search checks each
        candidate against its summary). How many keys were written."""
        keys: list[str] = []
        done: list[tuple[str, tuple[tuple[str, ...], bool]]] = []
        for s in summaries:
            state = (tuple(words_of(s)), s.status in ("completed", "failed", "cancelled", "rejected"))
            if self.filed.get(s.op_id) != state:
                keys += [word_key(w, s.op_id) for w in state[0]]
                done.append((s.op_id, state))
        for i in range(0, len(keys), WORD_BATCH):
            chunk = keys[i:i + WORD_BATCH]
            if self.js is None:
                await asyncio.gather(*(self.kv.put(k, b"") for k in chunk))
            else:  # (an error raises: the batch is not acked, so it is indexed again)
                await _put_empty(self.js, [_PREFIX + k for k in chunk])
        for op_id, state in done:
            self.filed[op_id] = state
            self.filed.move_to_end(op_id)
        while len(self.filed) > FILED_MAX:
            self.filed.popitem(last=False)
        return len(keys)

    async def remove_words(self, s: OpSummary) -> None:
        for k in word_keys([s]):
            await self.remove(k)
        self.filed.pop(s.op_id, None)

    async def mark_words(self) -> None:
        """Say that every summary in the index has its words filed (a search may trust them)."""
        await self.kv.put(WORDS_MARK_KEY, b"1")

    async def mark(self, mark: IndexMark) -> None:
        await self.kv.put(MARK_KEY, encode(mark))

    async def remove(self, key: str) -> None:
        """Remove a key: a purge whose marker expires itself (MARKER_TTL_S), so reading `live.*`
        costs the live operations, not a marker for every one that ever ended."""
        await self.kv.purge(key, msg_ttl=MARKER_TTL_S)
