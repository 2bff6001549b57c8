"""Bytes that hosts need, over NATS: the byte layer of the JetStream Object Store buckets.

| bucket | object name | its store (beside the domain it serves) |
|---|---|---|
| BARS | `<SYMBOL>/<TF>` (manifest), `<SYMBOL>/<TF>/<period>.<gen>.<hex>` | ktrdr.data.bars_store |
| MODELS | `<strategy>/<KEY>_v<N>/<file>`, pointer `<strategy>/<KEY>_latest` | ktrdr.training.model_store.ModelStore |
| CHECKPOINTS | `<op_id>/latest` | ktrdr.training.checkpoint_store.CheckpointStore |

This module knows objects, not what they hold: stat, fetch, get, put (plain or conditional), delete and
list, by bucket and name. The stores build object names from validated parts only, and no local path
is ever built from one.

This layer writes nats-py's object format (same subjects, meta record and SHA-256 digest, so the
`nats object` tools and nats-py's ObjectStore read it) with three differences, measured in
bench/objects.py: `get` collects the chunks with a callback into one buffer, or streams them into a
cache file (nats-py appends bytes to bytes per chunk: 12 s for a 60 MB series against 0.2 s here);
chunks are 512 KiB (NATS's max_payload is 1 MB); and a put can be conditional (its meta record carries
Nats-Expected-Last-Subject-Sequence), which makes a series write compare-and-set and a model version
claim atomic. Every publish carries a Nats-Msg-Id and is retried through a leader election.

Nothing here purges (issue 18, F5): a purge's filter is in its payload, so whoever may purge one object
of a bucket may purge the whole bucket, and no role is granted one (events/permissions.py). The chunks of
a replaced or deleted object are retired instead by one empty message on their own chunk subject with
`Nats-Rollup: sub` (object streams allow rollups): the server drops every older message on that
subject, and what stays is that one marker, which no meta record points to. A writer's key can retire
only the chunk subjects it names, one object per publish.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError
from nats.js.kv import MSG_ROLLUP_SUBJECT
from nats.js.object_store import (
    OBJ_ALL_META_PRE_TEMPLATE,
    OBJ_CHUNKS_PRE_TEMPLATE,
    OBJ_META_PRE_TEMPLATE,
    OBJ_STREAM_TEMPLATE,
)
from nats.nuid import NUID

from events import subjects
from ktrdr.errors import DataError, KtrdrError
from ktrdr.transport.lastvalues import last_per_subject
from ktrdr.transport.leases import is_cas_failure
from ktrdr.transport.publish import PUBLISH_RETRY_ERRORS

BARS, MODELS, CHECKPOINTS = subjects.BARS_BUCKET, subjects.MODELS_BUCKET, subjects.CHECKPOINTS_BUCKET
CHUNK_SIZE = 512 * 1024  # bench/objects.py, 60 MB: get 0.22 s vs 0.31 s at 128 KiB, put 0.40 vs 0.42 s
MAX_HEADER_BYTES = 16 * 1024
_nuid = NUID()


class ObjectConflict(KtrdrError):
    """A conditional put lost: the object changed (or appeared) since it was read."""

    code = "conflict"


@dataclass(frozen=True)
class Stored:
    """One object's meta record: what a reader needs before it reads a byte."""

    bucket: str
    name: str
    size: int
    chunks: int
    digest: str
    nuid: str
    seq: int  # the meta record's stream sequence: what a conditional put expects
    deleted: bool = False
    headers: dict[str, Any] = field(default_factory=dict)

    def header(self, key: str) -> str | None:
        """A header value (stored as a list of strings, as Go's object store writes them)."""
        value = self.headers.get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        if not isinstance(value, str) or len(value) > MAX_HEADER_BYTES:
            return None
        return value


def digest_of(h: Any) -> str:
    """A finished SHA-256 as the object store writes it in a meta record: `SHA-256=<base64url>`."""
    return "SHA-256=" + base64.urlsafe_b64encode(h.digest()).decode()


def _stream(bucket: str) -> str:
    return OBJ_STREAM_TEMPLATE.format(bucket=bucket)


def _meta_subject(bucket: str, name: str) -> str:
    return OBJ_META_PRE_TEMPLATE.format(bucket=bucket, obj=base64.urlsafe_b64encode(name.encode()).decode())


def _chunk_subject(bucket: str, nuid: str) -> str:
    return OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=bucket, obj=nuid)


def sha256_hex(digest: str) -> str:
    """The hex SHA-256 (as `sha256sum` prints it) of a meta record's `SHA-256=<base64url>` digest; ""
    when it is not one."""
    prefix, _, b64 = digest.partition("=")
    if prefix.upper() != "SHA-256":
        return ""
    try:
        raw = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
    except ValueError:
        return ""
    return raw.hex() if len(raw) == 32 else ""


