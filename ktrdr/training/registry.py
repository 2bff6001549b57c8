"""Model artifacts and their names: `{strategy}/{SYMBOLS}_{timeframe}_v{N}/{file}` plus a latest pointer
`{strategy}/{SYMBOLS}_{timeframe}_latest`, written from the bytes a training run returns
(`TrainingOutcome.artifacts`). The store of record is the NATS object bucket MODELS (the same names
as object names: ktrdr/training/model_store.py ModelStore); this module holds the name rules both
use (`model_key`, `version_name`, `parse_model_ref`, the listing row) and a local folder registry
(`save_model`/`list_models`/`show_model` under a models_dir) for offline use and tests.

Each version folder holds model.pt (state dict), config.json (strategy + architecture + input size),
metrics.json, features.json (feature names + scaler parameters) and metadata.json (which records the
SHA-256 of model.pt: `load_model` refuses weights that do not have it). The version number
is claimed with `os.mkdir`, which is atomic, so two trainers saving at once get different versions.
metadata.json is written last and marks the version complete; listings skip folders without it.
The pointer `{SYMBOLS}_{timeframe}_latest` is a one-line text file (portable, unlike symlinks)
naming the latest version folder, replaced atomically. Paths are built only from validated names
(strategy name, normalised symbols, known timeframes) and checked to resolve inside models_dir, so no
command can make a save write anywhere else.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from events.bounds import MAX_SYMBOLS, MAX_TIMEFRAMES, NORMALIZED_SYMBOL
from ktrdr.errors import DataError, ValidationError
from ktrdr.files import atomic_write

FILES: tuple[str, ...] = ("model.pt", "config.json", "metrics.json", "features.json", "metadata.json")
# Stored beside FILES in MODELS: the operation's full result (KTRDR's schema, per-epoch history included).
RESULT_FILE = "result.json"
# In metadata.json (and a training's completed result): the hex SHA-256 of model.pt, checked on every
# load and pull (issue 18, F5: a rewritten model.pt was served under the original metadata).
DIGEST_KEY = "model_sha256"
FILES_DIGEST_KEY = "files_sha256"  # {file: hex SHA-256} of a version's files, in MODELS (model_store.py)
_VERSION_RE = re.compile(r"^(?P<key>.+)_v(?P<n>\d+)$")
# What model_key produces: SYMBOLS joined by '-', '_', timeframes joined by '-'.
KEY_RE = re.compile(rf"^{NORMALIZED_SYMBOL}(-{NORMALIZED_SYMBOL}){{0,{MAX_SYMBOLS - 1}}}"
                    rf"_[0-9a-z]{{2,3}}(-[0-9a-z]{{2,3}}){{0,{MAX_TIMEFRAMES - 1}}}$")
MAX_VERSION = 10**9
MAX_ARTIFACT_BYTES = 4 * 2**30


def model_key(symbols: Sequence[str], timeframes: Sequence[str]) -> str:
    """`AAPL-MSFT_1h-4h` (or `AAPL_1h`): the folder stem shared by all versions of one model.
    Built only from normalised symbols and known timeframes, so it can never name another folder."""
    from ktrdr.data.symbols import is_normalized_symbol
    from ktrdr.data.timeframes import TIMEFRAMES

    if not symbols or not timeframes:
        raise ValidationError("a model key needs at least one symbol and one timeframe")
    for sym in symbols:
        if not is_normalized_symbol(sym):
            raise ValidationError(f"invalid symbol {str(sym)[:40]!r} for a model key",
                                  hint="normalised symbols only: letters and digits, e.g. AAPL or EURUSD")
    for tf in timeframes:
        if tf not in TIMEFRAMES:
            raise ValidationError(f"invalid timeframe {str(tf)[:20]!r} for a model key")
    return f"{'-'.join(symbols)}_{'-'.join(timeframes)}"


def version_name(key: str, version: int) -> str:
    """`AAPL_1h_v3`: one version's folder (or object prefix) name."""
    if not KEY_RE.match(key) or isinstance(version, bool) or not 1 <= version <= MAX_VERSION:
        raise ValidationError(f"invalid model version {key[:80]!r} v{version}")
    return f"{key}_v{version}"


