"""The MODELS bucket as a store of trained models: `<strategy>/<KEY>_v<N>/<file>` per version (the files
of ktrdr.training.registry.FILES, plus the operation's result) and a `<strategy>/<KEY>_latest` pointer.

A version number is claimed atomically (model.pt is put only if absent: two trainers saving at once
get different numbers), metadata.json is put last and marks the version complete (listings skip the
others), and the latest pointer only ever moves forward (compare-and-set). A version's summary rides in
its metadata.json's header, so `models list` reads no object's bytes. Names come from the registry's
rules (validated strategy names, model keys); `pull` writes fixed file names into an existing folder.
This is the training domain's NATS adapter; the bytes go through ktrdr.transport.objects.

Every trainer shares one key, so any of them can rewrite any object in MODELS (issue 18, F5: `models
pull` served junk weights under the original metadata). A version therefore carries the SHA-256 of its
model.pt (`model_sha256`) in its metadata.json and in the `completed` result of the training that
made it, and `pull` and `load` refuse weights whose digest is not the expected one: the one in that
completed result while the operation is still in OPS (the anchor a stranger cannot rewrite once the
holder signs its verdicts), else the one in metadata.json (which a trainer key could rewrite too).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext

from events import subjects
from events.codec import DecodeError, decode_event_on
from events.messages import OperationCompleted, StartTraining
from ktrdr.errors import DataError, ValidationError
from ktrdr.ops.reader import read_views
from ktrdr.training.registry import (
    DIGEST_KEY,
    FILES,
    FILES_DIGEST_KEY,
    KEY_RE,
    RESULT_FILE,
    model_key,
    model_summary,
    parse_model_ref,
    version_name,
)
from ktrdr.training.strategy import validate_name
from ktrdr.transport import objects, read_events
from ktrdr.transport.objects import MAX_HEADER_BYTES, MODELS, ObjectConflict, Stored, sha256_hex

MAX_MODEL_FILE_BYTES = 4 << 30
MAX_JSON_FILE_BYTES = 64 << 20
MAX_CURVE_BYTES = 256 << 20  # a backtest's equity curve: ~20 bytes a bar in Parquet (10 years of 1m: ~50 MB)
MODEL_HEADER, LATEST_HEADER, BACKTEST_HEADER = "Ktrdr-Model", "Ktrdr-Latest", "Ktrdr-Backtest"
BACKTEST_SUFFIX = ".parquet"  # `<strategy>/<KEY>_vN/<op_id>.parquet`: a backtest's equity curve
# Aliases for annotations inside ModelStore, whose `list` method shadows the builtin.
_Rows = list[dict[str, Any]]
_Paths = list[Path]
Expected = tuple[dict[str, str], str]  # ({file: hex SHA-256}, where the digests come from)
_MODEL_OBJECT = re.compile(r"^(?P<strategy>[^/]+)/(?P<key>[^/]+)_v(?P<n>\d{1,10})/(?P<file>[^/]+)$")
_MODEL_VERSION = re.compile(r"^.*_v\d{1,10}$")  # a latest pointer's target, as resolve reads it
_POINTER = re.compile(r"^(?P<strategy>[^/]+)/(?P<key>[^/]+)_latest$")


class ModelStore:
    """Trained models in MODELS: `<strategy>/<KEY>_v<N>/<file>` and a `<strategy>/<KEY>_latest` pointer."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.verified: dict[str, str] = {}  # version -> "sha256 <hex> (from <anchor>)" of weights it checked

    async def _versions(self) -> tuple[dict[tuple[str, str, int], Stored], dict[tuple[str, str], str]]:
        """{(strategy, key, version): its metadata.json} for complete versions; {(strategy, key): latest}."""
        complete: dict[tuple[str, str, int], Stored] = {}
        latest: dict[tuple[str, str], str] = {}
        for st in await objects.list_objects(self.js, MODELS):
            if (m := _MODEL_OBJECT.match(st.name)) and KEY_RE.match(m["key"]) and m["file"] == "metadata.json":
                complete[(m["strategy"], m["key"], int(m["n"]))] = st
            elif (p := _POINTER.match(st.name)) and KEY_RE.match(p["key"]) and (v := st.header(LATEST_HEADER)):
                latest[(p["strategy"], p["key"])] = v
        return complete, latest

    async def save(self, strategy: str, symbols: Sequence[str], timeframes: Sequence[str],
                   artifacts: Mapping[str, bytes], result: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Store a new version (the number is claimed atomically: model.pt is put only if absent),
        metadata.json last (it marks the version complete), then move the latest pointer forward."""
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
                weights = await objects.put(self.js, MODELS, f"{prefix}/model.pt", artifacts["model.pt"],
                                            conditional=True)
                break
            except ObjectConflict:
                version += 1  # another trainer claimed this number first
        saved = {"bucket": MODELS, "name": prefix, "version": version, "model_object": f"{prefix}/model.pt",
                 "model_path": f"{MODELS}/{prefix}/model.pt", DIGEST_KEY: sha256_hex(weights.digest),
                 "latest_pointer": f"{name}/{key}_latest",
                 "objects": [f"{prefix}/{f}" for f in (*FILES, *((RESULT_FILE,) if result is not None else ()))]}
        files: dict[str, bytes] = {f: bytes(artifacts[f]) for f in FILES[1:-1]}
        if result is not None:  # the operation's result as stored with the model (analytics, history)
            full = {**result, "artifacts": {**(result.get("artifacts") or {}), **saved}}
            files[RESULT_FILE] = (json.dumps(full, indent=2, default=str) + "\n").encode()
        digests = {"model.pt": saved[DIGEST_KEY]}
        for f, data in files.items():
            digests[f] = sha256_hex((await objects.put(self.js, MODELS, f"{prefix}/{f}", data)).digest)
        metadata = {**metadata, "version": version, "name": prefix, DIGEST_KEY: saved[DIGEST_KEY],
                    FILES_DIGEST_KEY: dict(digests)}
        summary = json.dumps({**model_summary(metadata, metrics), "version": version}, default=str)
        body = (json.dumps(metadata, indent=2, default=str) + "\n").encode()
        st = await objects.put(self.js, MODELS, f"{prefix}/metadata.json", body,
                               headers={MODEL_HEADER: summary if len(summary) <= MAX_HEADER_BYTES else "{}"})
        saved[FILES_DIGEST_KEY] = {**digests, "metadata.json": sha256_hex(st.digest)}  # every file, for the result
        await self._point(name, key, version)
        return saved

    async def _point(self, name: str, key: str, version: int) -> None:
        """Move `<strategy>/<KEY>_latest` to `version` unless it already names a newer one (CAS)."""
        pointer = f"{name}/{key}_latest"
        for _ in range(20):
            st = await objects.stat(self.js, MODELS, pointer)
            current = st.header(LATEST_HEADER) if st is not None and not st.deleted else None
            m = re.match(r"^.+_v(\d+)$", current or "")
            if m and int(m[1]) >= version:
                return
            target = version_name(key, version)
            try:
                await objects.put(self.js, MODELS, pointer, (target + "\n").encode(),
                                  headers={LATEST_HEADER: target}, conditional=True, replaces=st)
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
        strategy, key, version = parse_model_ref(ref)
        if key is not None and KEY_RE.match(key):
            # The name given: one look-up of its own record, not a listing of the bucket (which grows
            # with every version and every backtest's curve stored beside one). Not found: the listing
            # below decides, and words the error.
            if version is not None:
                prefix = f"{strategy}/{version_name(key, version)}"
                st = await objects.stat(self.js, MODELS, f"{prefix}/metadata.json", direct=True)
                if st is not None and not st.deleted:
                    return prefix
            else:
                st = await objects.stat(self.js, MODELS, f"{strategy}/{key}_latest", direct=True)
                target = st.header(LATEST_HEADER) if st is not None and not st.deleted else None
                if target and _MODEL_VERSION.match(target):
                    return f"{strategy}/{version_name(key, int(target.rsplit('_v', 1)[1]))}"
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
        found = await objects.get(self.js, MODELS, f"{prefix}/{file}", max_bytes=MAX_JSON_FILE_BYTES)
        if found is None:
            return {}
        try:
            data = json.loads(bytes(found[0]))
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    async def show(self, ref: str) -> dict[str, Any]:
        """Everything stored about one version but the weights (their object name and size instead)."""
        prefix = await self.resolve(ref)
        weights = await objects.stat(self.js, MODELS, f"{prefix}/model.pt")
        out: dict[str, Any] = {"name": prefix, "bucket": MODELS, "model_object": f"{prefix}/model.pt",
                               "model_bytes": weights.size if weights else None,
                               "model_digest": weights.digest if weights else None}
        for part in ("config", "metrics", "features", "metadata"):
            out[part] = await self.read_json(prefix, f"{part}.json")
        out["result"] = await self.read_json(prefix, RESULT_FILE)
        out["backtests"] = await self.backtests(prefix)
        return out

    async def pull(self, ref: str, dest: Path) -> tuple[str, _Paths]:
        """Download one version's files into the existing folder `dest` (fixed file names only; each
        written to a temp file in `dest` and renamed, so a file is there whole or not at all)."""
        folder = Path(dest)
        if not folder.is_dir():
            raise ValidationError(f"{str(dest)[:200]}: not an existing folder")
        folder = folder.resolve()
        prefix = await self.resolve(ref)
        expected = await self.expected_digests(prefix)
        stored: list[tuple[str, Stored]] = []
        for f in (*FILES, RESULT_FILE):  # every file checked before a byte is written
            st = await objects.stat(self.js, MODELS, f"{prefix}/{f}")
            if st is None or st.deleted:
                if f == RESULT_FILE:
                    continue
                raise DataError(f"{MODELS}/{prefix}/{f} is missing")
            self.check_file(prefix, f, st, expected)  # fetch then checks the bytes against st
            stored.append((f, st))
        written: _Paths = []
        for f, st in stored:
            target = folder / f
            if target.parent != folder:
                raise ValidationError(f"refusing to write outside {folder}")
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{f}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out:
                    await objects.fetch(self.js, st, into=out, max_bytes=MAX_MODEL_FILE_BYTES)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            written.append(target)
        return prefix, written

    async def load(self, ref: str) -> tuple[str, bytes]:
        """(version name, model.pt's bytes) of a model, checked against the digest of its weights
        (DataError naming both digests when they differ): what anything that runs a model loads."""
        prefix = await self.resolve(ref)
        found = await objects.get(self.js, MODELS, f"{prefix}/model.pt", max_bytes=MAX_MODEL_FILE_BYTES)
        if found is None:
            raise DataError(f"{MODELS}/{prefix}/model.pt is missing")
        # get checked the bytes against the meta record found[1]; this checks the record's digest
        self.check_file(prefix, "model.pt", found[1], await self.expected_digests(prefix))
        return prefix, bytes(found[0])

    async def load_files(self, ref: str, files: Sequence[str]) -> tuple[str, dict[str, bytes]]:
        """(version name, {file: bytes}) of a model's `files`, each checked against its recorded digest
        (model.pt must have one): what a backtest runs."""
        prefix = await self.resolve(ref)
        # The files and the digests they must have at once (one round trip's wait, not one per file nor
        # the digests' first), each file checked against them below, in the order asked.
        expected, *found = await asyncio.gather(
            self.expected_digests(prefix),
            *(objects.get(self.js, MODELS, f"{prefix}/{f}", max_bytes=MAX_MODEL_FILE_BYTES
                          if f == "model.pt" else MAX_JSON_FILE_BYTES) for f in files))
        out: dict[str, bytes] = {}
        for f, got in zip(files, found, strict=True):
            if got is None:
                raise DataError(f"{MODELS}/{prefix}/{f} is missing")
            self.check_file(prefix, f, got[1], expected)
            out[f] = bytes(got[0])
        return prefix, out

    async def save_backtest(self, prefix: str, op_id: str, data: bytes, summary: Mapping[str, Any]) -> Stored:
        """A backtest's equity curve beside its model: `<strategy>/<KEY>_vN/<op_id>.parquet`, its summary
        in a header (so `backtests` reads no object's bytes). Written again by a redone attempt."""
        if not _MODEL_OBJECT.match(f"{prefix}/metadata.json") or not subjects.is_op_id(op_id):
            raise ValidationError(f"no backtest object for {prefix[:80]!r} / {op_id[:80]!r}")
        header = json.dumps(dict(summary), default=str)
        if len(header) > MAX_HEADER_BYTES:
            header = json.dumps({"op_id": op_id})
        return await objects.put(self.js, MODELS, f"{prefix}/{op_id}{BACKTEST_SUFFIX}", data,
                                 headers={BACKTEST_HEADER: header})

    async def backtests(self, prefix: str) -> _Rows:
        """The backtests stored beside one version, oldest first, each its header's summary."""
        rows: _Rows = []
        for st in await objects.list_objects(self.js, MODELS):
            m = _MODEL_OBJECT.match(st.name)
            if not m or st.deleted or f"{m['strategy']}/{m['key']}_v{m['n']}" != prefix \
                    or not m["file"].endswith(BACKTEST_SUFFIX):
                continue
            try:
                summary = json.loads(st.header(BACKTEST_HEADER) or "{}")
            except ValueError:
                summary = {}
            rows.append({"object": st.name, "bytes": st.size, **(summary if isinstance(summary, dict) else {})})
        return sorted(rows, key=lambda r: r["object"])

    async def read_backtest(self, name: str) -> bytes | None:
        """The bytes of a backtest's equity curve (`<strategy>/<KEY>_vN/<op_id>.parquet`, as its result
        names it), or None when it is not stored; a name of any other shape is refused."""
        m = _MODEL_OBJECT.match(name) if isinstance(name, str) else None
        if m is None or not m["file"].endswith(BACKTEST_SUFFIX) \
                or not subjects.is_op_id(m["file"][:-len(BACKTEST_SUFFIX)]):
            raise ValidationError(f"{str(name)[:120]!r} is not a backtest's equity curve in {MODELS}")
        found = await objects.get(self.js, MODELS, name, max_bytes=MAX_CURVE_BYTES)
        return bytes(found[0]) if found is not None else None

    def check_file(self, prefix: str, file: str, st: Stored, expected: Expected) -> None:
        """Refuse the meta record `st` of `prefix`'s `file` unless its digest is the expected one (a
        fetch of `st` then checks the bytes against that digest). model.pt must have a digest on
        record; the other files are checked where one is (their digests came with this change)."""
        digests, source = expected
        want, got = digests.get(file, ""), sha256_hex(st.digest)
        if file == "model.pt" and not want:
            raise DataError(f"{MODELS}/{prefix}/model.pt: no digest of its weights is recorded ({source}); "
                            f"refusing it (stored sha256 {got})")
        if want and got != want:
            what = "the digest of its weights" if file == "model.pt" else "its recorded digest"
            raise DataError(f"{MODELS}/{prefix}/{file} does not match {what}: expected sha256 {want} ({source}), "
                            f"stored {got}; refusing it")
        if file == "model.pt":
            self.verified[prefix] = f"sha256 {got} ({source})"

    async def expected_digests(self, prefix: str) -> Expected:
        """({file: hex SHA-256 it must have}, where they come from): the `completed` result of the
        training that made `prefix` while it is in OPS, otherwise the version's metadata.json (which
        holds all digests but its own)."""
        for op_id in await self._made_by(prefix):
            view = (await read_views(self.js, subjects.lifecycle_filters(op_id))).get(op_id)
            artifacts = (view.result or {}).get("artifacts") if view is not None else None
            if view is not None and view.status == "completed" and isinstance(artifacts, dict) \
                    and artifacts.get("name") == prefix and isinstance(artifacts.get(DIGEST_KEY), str):
                return _digests(artifacts), f"from the completed result of {op_id} in OPS"
        meta = await self.read_json(prefix, "metadata.json")
        digests = _digests(meta)
        digests.pop("metadata.json", None)
        return digests, "from its metadata.json: the operation that made it is no longer in OPS"

    async def _made_by(self, prefix: str) -> list[str]:
        """The operations whose stored `completed` event names `prefix` as the model they made."""
        found: list[str] = []

        def on_msg(subject: str, data: bytes) -> None:
            try:
                ev = decode_event_on(subject, data)
            except DecodeError:
                return
            artifacts = ev.result.get("artifacts") if isinstance(ev, OperationCompleted) else None
            if isinstance(artifacts, dict) and artifacts.get("name") == prefix and len(found) < 100:
                found.append(ev.op_id)

        # Only the training domain's: models are written by trainers alone (their role's permissions),
        # so the others' completions (every backtest's, every load's) are not read for each model.
        await read_events(self.js, [f"ops.{StartTraining.domain}.*.{OperationCompleted.name}"], on_msg)
        return found


def _digests(record: Mapping[str, Any]) -> dict[str, str]:
    """{file: hex SHA-256} from a completed result's artifacts or a metadata.json (model.pt's own key
    wins: it is the one every version has)."""
    files = record.get(FILES_DIGEST_KEY)
    out = {f: d for f, d in files.items() if isinstance(f, str) and isinstance(d, str)} \
        if isinstance(files, dict) else {}
    if isinstance(record.get(DIGEST_KEY), str):
        out["model.pt"] = record[DIGEST_KEY]
    return out