def _stored(bucket: str, data: bytes | None, seq: int) -> Stored:
    try:
        info = js_api.ObjectInfo.from_response(json.loads(data or b""))
    except (ValueError, TypeError, KeyError) as exc:
        raise DataError(f"{bucket}: an object's meta record is unreadable: {exc}") from exc
    headers = info.headers if isinstance(info.headers, dict) else {}
    return Stored(bucket=bucket, name=str(info.name), size=int(info.size or 0), chunks=int(info.chunks or 0),
                  digest=str(info.digest or ""), nuid=str(info.nuid or ""), seq=seq, deleted=bool(info.deleted),
                  headers=headers)


async def _publish(js: JetStreamContext, subject: str, payload: bytes, headers: dict[str, str], *,
                   retry_for: float = 30.0, timeout: float = 5.0) -> js_api.PubAck:
    """A JetStream publish retried (same Nats-Msg-Id: stored once) while no stream leader answers."""
    loop = asyncio.get_running_loop()
    deadline, delay = loop.time() + retry_for, 0.05
    while True:
        try:
            return await js.publish(subject, payload, timeout=timeout, headers=headers)
        except PUBLISH_RETRY_ERRORS:
            if loop.time() + delay > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


# ---------------------------------------------------------------------------------------------- bytes
async def stat(js: JetStreamContext, bucket: str, name: str, *, direct: bool = False) -> Stored | None:
    """The object's meta record (deleted ones too: `deleted` says so), or None when there is none or
    the bucket does not exist yet. `direct`: a direct get (raw bytes, answered by any replica; ~3x
    faster than the JSON API for many small objects: a partitioned read stats each partition)."""
    try:
        raw = await js.get_last_msg(_stream(bucket), _meta_subject(bucket, name), direct=direct)
    except NotFoundError:
        return None
    return _stored(bucket, raw.data, int(raw.seq or 0))


async def fetch(js: JetStreamContext, st: Stored, *, into: IO[bytes] | None = None, max_bytes: int,
                idle_timeout: float = 30.0) -> bytearray | None:
    """The object's bytes (one buffer), or written to `into` (None returned); the digest is checked.
    DataError when it is too big, stalls, or does not match its digest (replaced while read)."""
    if st.deleted or st.size < 0 or st.size > max_bytes:
        raise DataError(f"{st.bucket}/{st.name}: {st.size:,} bytes, more than the {max_bytes:,} allowed")
    if st.chunks == 1 and st.size > 0:
        # One chunk (a partition of a series, a manifest): a direct get of its one message, rather
        # than an ordered consumer made and deleted for it (each a server round trip, and counted
        # against the stream's consumers while it lives).
        try:
            raw = await js.get_last_msg(_stream(st.bucket), _chunk_subject(st.bucket, st.nuid), direct=True)
        except NotFoundError:
            raise DataError(f"{st.bucket}/{st.name}: gone while it was read", hint="read it again") from None
        data = raw.data or b""
        if len(data) != st.size or digest_of(hashlib.sha256(data)).lower() != st.digest.lower():
            raise DataError(f"{st.bucket}/{st.name}: the bytes read do not match the stored digest (replaced "
                            f"while it was read?)", hint="read it again")
        if into is not None:
            into.write(data)
            return None
        return bytearray(data)
    buf = bytearray(st.size) if into is None else None
    h = hashlib.sha256()
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    offset, seen = 0, loop.time()
    if st.size == 0:
        done.set_result(None)

    async def on_chunk(msg: Any) -> None:
        nonlocal offset, seen
        if done.done():
            return
        data, off = msg.data, offset
        if off + len(data) > st.size:
            done.set_exception(DataError(f"{st.bucket}/{st.name}: more bytes than its meta record says"))
            return
        if buf is not None:
            buf[off : off + len(data)] = data
        else:
            into.write(data)  # type: ignore[union-attr]
        h.update(data)
        offset, seen = off + len(data), loop.time()
        if msg.metadata.num_pending == 0:
            done.set_result(None)

    sub = None
    if not done.done():
        sub = await js.subscribe(_chunk_subject(st.bucket, st.nuid), cb=on_chunk, ordered_consumer=True,
                                 stream=_stream(st.bucket))
    try:
        while not done.done():
            await asyncio.wait([done], timeout=idle_timeout / 4)
            if not done.done() and loop.time() - seen > idle_timeout:
                raise DataError(f"{st.bucket}/{st.name}: no chunk for {idle_timeout:g} s "
                                f"({offset:,} of {st.size:,} bytes)")
        done.result()
    finally:
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
    digest = digest_of(h)
    if offset != st.size or digest.lower() != st.digest.lower():
        raise DataError(f"{st.bucket}/{st.name}: the bytes read do not match the stored digest (replaced "
                        f"while it was read?)", hint="read it again")
    return buf


