"""Model artifacts on disk: `models_dir/{strategy}/{SYMBOLS}_{timeframe}_v{N}/` plus a latest pointer.

Each version folder holds model.pt (state dict), config.json (strategy + architecture + input size),
metrics.json, features.json (feature names + scaler parameters) and metadata.json. The version number
is claimed with `os.mkdir`, which is atomic, so two trainers saving at once get different versions.
metadata.json is written last and marks the version complete; listings skip folders without it.
The pointer `{SYMBOLS}_{timeframe}_latest` is a one-line text file (portable, unlike symlinks)
naming the latest version folder, replaced atomically.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ktrdr.errors import ValidationError

FILES: tuple[str, ...] = ("model.pt", "config.json", "metrics.json", "features.json", "metadata.json")
_VERSION_RE = re.compile(r"^(?P<key>.+)_v(?P<n>\d+)$")


def model_key(symbols: Sequence[str], timeframes: Sequence[str]) -> str:
    """`AAPL-MSFT_1h-4h` (or `AAPL_1h`): the folder stem shared by all versions of one model."""
    return f"{'-'.join(symbols)}_{'-'.join(timeframes)}"


def write_json_atomic(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    *,
    state_dict: dict[str, torch.Tensor],
    config: dict[str, Any],
    metrics: dict[str, Any],
    features: dict[str, Any],
    metadata: dict[str, Any],
) -> dict[str, Any]:
    """Write a new version; returns its paths and version number."""
    parent = Path(models_dir) / strategy_name
    key = model_key(symbols, timeframes)
    version, path = _claim_version(parent, key)
    tmp = path / ".model.pt.tmp"
    torch.save(state_dict, tmp)
    os.replace(tmp, path / "model.pt")
    write_json_atomic(path / "config.json", config)
    write_json_atomic(path / "metrics.json", metrics)
    write_json_atomic(path / "features.json", features)
    write_json_atomic(
        path / "metadata.json", {**metadata, "version": version, "name": f"{strategy_name}/{path.name}"}
    )
    latest = parent / f"{key}_latest"
    fd, tmp_name = tempfile.mkstemp(dir=parent, prefix=f".{latest.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(path.name + "\n")
    os.replace(tmp_name, latest)
    return {
        "model_path": str(path / "model.pt"),
        "model_dir": str(path),
        "version": version,
        "name": f"{strategy_name}/{path.name}",
        "latest_pointer": str(latest),
        "files": {name: str(path / name) for name in FILES},
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
            return parent / ptr.read_text(encoding="utf-8").strip()
    elif parent.is_dir():
        ptrs = sorted(parent.glob("*_latest"))
        if len(ptrs) == 1:
            return parent / ptrs[0].read_text(encoding="utf-8").strip()
        if len(ptrs) > 1:
            keys = ", ".join(f"{strat}/{x.name[: -len('_latest')]}" for x in ptrs)
            raise ValidationError(f"{name_or_path!r} has several models", hint=f"pick one of: {keys}")
    raise ValidationError(f"no model {name_or_path!r} under {root}", hint="`list_models` shows what exists")


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