def parse_model_ref(ref: str) -> tuple[str, str | None, int | None]:
    """`strategy`, `strategy/KEY` or `strategy/KEY_vN` -> (strategy, key or None, version or None),
    every part checked against the rules that made it; anything else (a path, `..`) is refused."""
    from ktrdr.training.strategy import validate_name

    if not isinstance(ref, str) or len(ref) > 300 or ref.count("/") > 1:
        raise ValidationError(f"not a model name: {str(ref)[:80]!r}",
                              hint="strategy, strategy/SYMBOLS_tf or strategy/SYMBOLS_tf_vN (see `ktrdr models list`)")
    strategy, _, rest = ref.partition("/")
    strategy = validate_name(strategy)
    if not rest:
        return strategy, None, None
    m = _VERSION_RE.match(rest)
    key, version = (m["key"], int(m["n"])) if m and KEY_RE.match(m["key"]) else (rest, None)
    if not KEY_RE.match(key) or (version is not None and not 1 <= version <= MAX_VERSION):
        raise ValidationError(f"not a model name: {ref[:80]!r}",
                              hint="strategy/SYMBOLS_tf or strategy/SYMBOLS_tf_vN, e.g. mlp_rsi_aapl/AAPL_1h_v1")
    return strategy, key, version


def model_summary(metadata: Mapping[str, Any], metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The few fields a listing shows, taken from metadata.json (and metrics.json when at hand)."""
    test = (metrics or {}).get("test_metrics") or {}
    out = {k: metadata.get(k) for k in ("created", "op_id", "device", "gpu_name", "training_mode", "host", "pool",
                                        "simulated")}
    out["simulated"] = bool(out["simulated"])
    out["test_accuracy"] = test.get("test_accuracy", metadata.get("test_accuracy"))
    return out


def write_bytes_atomic(path: Path, data: bytes) -> None:
    atomic_write(path, data)


def write_json_atomic(path: Path, data: Any) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=False, default=str) + "\n").encode())


def inside(root: Path, *parts: str) -> Path:
    """root/parts..., refused unless the resolved path stays inside the resolved root."""
    base = Path(root).resolve()
    path = base.joinpath(*parts).resolve()
    if not path.is_relative_to(base) or path == base:
        raise ValidationError(f"refusing a path outside {base}: {'/'.join(parts)[:80]!r}")
    return path


def _claim_version(parent: Path, key: str) -> tuple[int, Path]:
    parent.mkdir(parents=True, exist_ok=True)
    existing = [int(m["n"]) for p in parent.iterdir() if (m := _VERSION_RE.match(p.name)) and m["key"] == key]
    n = max(existing, default=0) + 1
    while True:
        path = parent / f"{key}_v{n}"
        try:
            path.mkdir()  # atomic claim: fails if another writer took this number first
            return n, path
        except FileExistsError:
            n += 1


def save_model(
    models_dir: Path,
    strategy_name: str,
    symbols: Sequence[str],
    timeframes: Sequence[str],
    artifacts: Mapping[str, bytes],
) -> dict[str, Any]:
    """Write a new version from the artifact bytes a training run returned (ktrdr.training.job's
    ARTIFACT_FILES); returns its paths and version number. Every name is validated and the folder is
    checked to stay inside models_dir before anything is written."""
    from ktrdr.training.strategy import validate_name

    missing = [f for f in FILES if not isinstance(artifacts.get(f), bytes | bytearray)]
    if missing:
        raise ValidationError(f"model artifacts lack {missing}")
    if sum(len(artifacts[f]) for f in FILES) > MAX_ARTIFACT_BYTES:
        raise ValidationError(f"model artifacts exceed {MAX_ARTIFACT_BYTES // 2**30} GiB")
    name = validate_name(strategy_name)
    key = model_key(symbols, timeframes)
    parent = inside(Path(models_dir), name)
    version, path = _claim_version(parent, key)
    if path.parent != parent:
        raise ValidationError(f"refusing a model folder outside {parent}")
    try:
        metadata = json.loads(artifacts["metadata.json"])
    except ValueError as exc:
        raise ValidationError(f"metadata.json is not JSON: {exc}") from exc
    if not isinstance(metadata, dict):
        raise ValidationError("metadata.json must be a JSON object")
    for f in FILES[:-1]:
        write_bytes_atomic(path / f, bytes(artifacts[f]))
    # metadata.json last: it marks the version complete (listings skip folders without it)
    write_json_atomic(path / "metadata.json", {**metadata, "version": version, "name": f"{name}/{path.name}",
                                               DIGEST_KEY: hashlib.sha256(artifacts["model.pt"]).hexdigest()})
    latest = parent / f"{key}_latest"
    write_bytes_atomic(latest, (path.name + "\n").encode())
    return {
        "model_path": str(path / "model.pt"),
        "model_dir": str(path),
        "version": version,
        "name": f"{name}/{path.name}",
        "latest_pointer": str(latest),
        "files": {f: str(path / f) for f in FILES},
    }


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def list_models(models_dir: str | Path) -> list[dict[str, Any]]:
    """Every complete version, sorted by strategy, key and version; `latest` marks the pointed one."""
    root = Path(models_dir)
    out: list[dict[str, Any]] = []
    if not root.is_dir():
        return out
    for strat in sorted(p for p in root.iterdir() if p.is_dir()):
        latest: dict[str, str] = {}
        for ptr in strat.glob("*_latest"):
            try:
                latest[ptr.name[: -len("_latest")]] = ptr.read_text(encoding="utf-8").strip()
            except OSError:
                continue
        rows = []
        for d in strat.iterdir():
            m = _VERSION_RE.match(d.name)
            if not (d.is_dir() and m and (d / "metadata.json").exists()):
                continue
            meta = _read_json(d / "metadata.json")
            metrics = _read_json(d / "metrics.json")
            rows.append(
                {
                    "name": f"{strat.name}/{d.name}",
                    "strategy": strat.name,
                    "key": m["key"],
                    "version": int(m["n"]),
                    "path": str(d),
                    "latest": latest.get(m["key"]) == d.name,
                    "created": meta.get("created"),
                    "op_id": meta.get("op_id"),
                    "device": meta.get("device"),
                    "simulated": meta.get("simulated", False),
                    "test_accuracy": (metrics.get("test_metrics") or {}).get("test_accuracy"),
                }
            )
        out += sorted(rows, key=lambda r: (r["key"], r["version"]))
    return out


def resolve_model(models_dir: str | Path, name_or_path: str) -> Path:
    """A version folder from a path, `strategy/KEY_vN`, `strategy/KEY` (latest) or `strategy` (its
    single latest model)."""
    p = Path(name_or_path)
    if p.is_dir() and (p / "metadata.json").exists():
        return p
    root = Path(models_dir)
    direct = root / name_or_path
    if direct.is_dir() and (direct / "metadata.json").exists():
        return direct
    strat, _, key = name_or_path.partition("/")
    parent = root / strat
    if key:
        ptr = parent / f"{key}_latest"
        if ptr.exists():
            return _pointed(parent, ptr)
    elif parent.is_dir():
        ptrs = sorted(parent.glob("*_latest"))
        if len(ptrs) == 1:
            return _pointed(parent, ptrs[0])
        if len(ptrs) > 1:
            keys = ", ".join(f"{strat}/{x.name[: -len('_latest')]}" for x in ptrs)
            raise ValidationError(f"{name_or_path!r} has several models", hint=f"pick one of: {keys}")
    raise ValidationError(f"no model {name_or_path!r} under {root}", hint="`list_models` shows what exists")


def _pointed(parent: Path, ptr: Path) -> Path:
    """The version folder a latest pointer names: a sibling folder name, nothing else."""
    target = ptr.read_text(encoding="utf-8").strip()
    if not _VERSION_RE.match(target) or "/" in target or "\\" in target or target.startswith("."):
        raise ValidationError(f"{ptr} does not name a version folder: {target[:80]!r}")
    return parent / target


def load_model(models_dir: str | Path, name_or_path: str) -> tuple[Path, bytes]:
    """(version folder, model.pt's bytes), refused (DataError naming both digests) unless the bytes
    have the SHA-256 its metadata.json records: a rewritten model.pt is never loaded."""
    d = resolve_model(models_dir, name_or_path)
    expected = _read_json(d / "metadata.json").get(DIGEST_KEY)
    try:
        data = (d / "model.pt").read_bytes()
    except OSError as exc:
        raise DataError(f"{d / 'model.pt'}: cannot read it ({exc.strerror or exc})") from None
    got = hashlib.sha256(data).hexdigest()
    if not isinstance(expected, str) or got != expected:
        raise DataError(f"{d / 'model.pt'} does not match the digest of its weights: expected sha256 "
                        f"{expected if isinstance(expected, str) else '(none recorded)'} (from its "
                        f"metadata.json), got {got}; refusing it")
    return d, data


def show_model(models_dir: str | Path, name_or_path: str) -> dict[str, Any]:
    """Everything stored about one version (the weights' path, not the weights)."""
    d = resolve_model(models_dir, name_or_path)
    return {
        "path": str(d),
        "model_path": str(d / "model.pt"),
        "config": _read_json(d / "config.json"),
        "metrics": _read_json(d / "metrics.json"),
        "features": _read_json(d / "features.json"),
        "metadata": _read_json(d / "metadata.json"),
    }