async def get_single_chunks(js: JetStreamContext, bucket: str, objs: list[Stored], *,
                            idle_timeout: float = 30.0) -> dict[str, bytes]:
    """The bytes of single-chunk objects in ONE batched direct get (the last message of each chunk
    subject: nats-server 2.11+'s `multi_last`), nuid -> bytes, each checked against its digest.
    An object whose bytes did not come back or do not match (replaced or deleted meanwhile) is left
    out: the caller reads it again. Against a request per object this saves a round trip and the
    client's per-request work each (bench/partitions.py, 120 partitions of 10 years of 1m)."""
    wanted = {o.nuid: o for o in objs if o.chunks == 1 and o.size > 0}
    if not wanted:
        return {}
    nc = js._nc  # type: ignore[attr-defined]  # the connection a JetStreamContext carries
    inbox = nc.new_inbox()
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    out: dict[str, bytes] = {}
    prefix, seen = _chunk_subject(bucket, ""), loop.time()

    async def on_msg(msg: Any) -> None:
        nonlocal seen
        seen = loop.time()
        status = (msg.headers or {}).get("Status")
        if status is not None:  # 204: the end of the batch; 404: none of them exists; others: refused
            if not done.done():
                if status in ("204", "404"):
                    done.set_result(None)
                else:
                    done.set_exception(DataError(f"{bucket}: a batched get was refused: {status} "
                                                 f"{(msg.headers or {}).get('Description', '')}"))
            return
        nuid = str((msg.headers or {}).get("Nats-Subject", ""))[len(prefix):]
        o = wanted.get(nuid)
        data = bytes(msg.data or b"")
        if o is not None and len(data) == o.size and digest_of(hashlib.sha256(data)).lower() == o.digest.lower():
            out[nuid] = data

    sub = await nc.subscribe(inbox, cb=on_msg)
    try:
        body = json.dumps({"multi_last": [_chunk_subject(bucket, n) for n in wanted], "batch": len(wanted)})
        await nc.publish(f"{js._prefix}.DIRECT.GET.{_stream(bucket)}", body.encode(), reply=inbox)  # type: ignore[attr-defined]
        while not done.done():
            await asyncio.wait([done], timeout=idle_timeout / 4)
            if not done.done() and loop.time() - seen > idle_timeout:
                raise DataError(f"{bucket}: a batched get stalled ({len(out)} of {len(wanted)} objects)")
        done.result()
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return out


async def get(js: JetStreamContext, bucket: str, name: str, *, max_bytes: int) -> tuple[bytearray, Stored] | None:
    """(bytes, meta) of a live object, or None."""
    for attempt in range(3):
        st = await stat(js, bucket, name)
        if st is None or st.deleted:
            return None
        try:
            data = await fetch(js, st, max_bytes=max_bytes)
        except DataError:
            if attempt == 2:
                raise
            continue  # replaced while we read it: read the new one
        assert data is not None
        return data, st
    return None


