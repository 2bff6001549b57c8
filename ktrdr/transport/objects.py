"""Bytes that hosts need, over NATS: JetStream Object Store buckets are the store of record.

| bucket | object name | written by | read by |
|---|---|---|---|
| BARS | `<SYMBOL>/<TF>` (Parquet, SeriesMeta in header `Ktrdr-Series`) | job-manager, `data import` | trainer, CLI |
| MODELS | `<strategy>/<KEY>_v<N>/<file>`, pointer `<strategy>/<KEY>_latest` | trainer | CLI, any host |
| CHECKPOINTS | `<op_id>/latest` | trainer | the trainer that resumes the operation |

Object names are built here only, from validated parts (check_symbol / check_timeframe, the strategy
name rule, model keys, is_op_id), and no local path is ever built from one: the cache is keyed by the
object's digest, and `models pull` writes fixed file names into a folder the user named.

The bytes layer writes nats-py's object format (same subjects, meta record and SHA-256 digest, so the
`nats object` tools and nats-py's ObjectStore read it) with three differences, measured in
bench/objects.py: `get` collects the chunks with a callback into one buffer, or streams them into a
cache file (nats-py appends bytes to bytes per chunk: 12 s for a 60 MB series against 0.2 s here);
chunks are 512 KiB (NATS's max_payload is 1 MB); and a put can be conditional (its meta record carries
Nats-Expected-Last-Subject-Sequence), which makes a series write compare-and-set and a model version
claim atomic. Every publish carries a Nats-Msg-Id and is retried through a leader election.

One writer per series: `SeriesWriterLease` is the key `series.<SYMBOL>.<TF>` in the KV bucket LEASES,
taken with compare-and-set and renewed; a second load waits, cancellably, and says for whom.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import msgspec
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import APIError, KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import MSG_ROLLUP_SUBJECT, KeyValue
from nats.js.object_store import (
    OBJ_ALL_META_PRE_TEMPLATE,
    OBJ_CHUNKS_PRE_TEMPLATE,
    OBJ_META_PRE_TEMPLATE,
    OBJ_STREAM_TEMPLATE,
)
from nats.nuid import NUID

from events import subjects
from events.codec import DecodeError, decode, encode
from events.messages import SeriesLease
from ktrdr.errors import DataError, KtrdrError, ValidationError
from ktrdr.transport.publish import PUBLISH_RETRY_ERRORS

if TYPE_CHECKING:
    import pandas as pd

    from ktrdr.cancellation import CancellationToken
    from ktrdr.data.store import DigestCache, SeriesMeta

BARS, MODELS, CHECKPOINTS = subjects.BARS_BUCKET, subjects.MODELS_BUCKET, subjects.CHECKPOINTS_BUCKET
CHUNK_SIZE = 512 * 1024  # bench/objects.py, 60 MB: get 0.22 s vs 0.31 s at 128 KiB, put 0.40 vs 0.42 s
MAX_SERIES_BYTES = 4 << 30
MAX_MODEL_FILE_BYTES = 4 << 30
MAX_JSON_FILE_BYTES = 64 << 20
MAX_CHECKPOINT_BYTES = 4 << 30
MAX_HEADER_BYTES = 16 * 1024
SERIES_HEADER, MODEL_HEADER, LATEST_HEADER = "Ktrdr-Series", "Ktrdr-Model", "Ktrdr-Latest"
_WRONG_LAST_SEQUENCE = 10071
_nuid = NUID()
# Aliases for annotations inside classes that define a `list` method (which would shadow the builtin).
_Metas = list["SeriesMeta"]
_Rows = list[dict[str, Any]]
_Paths = list[Path]


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


def _stream(bucket: str) -> str:
    return OBJ_STREAM_TEMPLATE.format(bucket=bucket)


def _meta_subject(bucket: str, name: str) -> str:
    return OBJ_META_PRE_TEMPLATE.format(bucket=bucket, obj=base64.urlsafe_b64encode(name.encode()).decode())


def _chunk_subject(bucket: str, nuid: str) -> str:
    return OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=bucket, obj=nuid)


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
async def stat(js: JetStreamContext, bucket: str, name: str) -> Stored | None:
    """The object's meta record (deleted ones too: `deleted` says so), or None when there is none or
    the bucket does not exist yet."""
    try:
        raw = await js.get_last_msg(_stream(bucket), _meta_subject(bucket, name))
    except NotFoundError:
        return None
    return _stored(bucket, raw.data, int(raw.seq or 0))


async def fetch(js: JetStreamContext, st: Stored, *, into: IO[bytes] | None = None, max_bytes: int,
                idle_timeout: float = 30.0) -> bytearray | None:
    """The object's bytes (one buffer), or written to `into` (None returned); the digest is checked.
    DataError when it is too big, stalls, or does not match its digest (replaced while read)."""
    if st.deleted or st.size < 0 or st.size > max_bytes:
        raise DataError(f"{st.bucket}/{st.name}: {st.size:,} bytes, more than the {max_bytes:,} allowed")
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
    digest = "SHA-256=" + base64.urlsafe_b64encode(h.digest()).decode()
    if offset != st.size or digest.lower() != st.digest.lower():
        raise DataError(f"{st.bucket}/{st.name}: the bytes read do not match the stored digest (replaced "
                        f"while it was read?)", hint="read it again")
    return buf


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
    nothing changes. The replaced object's chunks are purged afterwards."""
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
            digest="SHA-256=" + base64.urlsafe_b64encode(h.digest()).decode(), mtime=datetime.now(UTC).isoformat(),
            headers={k: [v] for k, v in (headers or {}).items()} or None,
            options=js_api.ObjectMetaOptions(max_chunk_size=chunk_size))
        hdrs = {js_api.Header.ROLLUP: MSG_ROLLUP_SUBJECT, "Nats-Msg-Id": f"{nuid}.meta"}
        if conditional:
            hdrs[js_api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(replaces.seq if replaces else 0)
        ack = await _publish(js, _meta_subject(bucket, name), json.dumps(info.as_dict()).encode(), hdrs)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            await asyncio.shield(js.purge_stream(_stream(bucket), subject=chunk_subj))
        if isinstance(exc, APIError) and exc.err_code == _WRONG_LAST_SEQUENCE:
            raise ObjectConflict(f"{bucket}/{name} changed while it was being written",
                                 hint="read it again and retry") from None
        raise
    if replaces is not None and not replaces.deleted and replaces.nuid and replaces.nuid != nuid:
        with contextlib.suppress(Exception):  # only space: the new meta record no longer points there
            await js.purge_stream(_stream(bucket), subject=_chunk_subject(bucket, replaces.nuid))
    return Stored(bucket=bucket, name=name, size=info.size or 0, chunks=n, digest=info.digest or "", nuid=nuid,
                  seq=int(ack.seq), headers=info.headers or {})


async def delete(js: JetStreamContext, bucket: str, name: str) -> bool:
    """Delete an object (a deleted meta record, then its chunks purged); False when there was none."""
    st = await stat(js, bucket, name)
    if st is None or st.deleted:
        return False
    info = js_api.ObjectInfo(name=name, bucket=bucket, nuid=st.nuid, size=0, chunks=0, digest="", deleted=True,
                             mtime="")
    await _publish(js, _meta_subject(bucket, name), json.dumps(info.as_dict()).encode(),
                   {js_api.Header.ROLLUP: MSG_ROLLUP_SUBJECT, "Nats-Msg-Id": f"{st.nuid}.deleted"})
    with contextlib.suppress(Exception):
        await js.purge_stream(_stream(bucket), subject=_chunk_subject(bucket, st.nuid))
    return True


async def list_objects(js: JetStreamContext, bucket: str, *, timeout: float = 30.0) -> list[Stored]:
    """Every live object's meta record (one ordered consumer over the meta subjects, last per name)."""
    all_meta = OBJ_ALL_META_PRE_TEMPLATE.format(bucket=bucket)
    try:
        await js.get_last_msg(_stream(bucket), all_meta)
    except NotFoundError:
        return []  # no bucket yet, or nothing ever stored
    out: list[Stored] = []
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_meta(msg: Any) -> None:
        if done.done():
            return
        with contextlib.suppress(DataError):
            out.append(_stored(bucket, msg.data, int(msg.metadata.sequence.stream)))
        if msg.metadata.num_pending == 0:
            done.set_result(None)

    sub = await js.subscribe(all_meta, cb=on_meta, ordered_consumer=True, stream=_stream(bucket),
                             deliver_policy=js_api.DeliverPolicy.LAST_PER_SUBJECT)
    try:
        await asyncio.wait_for(done, timeout)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return [s for s in out if not s.deleted]


# ---------------------------------------------------------------------------------------------- bars
def bars_name(symbol: str, timeframe: str) -> str:
    """`AAPL/1h`: a series' object name, from a checked symbol and timeframe only."""
    from ktrdr.commands import check_symbol, check_timeframe

    return f"{check_symbol(symbol)}/{check_timeframe(timeframe)}"


@dataclass
class StoredSeries:
    df: pd.DataFrame
    meta: SeriesMeta | None
    stored: Stored | None  # what a conditional write of this series expects (None: nothing stored)


class BarStore:
    """Series in BARS, read through this host's DigestCache (when given)."""

    def __init__(self, js: JetStreamContext, cache: DigestCache | None = None) -> None:
        self.js, self.cache = js, cache

    @staticmethod
    def _meta(st: Stored, name: str) -> SeriesMeta:
        from ktrdr.data.store import SOURCES, SeriesMeta

        raw = st.header(SERIES_HEADER)
        try:
            meta = msgspec.json.decode(raw or b"", type=SeriesMeta)
        except msgspec.DecodeError as exc:
            raise DataError(f"BARS/{name}: its metadata is unreadable: {exc}") from exc
        if f"{meta.symbol}/{meta.timeframe}" != name or meta.source not in SOURCES or meta.rows < 0:
            raise DataError(f"BARS/{name}: its metadata names another series or an unknown source")
        return msgspec.structs.replace(meta, digest=st.digest)

    async def stat(self, symbol: str, timeframe: str) -> tuple[SeriesMeta, Stored] | None:
        name = bars_name(symbol, timeframe)
        st = await stat(self.js, BARS, name)
        return None if st is None or st.deleted else (self._meta(st, name), st)

    async def metadata(self, symbol: str, timeframe: str) -> SeriesMeta | None:
        found = await self.stat(symbol, timeframe)
        return found[0] if found else None

    async def load(self, symbol: str, timeframe: str) -> StoredSeries:
        """The whole stored series (an empty frame when none) and what a conditional write expects."""
        from ktrdr.data.store import empty_frame

        name = bars_name(symbol, timeframe)
        for attempt in range(3):
            st = await stat(self.js, BARS, name)
            if st is None or st.deleted:
                return StoredSeries(empty_frame(), None, st)
            try:
                return StoredSeries(await self._frame(st), self._meta(st, name), st)
            except DataError:
                if attempt == 2:
                    raise  # replaced while read: read the newer one
        raise AssertionError("unreachable")

    async def read(self, symbol: str, timeframe: str, start: datetime | None = None,
                   end: datetime | None = None) -> pd.DataFrame:
        """Stored bars with start <= t < end (either bound optional); an empty frame when none."""
        from ktrdr.data.store import slice_bars

        return slice_bars((await self.load(symbol, timeframe)).df, start, end)

    async def _frame(self, st: Stored) -> pd.DataFrame:
        from ktrdr.data.store import from_parquet

        path = self.cache.lookup(st.digest) if self.cache is not None else None
        if path is not None:
            try:
                return await asyncio.to_thread(from_parquet, path)
            except DataError:
                path.unlink(missing_ok=True)  # a damaged cache file is only a cache miss
        if self.cache is not None and self.cache.path(st.digest) is not None:
            f, tmp = await asyncio.to_thread(self.cache.temp)
            try:
                with f:  # streamed to disk: memory stays at one chunk, not the whole object
                    await fetch(self.js, st, into=f, max_bytes=MAX_SERIES_BYTES)
                path = await asyncio.to_thread(self.cache.commit, tmp, st.digest)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            return await asyncio.to_thread(from_parquet, path)
        data = await fetch(self.js, st, max_bytes=MAX_SERIES_BYTES)
        assert data is not None
        return await asyncio.to_thread(from_parquet, data)

    async def write(self, df: pd.DataFrame, meta: SeriesMeta, *, replaces: Stored | None) -> Stored:
        """Store a whole series, only if it is still `replaces` (ObjectConflict otherwise)."""
        from ktrdr.data.store import to_parquet

        name = bars_name(meta.symbol, meta.timeframe)
        data = await asyncio.to_thread(to_parquet, df)
        header = msgspec.json.encode(msgspec.structs.replace(meta, digest="")).decode()
        st = await put(self.js, BARS, name, data, headers={SERIES_HEADER: header}, conditional=True,
                       replaces=replaces)
        if self.cache is not None:  # this host reads it next: no download
            await asyncio.to_thread(self.cache.put, st.digest, data)
        return st

    async def merge(self, symbol: str, timeframe: str, df: pd.DataFrame, source: str) -> tuple[int, Stored]:
        """Merge bars into the stored series (compare-and-set, retried on a concurrent write); returns
        (new timestamps, the stored object). The caller holds the series' writer lease."""
        from ktrdr.data.store import SeriesBuffer

        sym, tf = bars_name(symbol, timeframe).split("/")
        for _ in range(5):
            current = await self.load(sym, tf)
            buf = SeriesBuffer(sym, tf, current.df, current.meta)
            added = await asyncio.to_thread(buf.merge, sym, tf, df, source)
            merged, meta, _ = await asyncio.to_thread(buf.snapshot)
            assert meta is not None
            try:
                return added, await self.write(merged, meta, replaces=current.stored)
            except ObjectConflict:
                continue
        raise DataError(f"BARS/{sym}/{tf} keeps changing; try again")

    async def list(self) -> _Metas:
        out = []
        for st in await list_objects(self.js, BARS):
            with contextlib.suppress(DataError, ValidationError):
                out.append(self._meta(st, st.name))
        return sorted(out, key=lambda m: (m.symbol, m.timeframe))


# ---------------------------------------------------------------------------------------------- checkpoints
def checkpoint_name(op_id: str) -> str:
    if not subjects.is_op_id(op_id):
        raise ValidationError(f"invalid operation id {str(op_id)[:80]!r}")
    return f"{op_id}/latest"


class CheckpointStore:
    """A training operation's latest epoch checkpoint, readable by whichever host resumes it."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def put(self, op_id: str, data: bytes) -> Stored:
        return await put(self.js, CHECKPOINTS, checkpoint_name(op_id), data)

    async def get(self, op_id: str) -> bytes | None:
        found = await get(self.js, CHECKPOINTS, checkpoint_name(op_id), max_bytes=MAX_CHECKPOINT_BYTES)
        return bytes(found[0]) if found else None

    async def delete(self, op_id: str) -> bool:
        return await delete(self.js, CHECKPOINTS, checkpoint_name(op_id))


# ---------------------------------------------------------------------------------------------- models
_MODEL_OBJECT = re.compile(r"^(?P<strategy>[^/]+)/(?P<key>[^/]+)_v(?P<n>\d{1,10})/(?P<file>[^/]+)$")
_POINTER = re.compile(r"^(?P<strategy>[^/]+)/(?P<key>[^/]+)_latest$")


class ModelStore:
    """Trained models in MODELS: `<strategy>/<KEY>_v<N>/<file>` and a `<strategy>/<KEY>_latest` pointer."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def _versions(self) -> tuple[dict[tuple[str, str, int], Stored], dict[tuple[str, str], str]]:
        """{(strategy, key, version): its metadata.json} for complete versions; {(strategy, key): latest}."""
        from ktrdr.training.registry import KEY_RE

        complete: dict[tuple[str, str, int], Stored] = {}
        latest: dict[tuple[str, str], str] = {}
        for st in await list_objects(self.js, MODELS):
            if (m := _MODEL_OBJECT.match(st.name)) and KEY_RE.match(m["key"]) and m["file"] == "metadata.json":
                complete[(m["strategy"], m["key"], int(m["n"]))] = st
            elif (p := _POINTER.match(st.name)) and KEY_RE.match(p["key"]) and (v := st.header(LATEST_HEADER)):
                latest[(p["strategy"], p["key"])] = v
        return complete, latest

    async def save(self, strategy: str, symbols: Sequence[str], timeframes: Sequence[str],
                   artifacts: Mapping[str, bytes], result: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Store a new version (the number is claimed atomically: model.pt is put only if absent),
        metadata.json last (it marks the version complete), then move the latest pointer forward."""
        from ktrdr.training.registry import FILES, RESULT_FILE, model_key, model_summary, version_name
        from ktrdr.training.strategy import validate_name

        missing = [f for f in FILES if not isinstance(artifacts.get(f), bytes | bytearray)]
        if missing:
            raise ValidationError(f"model artifacts lack {missing}")
        name, key = validate_name(strategy), model_key(list(symbols), list(timeframes))
        try:
            metadata = json.loads(artifacts["metadata.json"])
            metrics = json.loads(artifacts["metrics.json"])
        except ValueError as exc:
            raise ValidationError(f"metadata.json / metrics.json are not JSON: {exc}") from exc
        if not isinstance(metadata, dict) or not isinstance(metrics, dict):
            raise ValidationError("metadata.json and metrics.json must be JSON objects")
        complete, _ = await self._versions()
        version = max((n for (s, k, n) in complete if (s, k) == (name, key)), default=0) + 1
        while True:
            prefix = f"{name}/{version_name(key, version)}"
            try:
                await put(self.js, MODELS, f"{prefix}/model.pt", artifacts["model.pt"], conditional=True)
                break
            except ObjectConflict:
                version += 1  # another trainer claimed this number first
        saved = {"bucket": MODELS, "name": prefix, "version": version, "model_object": f"{prefix}/model.pt",
                 "model_path": f"{MODELS}/{prefix}/model.pt", "latest_pointer": f"{name}/{key}_latest",
                 "objects": [f"{prefix}/{f}" for f in (*FILES, *((RESULT_FILE,) if result is not None else ()))]}
        files: dict[str, bytes] = {f: bytes(artifacts[f]) for f in FILES[1:-1]}
        if result is not None:  # the operation's result as stored with the model (analytics, history)
            full = {**result, "artifacts": {**(result.get("artifacts") or {}), **saved}}
            files[RESULT_FILE] = (json.dumps(full, indent=2, default=str) + "\n").encode()
        for f, data in files.items():
            await put(self.js, MODELS, f"{prefix}/{f}", data)
        metadata = {**metadata, "version": version, "name": prefix}
        summary = json.dumps({**model_summary(metadata, metrics), "version": version}, default=str)
        await put(self.js, MODELS, f"{prefix}/metadata.json", (json.dumps(metadata, indent=2, default=str) + "\n")
                  .encode(), headers={MODEL_HEADER: summary if len(summary) <= MAX_HEADER_BYTES else "{}"})
        await self._point(name, key, version)
        return saved

    async def _point(self, name: str, key: str, version: int) -> None:
        """Move `<strategy>/<KEY>_latest` to `version` unless it already names a newer one (CAS)."""
        from ktrdr.training.registry import version_name

        pointer = f"{name}/{key}_latest"
        for _ in range(20):
            st = await stat(self.js, MODELS, pointer)
            current = st.header(LATEST_HEADER) if st is not None and not st.deleted else None
            m = re.match(r"^.+_v(\d+)$", current or "")
            if m and int(m[1]) >= version:
                return
            target = version_name(key, version)
            try:
                await put(self.js, MODELS, pointer, (target + "\n").encode(), headers={LATEST_HEADER: target},
                          conditional=True, replaces=st)
                return
            except ObjectConflict:
                continue

    async def list(self) -> _Rows:
        """Every complete version with its summary, sorted by strategy, key and version."""
        complete, latest = await self._versions()
        rows: _Rows = []
        for (strategy, key, n), st in sorted(complete.items()):
            try:
                summary = json.loads(st.header(MODEL_HEADER) or "{}")
            except ValueError:
                summary = {}
            summary = summary if isinstance(summary, dict) else {}
            rows.append({"name": f"{strategy}/{key}_v{n}", "strategy": strategy, "key": key, "version": n,
                         "latest": latest.get((strategy, key)) == f"{key}_v{n}",
                         **{k: v for k, v in summary.items() if k != "version"}})
        return rows

    async def resolve(self, ref: str) -> str:
        """`strategy/KEY_vN` of a model named `strategy`, `strategy/KEY` (its latest) or `strategy/KEY_vN`."""
        from ktrdr.training.registry import parse_model_ref, version_name

        strategy, key, version = parse_model_ref(ref)
        complete, latest = await self._versions()
        if key is not None and version is not None:
            if (strategy, key, version) in complete:
                return f"{strategy}/{version_name(key, version)}"
        elif key is not None:
            target = latest.get((strategy, key))
            if target is not None:
                return f"{strategy}/{version_name(key, int(target.rsplit('_v', 1)[1]))}"
        else:
            keys = sorted(k for (s, k) in latest if s == strategy)
            if len(keys) == 1:
                return await self.resolve(f"{strategy}/{keys[0]}")
            if len(keys) > 1:
                raise ValidationError(f"{ref!r} has several models",
                                      hint="pick one of: " + ", ".join(f"{strategy}/{k}" for k in keys))
        raise ValidationError(f"no model {ref!r} in {MODELS}", hint="`ktrdr models list` shows what exists")

    async def read_json(self, prefix: str, file: str) -> dict[str, Any]:
        found = await get(self.js, MODELS, f"{prefix}/{file}", max_bytes=MAX_JSON_FILE_BYTES)
        if found is None:
            return {}
        try:
            data = json.loads(bytes(found[0]))
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    async def show(self, ref: str) -> dict[str, Any]:
        """Everything stored about one version but the weights (their object name and size instead)."""
        from ktrdr.training.registry import RESULT_FILE

        prefix = await self.resolve(ref)
        weights = await stat(self.js, MODELS, f"{prefix}/model.pt")
        out: dict[str, Any] = {"name": prefix, "bucket": MODELS, "model_object": f"{prefix}/model.pt",
                               "model_bytes": weights.size if weights else None,
                               "model_digest": weights.digest if weights else None}
        for part in ("config", "metrics", "features", "metadata"):
            out[part] = await self.read_json(prefix, f"{part}.json")
        out["result"] = await self.read_json(prefix, RESULT_FILE)
        return out

    async def pull(self, ref: str, dest: Path) -> tuple[str, _Paths]:
        """Download one version's files into the existing folder `dest` (fixed file names only; each
        written to a temp file in `dest` and renamed, so a file is there whole or not at all)."""
        from ktrdr.training.registry import FILES, RESULT_FILE

        folder = Path(dest)
        if not folder.is_dir():
            raise ValidationError(f"{str(dest)[:200]}: not an existing folder")
        folder = folder.resolve()
        prefix = await self.resolve(ref)
        written: _Paths = []
        for f in (*FILES, RESULT_FILE):
            st = await stat(self.js, MODELS, f"{prefix}/{f}")
            if st is None or st.deleted:
                if f == RESULT_FILE:
                    continue
                raise DataError(f"{MODELS}/{prefix}/{f} is missing")
            target = folder / f
            if target.parent != folder:
                raise ValidationError(f"refusing to write outside {folder}")
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{f}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out:
                    await fetch(self.js, st, into=out, max_bytes=MAX_MODEL_FILE_BYTES)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            written.append(target)
        return prefix, written


# ---------------------------------------------------------------------------------------------- series lease
def series_lease_key(symbol: str, timeframe: str) -> str:
    sym, tf = bars_name(symbol, timeframe).split("/")
    return f"series.{sym}.{tf}"


OnWait = Callable[[SeriesLease], None]


class SeriesWriterLease:
    """One writer per series: the key `series.<SYMBOL>.<TF>` in LEASES. Taken with create / compare-
    and-set and renewed every `ttl_s / 3`. A waiter takes it over from a holder that went silent (the
    same revision for a whole `ttl_s` on its own clock: no clocks compared across machines), or at once
    from an earlier attempt of its own operation (the operation lease guarantees that attempt is over)."""

    def __init__(self, kv: KeyValue, symbol: str, timeframe: str, *, holder: str, op_id: str = "",
                 ttl_s: float = 10.0) -> None:
        self.kv, self.key = kv, series_lease_key(symbol, timeframe)
        self.holder, self.op_id, self.ttl_s = holder, op_id, ttl_s
        self.revision: int | None = None
        self.lost = False

    def _value(self) -> bytes:
        return encode(SeriesLease(holder=self.holder, op_id=self.op_id))

    async def _try(self, seen: dict[str, Any]) -> SeriesLease | None:
        """Take it if we may; else return the current holder's record."""
        try:
            entry = await self.kv.get(self.key)
        except (KeyNotFoundError, KeyDeletedError):
            entry = None
        if entry is None or not entry.value:
            with contextlib.suppress(APIError):
                self.revision = await self.kv.create(self.key, self._value())
                return None
            return SeriesLease(holder="another writer")
        try:
            record = decode(entry.value, SeriesLease)
        except DecodeError:
            record = SeriesLease(holder="?")
        rev, now = int(entry.revision or 0), time.monotonic()
        if seen.get("rev") != rev:
            seen.update(rev=rev, since=now)
        silent = now - seen["since"] >= self.ttl_s
        # Ours from before (a server restart, an earlier attempt of this operation): the same operation,
        # or for an import (no operation) the same holder. Two loads in one job-manager are not "ours".
        mine = record.op_id == self.op_id if self.op_id else (record.holder == self.holder and not record.op_id)
        if mine or silent:
            with contextlib.suppress(APIError):
                self.revision = await self.kv.update(self.key, self._value(), last=rev)
                return None
        return record

    async def acquire(self, cancel: CancellationToken | None = None, on_wait: OnWait | None = None,
                      poll_s: float = 0.1) -> None:
        """Wait for the lease (OperationCancelledError when `cancel` trips while waiting)."""
        seen: dict[str, Any] = {}
        told: tuple[str, str] | None = None
        while True:
            if cancel is not None:
                cancel.raise_if_cancelled("waiting for the series")
            holder = await self._try(seen)
            if holder is None:
                self.lost = False
                return
            if on_wait is not None and (holder.holder, holder.op_id) != told:
                told = (holder.holder, holder.op_id)
                on_wait(holder)
            if cancel is not None:
                await cancel.sleep(poll_s)
            else:
                await asyncio.sleep(poll_s)

    async def renew(self) -> bool:
        if self.revision is None or self.lost:
            return False
        try:
            self.revision = await self.kv.update(self.key, self._value(), last=self.revision)
            return True
        except KeyWrongLastSequenceError:
            self.lost = True  # taken over: whoever holds it now writes; our conditional puts would lose
            return False

    async def release(self) -> None:
        if self.revision is None or self.lost:
            return
        with contextlib.suppress(Exception):
            await self.kv.delete(self.key, last=self.revision)
        self.revision = None

    @contextlib.asynccontextmanager
    async def held(self, cancel: CancellationToken | None = None,
                   on_wait: OnWait | None = None) -> AsyncIterator[SeriesWriterLease]:
        """Acquire, renew in the background, release at the end (whatever the outcome)."""
        await self.acquire(cancel, on_wait)

        async def keep() -> None:
            while not self.lost:
                await asyncio.sleep(self.ttl_s / 3)
                with contextlib.suppress(Exception):  # server away: not a verdict; next round
                    await self.renew()

        task = asyncio.create_task(keep(), name=f"lease-{self.key}")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            await asyncio.shield(self.release())


async def series_lease(js: JetStreamContext, symbol: str, timeframe: str, *, holder: str, op_id: str = "",
                       ttl_s: float = 10.0) -> SeriesWriterLease:
    return SeriesWriterLease(await js.key_value(subjects.LEASES_BUCKET), symbol, timeframe, holder=holder,
                             op_id=op_id, ttl_s=ttl_s)