async def put(js: JetStreamContext, bucket: str, name: str, data: bytes | bytearray | memoryview, *,
              headers: Mapping[str, str] | None = None, conditional: bool = False, replaces: Stored | None = None,
              chunk_size: int = CHUNK_SIZE) -> Stored:
    """Store `data` as `name`; readers see the old object or the new one, never a mix. Conditional:
    only if the object is still `replaces` (None: only if it never existed), else ObjectConflict and
    nothing changes. The replaced object's chunks are retired afterwards (a rollup, not a purge)."""
    if not conditional and replaces is None:
        replaces = await stat(js, bucket, name)
    nuid = _nuid.next().decode()
    chunk_subj = _chunk_subject(bucket, nuid)
    view, h, n = memoryview(data).cast("B"), hashlib.sha256(), 0
    try:
        for off in range(0, len(view), chunk_size):
            chunk = bytes(view[off : off + chunk_size])
            h.update(chunk)
            await _publish(js, chunk_subj, chunk, {"Nats-Msg-Id": f"{nuid}.{n}"})
            n += 1
        info = js_api.ObjectInfo(
            name=name, bucket=bucket, nuid=nuid, size=len(view), chunks=n,
            digest=digest_of(h), mtime=datetime.now(UTC).isoformat(),
            headers={k: [v] for k, v in (headers or {}).items()} or None,
            options=js_api.ObjectMetaOptions(max_chunk_size=chunk_size))
        hdrs = {js_api.Header.ROLLUP: MSG_ROLLUP_SUBJECT, "Nats-Msg-Id": f"{nuid}.meta"}
        if conditional:
            hdrs[js_api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(replaces.seq if replaces else 0)
        ack = await _publish(js, _meta_subject(bucket, name), json.dumps(info.as_dict()).encode(), hdrs)
    except BaseException as exc:
        # In the background: a store that stopped writing (a full disk) takes no retire either until
        # it is restarted, and the put's caller must hear of its failure now, not after the retries.
        _retire_later(js, bucket, nuid)
        if is_cas_failure(exc):
            raise ObjectConflict(f"{bucket}/{name} changed while it was being written",
                                 hint="read it again and retry") from None
        raise
    if replaces is not None and not replaces.deleted and replaces.nuid and replaces.nuid != nuid:
        with contextlib.suppress(Exception):  # only space: the new meta record no longer points there
            await _retire(js, bucket, replaces.nuid)
    return Stored(bucket=bucket, name=name, size=info.size or 0, chunks=n, digest=info.digest or "", nuid=nuid,
                  seq=int(ack.seq), headers=info.headers or {})


_cleanups: set[asyncio.Task[None]] = set()  # retires retried in the background (kept from the GC)


def _retire_later(js: JetStreamContext, bucket: str, nuid: str, *, retry_for: float = 3600.0) -> None:
    """Retire a failed put's chunks in the background until the server takes it: a stream whose store
    stopped writing (a full disk) refuses every write until it is restarted, and the chunks of a put
    that failed then would otherwise stay, unreferenced, for good."""

    async def retry() -> None:
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + retry_for, 0.5
        while True:
            with contextlib.suppress(Exception):
                await _retire(js, bucket, nuid)
                return
            if loop.time() >= deadline:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    task = asyncio.get_running_loop().create_task(retry())
    _cleanups.add(task)
    task.add_done_callback(_cleanups.discard)


async def sweep_orphans(js: JetStreamContext, bucket: str, *, older_than_s: float) -> int:
    """Retire chunk sets no live object points to whose newest chunk is older than `older_than_s` (a
    put in progress writes a chunk at least every few seconds; one killed mid-put never finishes):
    what a writer killed mid-put, or one that gave up before the server took its clean-up, left.
    A set already retired (its one empty marker) is left as it is. Returns how many were retired."""
    prefix = _chunk_subject(bucket, "")
    info = await js.stream_info(_stream(bucket), subjects_filter=prefix + ">")
    live = {st.nuid for st in await list_objects(js, bucket)}
    now, purged = datetime.now(UTC), 0
    for subject in (info.state.subjects or {}):
        if subject[len(prefix):] in live:
            continue
        last = await js.get_last_msg(_stream(bucket), subject)
        if not last.data:
            continue  # the marker of a retired set: nothing left to drop
        if last.time is not None and (now - last.time).total_seconds() >= older_than_s:
            await _retire(js, bucket, subject[len(prefix):])
            purged += 1
    return purged


async def delete(js: JetStreamContext, bucket: str, name: str) -> bool:
    """Delete an object (a deleted meta record, then its chunks retired); False when there was none."""
    st = await stat(js, bucket, name)
    if st is None or st.deleted:
        return False
    info = js_api.ObjectInfo(name=name, bucket=bucket, nuid=st.nuid, size=0, chunks=0, digest="", deleted=True,
                             mtime="")
    await _publish(js, _meta_subject(bucket, name), json.dumps(info.as_dict()).encode(),
                   {js_api.Header.ROLLUP: MSG_ROLLUP_SUBJECT, "Nats-Msg-Id": f"{st.nuid}.deleted"})
    with contextlib.suppress(Exception):
        await _retire(js, bucket, st.nuid)
    return True


async def _retire(js: JetStreamContext, bucket: str, nuid: str) -> None:
    """Drop the chunks of object `nuid` without a purge: one empty rollup message on their subject
    (the server keeps only it). Its Nats-Msg-Id makes a retried retire one marker, not two."""
    await _publish(js, _chunk_subject(bucket, nuid), b"",
                   {js_api.Header.ROLLUP: MSG_ROLLUP_SUBJECT, "Nats-Msg-Id": f"{nuid}.retired"})


async def list_objects(js: JetStreamContext, bucket: str, *, timeout: float = 30.0) -> list[Stored]:
    """Every live object's meta record (one ordered consumer over the meta subjects, last per name)."""
    all_meta = OBJ_ALL_META_PRE_TEMPLATE.format(bucket=bucket)
    try:
        await js.get_last_msg(_stream(bucket), all_meta)
    except NotFoundError:
        return []  # no bucket yet, or nothing ever stored
    out: list[Stored] = []
    for msg in await last_per_subject(js, _stream(bucket), all_meta, timeout=timeout):
        with contextlib.suppress(DataError):
            out.append(_stored(bucket, msg.data, int(msg.metadata.sequence.stream)))
    return [s for s in out if not s.deleted]
