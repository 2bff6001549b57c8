"""KTRDR v2 strategy YAML: load, validate and type it.

A strategy file is what users bring from KTRDR. This module turns it into frozen dataclasses and
rejects anything the training pipeline could not honour, raising `StrategyError(file, path, problem)`
where `path` is the field path a user can find in the file (`indicators[2].period`,
`fuzzy_sets.rsi.oversold.parameters`, `model.training.optimizer`). Validation happens once here so
the rest of the pipeline can trust the objects. Unknown keys are ignored outside the indicator and
fuzzy-set sections (KTRDR files carry extra sections such as backtesting settings); inside those two
sections an unknown key is almost always a typo that would silently change the features, so it is an
error.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ktrdr.errors import StrategyError

VALID_TIMEFRAMES: tuple[str, ...] = ("1m", "5m", "15m", "30m", "1h", "4h", "1d")
TIMEFRAME_MINUTES: dict[str, int] = {"1m": 1, "5m": 5, "15m": 15, "30m": 30, "1h": 60, "4h": 240, "1d": 1440}
ACTIVATIONS: tuple[str, ...] = ("relu", "tanh", "gelu", "leaky_relu")
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd", "rmsprop")
MONITORS: tuple[str, ...] = ("val_loss", "val_accuracy")
MEMBERSHIP_PARAM_COUNT: dict[str, int] = {"triangular": 3, "trapezoidal": 4, "gaussian": 2}


# --------------------------------------------------------------------------------------------------
# Typed strategy
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingData:
    symbols: list[str]
    symbols_mode: str  # single_symbol | multi_symbol
    timeframes: list[str]
    timeframes_mode: str  # single_timeframe | multi_timeframe
    base_timeframe: str
    history_required: int = 200


@dataclass(frozen=True)
class IndicatorConfig:
    name: str  # registry name, e.g. "rsi"
    id: str  # column name of the primary output: feature_id if given, else name
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MembershipConfig:
    type: str  # triangular | trapezoidal | gaussian
    parameters: list[float]


@dataclass(frozen=True)
class Architecture:
    hidden_layers: list[int]
    activation: str = "relu"
    dropout: float = 0.2


@dataclass(frozen=True)
class FeatureConfig:
    lookback_periods: int = 0
    scale_features: bool = True


@dataclass(frozen=True)
class EarlyStopping:
    enabled: bool = True
    patience: int = 10
    monitor: str = "val_loss"
    min_delta: float = 0.0


@dataclass(frozen=True)
class TrainingParams:
    learning_rate: float = 0.001
    batch_size: int = 32
    epochs: int = 100
    optimizer: str = "adam"
    early_stopping: EarlyStopping | None = None


@dataclass(frozen=True)
class ModelConfig:
    type: str
    architecture: Architecture
    features: FeatureConfig
    training: TrainingParams


@dataclass(frozen=True)
class Decisions:
    output_format: str = "classification"
    confidence_threshold: float = 0.6


@dataclass(frozen=True)
class LabelConfig:
    source: str = "zigzag"
    zigzag_threshold: float = 0.03
    label_lookahead: int = 20


@dataclass(frozen=True)
class DataSplit:
    train: float
    validation: float
    test: float


@dataclass(frozen=True)
class TrainingConfig:
    method: str
    labels: LabelConfig
    data_split: DataSplit


@dataclass(frozen=True)
class Strategy:
    name: str
    description: str
    version: str
    training_data: TrainingData
    indicators: list[IndicatorConfig]
    fuzzy_sets: dict[str, dict[str, MembershipConfig]]  # column -> set name -> membership
    model: ModelConfig
    decisions: Decisions
    training: TrainingConfig
    source_file: str = "<string>"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored in the model's config.json)."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------
def load_strategy(path: str | Path) -> Strategy:
    """Read and validate a strategy file; every problem raises StrategyError naming the field path."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise StrategyError(str(p), "<file>", f"cannot read the file: {exc.strerror or exc}") from exc
    return parse_strategy(text, file=str(p))


def parse_strategy(text: str, file: str = "<string>") -> Strategy:
    """Validate strategy YAML text. `file` is only used in error messages."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "<yaml>"
        problem = getattr(exc, "problem", None) or str(exc)
        raise StrategyError(file, where, f"YAML syntax error: {problem}") from exc
    return _Validator(file).strategy(doc)


def list_strategies(directory: str | Path) -> list[dict[str, Any]]:
    """Every *.yaml / *.yml file in `directory`, valid or not, with a one-line summary each."""
    out: list[dict[str, Any]] = []
    d = Path(directory)
    if not d.is_dir():
        return out
    for p in sorted([*d.glob("*.yaml"), *d.glob("*.yml")]):
        try:
            s = load_strategy(p)
        except StrategyError as exc:
            out.append({"file": str(p), "name": p.stem, "valid": False, "error": str(exc)})
            continue
        out.append(
            {
                "file": str(p),
                "name": s.name,
                "valid": True,
                "description": s.description,
                "symbols": list(s.training_data.symbols),
                "timeframes": list(s.training_data.timeframes),
                "base_timeframe": s.training_data.base_timeframe,
                "indicators": [i.id for i in s.indicators],
                "epochs": s.model.training.epochs,
            }
        )
    return out


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------
class _Validator:
    """Walks the parsed document; each helper takes the field path it is checking."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, path: str, problem: str) -> StrategyError:
        return StrategyError(self.file, path or "<root>", problem)

    # -- primitives ---------------------------------------------------------------------------------
    def mapping(self, value: Any, path: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(path, f"must be a mapping, got {_kind(value)}")
        return value

    def section(
        self, parent: Mapping[str, Any], key: str, path: str, *, required: bool = True
    ) -> Mapping[str, Any]:
        p = _join(path, key)
        if key not in parent or parent[key] is None:
            if required:
                raise self.fail(p, "missing required section")
            return {}
        return self.mapping(parent[key], p)

    def string(self, parent: Mapping[str, Any], key: str, path: str, default: str | None = None) -> str:
        p = _join(path, key)
        value = parent.get(key, default)
        if value is None:
            raise self.fail(p, "missing required field")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.fail(p, f"must be a string, got {_kind(value)}")
        text = str(value).strip()
        if not text:
            raise self.fail(p, "must not be empty")
        return text

    def choice(
        self, parent: Mapping[str, Any], key: str, path: str, options: tuple[str, ...], default: str
    ) -> str:
        value = self.string(parent, key, path, default).lower()
        if value not in options:
            raise self.fail(
                _join(path, key), f"unknown value {value!r}; expected one of {', '.join(options)}"
            )
        return value

    def integer(
        self, parent: Mapping[str, Any], key: str, path: str, default: int | None, minimum: int
    ) -> int:
        p = _join(path, key)
        value = parent.get(key, default)
        if value is None:
            raise self.fail(p, "missing required field")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(p, f"must be an integer, got {_kind(value)}")
        if value < minimum:
            raise self.fail(p, f"must be >= {minimum}, got {value}")
        return value

    def number(
        self,
        parent: Mapping[str, Any],
        key: str,
        path: str,
        default: float | None,
        *,
        low: float | None = None,
        high: float | None = None,
        low_open: bool = False,
        high_open: bool = False,
    ) -> float:
        p = _join(path, key)
        value = parent.get(key, default)
        if value is None:
            raise self.fail(p, "missing required field")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.fail(p, f"must be a finite number, got {_kind(value)}")
        x = float(value)
        if low is not None and (x < low or (low_open and x == low)):
            raise self.fail(p, f"must be {'>' if low_open else '>='} {low}, got {x}")
        if high is not None and (x > high or (high_open and x == high)):
            raise self.fail(p, f"must be {'<' if high_open else '<='} {high}, got {x}")
        return x

    def boolean(self, parent: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
        value = parent.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(_join(path, key), f"must be true or false, got {_kind(value)}")
        return value

    # -- sections -----------------------------------------------------------------------------------
    def strategy(self, doc: Any) -> Strategy:
        if doc is None:
            raise self.fail("<root>", "the file is empty")
        root = self.mapping(doc, "<root>")
        name = self.string(root, "name", "")
        if any(c in name for c in "/\\ \t") or name.startswith("."):
            raise self.fail("name", f"{name!r} must be usable as a folder name (no slashes or spaces)")
        training_data = self.training_data(self.section(root, "training_data", ""))
        indicators = self.indicators(root.get("indicators"))
        fuzzy_sets = self.fuzzy_sets(root.get("fuzzy_sets"), indicators)
        return Strategy(
            name=name,
            description=str(root.get("description") or ""),
            version=str(root.get("version") or "1.0"),
            training_data=training_data,
            indicators=indicators,
            fuzzy_sets=fuzzy_sets,
            model=self.model(self.section(root, "model", "")),
            decisions=self.decisions(self.section(root, "decisions", "", required=False)),
            training=self.training(self.section(root, "training", "")),
            source_file=self.file,
        )

    def training_data(self, td: Mapping[str, Any]) -> TrainingData:
        path = "training_data"
        sym = self.section(td, "symbols", path)
        sym_path = f"{path}.symbols"
        symbols = self.string_list(sym.get("list"), f"{sym_path}.list")
        symbols = [s.upper() for s in symbols]
        if len(set(symbols)) != len(symbols):
            raise self.fail(f"{sym_path}.list", "contains duplicate symbols")
        sym_mode = self.choice(
            sym,
            "mode",
            sym_path,
            ("single_symbol", "multi_symbol"),
            "single_symbol" if len(symbols) == 1 else "multi_symbol",
        )
        if sym_mode == "single_symbol" and len(symbols) != 1:
            raise self.fail(
                f"{sym_path}.list", f"mode single_symbol needs exactly one symbol, got {len(symbols)}"
            )

        tfs = self.section(td, "timeframes", path)
        tf_path = f"{path}.timeframes"
        timeframes = self.string_list(tfs.get("list"), f"{tf_path}.list")
        for i, tf in enumerate(timeframes):
            if tf not in VALID_TIMEFRAMES:
                raise self.fail(
                    f"{tf_path}.list[{i}]", f"unknown timeframe {tf!r}; valid: {', '.join(VALID_TIMEFRAMES)}"
                )
        if len(set(timeframes)) != len(timeframes):
            raise self.fail(f"{tf_path}.list", "contains duplicate timeframes")
        tf_mode = self.choice(
            tfs,
            "mode",
            tf_path,
            ("single_timeframe", "multi_timeframe"),
            "single_timeframe" if len(timeframes) == 1 else "multi_timeframe",
        )
        if tf_mode == "single_timeframe" and len(timeframes) != 1:
            raise self.fail(
                f"{tf_path}.list", f"mode single_timeframe needs exactly one timeframe, got {len(timeframes)}"
            )
        # The base timeframe carries the labels; by default the finest one, so higher ones align onto it.
        finest = min(timeframes, key=TIMEFRAME_MINUTES.__getitem__)
        base = self.string(tfs, "base_timeframe", tf_path, finest)
        if base not in timeframes:
            raise self.fail(
                f"{tf_path}.base_timeframe", f"{base!r} is not in the timeframe list {timeframes}"
            )
        if base != finest:
            raise self.fail(
                f"{tf_path}.base_timeframe",
                f"{base!r} must be the finest timeframe ({finest!r}): higher timeframes are aligned onto it",
            )
        history = self.integer(td, "history_required", path, 200, 0)
        return TrainingData(symbols, sym_mode, timeframes, tf_mode, base, history)

    def string_list(self, value: Any, path: str) -> list[str]:
        if value is None:
            raise self.fail(path, "missing required field")
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            raise self.fail(path, f"must be a non-empty list, got {_kind(value)}")
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise self.fail(f"{path}[{i}]", f"must be a non-empty string, got {_kind(item)}")
            out.append(item.strip())
        return out

    def indicators(self, value: Any) -> list[IndicatorConfig]:
        # Imported here: the registry imports nothing from this module, but keeping the strategy model
        # importable without pandas-heavy code at module import time is cheap insurance.
        from ktrdr.training.indicators import REGISTRY

        if value is None:
            raise self.fail("indicators", "missing required section")
        if not isinstance(value, list) or not value:
            raise self.fail("indicators", f"must be a non-empty list, got {_kind(value)}")
        out: list[IndicatorConfig] = []
        seen: set[str] = set()
        for i, raw in enumerate(value):
            path = f"indicators[{i}]"
            item = self.mapping(raw, path)
            name = self.string(item, "name", path).lower()
            spec = REGISTRY.get(name)
            if spec is None:
                raise self.fail(
                    f"{path}.name", f"unknown indicator {name!r}; known: {', '.join(sorted(REGISTRY))}"
                )
            ind_id = self.string(item, "feature_id", path, name) if "feature_id" in item else name
            if ind_id in seen:
                raise self.fail(
                    path,
                    f"duplicate indicator {ind_id!r}; give repeated indicators distinct feature_id values",
                )
            seen.add(ind_id)
            raw_params = {k: v for k, v in item.items() if k not in ("name", "feature_id")}
            # KTRDR also allows `params: {period: 14}` nested; accept both spellings.
            if "params" in raw_params or "parameters" in raw_params:
                key = "params" if "params" in raw_params else "parameters"
                nested = self.mapping(raw_params.pop(key), f"{path}.{key}")
                raw_params.update(nested)
            try:
                params = spec.validate(raw_params)
            except ValueError as exc:
                param, _, problem = str(exc).partition(": ")
                raise self.fail(f"{path}.{param}" if param else path, problem or str(exc)) from None
            out.append(IndicatorConfig(name=name, id=ind_id, params=params))
        return out

    def fuzzy_sets(
        self, value: Any, indicators: list[IndicatorConfig]
    ) -> dict[str, dict[str, MembershipConfig]]:
        from ktrdr.training.indicators import output_columns

        if value is None:
            raise self.fail("fuzzy_sets", "missing required section")
        sets = self.mapping(value, "fuzzy_sets")
        if not sets:
            raise self.fail("fuzzy_sets", "must declare at least one indicator's fuzzy sets")
        columns = {col for ind in indicators for col in output_columns(ind.name, ind.id)}
        out: dict[str, dict[str, MembershipConfig]] = {}
        for column, raw_sets in sets.items():
            path = f"fuzzy_sets.{column}"
            if column not in columns:
                raise self.fail(
                    path,
                    f"fuzzy sets for {column!r}, which is not a declared indicator output; "
                    f"declared: {', '.join(sorted(columns))}",
                )
            members = self.mapping(raw_sets, path)
            if not members:
                raise self.fail(path, "must declare at least one fuzzy set")
            out[str(column)] = {str(k): self.membership(v, f"{path}.{k}") for k, v in members.items()}
        return out

    def membership(self, value: Any, path: str) -> MembershipConfig:
        if isinstance(value, list):  # KTRDR shorthand: a bare list is a triangle
            value = {"type": "triangular", "parameters": value}
        m = self.mapping(value, path)
        unknown = set(m) - {"type", "parameters"}
        if unknown:
            raise self.fail(
                f"{path}.{sorted(unknown)[0]}", "unknown key; a fuzzy set has `type` and `parameters`"
            )
        mtype = self.choice(m, "type", path, tuple(MEMBERSHIP_PARAM_COUNT), "triangular")
        ppath = f"{path}.parameters"
        raw = m.get("parameters")
        if not isinstance(raw, list):
            raise self.fail(ppath, f"must be a list of numbers, got {_kind(raw)}")
        params: list[float] = []
        for i, x in enumerate(raw):
            if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
                raise self.fail(f"{ppath}[{i}]", f"must be a finite number, got {_kind(x)}")
            params.append(float(x))
        want = MEMBERSHIP_PARAM_COUNT[mtype]
        if len(params) != want:
            raise self.fail(ppath, f"{mtype} membership takes {want} parameters, got {len(params)}")
        if mtype == "gaussian":
            if params[1] <= 0:
                raise self.fail(ppath, f"gaussian sigma (second parameter) must be > 0, got {params[1]}")
        elif any(b < a for a, b in itertools.pairwise(params)) or params[0] == params[-1]:
            raise self.fail(
                ppath, f"{mtype} parameters must be non-decreasing with first < last, got {params}"
            )
        return MembershipConfig(mtype, params)

    def model(self, m: Mapping[str, Any]) -> ModelConfig:
        path = "model"
        mtype = self.choice(m, "type", path, ("mlp",), "mlp")
        arch = self.section(m, "architecture", path)
        apath = f"{path}.architecture"
        layers_raw = arch.get("hidden_layers")
        if not isinstance(layers_raw, list) or not layers_raw:
            raise self.fail(
                f"{apath}.hidden_layers", f"must be a non-empty list of sizes, got {_kind(layers_raw)}"
            )
        layers: list[int] = []
        for i, n in enumerate(layers_raw):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise self.fail(f"{apath}.hidden_layers[{i}]", f"must be a positive integer, got {n!r}")
            layers.append(n)
        architecture = Architecture(
            hidden_layers=layers,
            activation=self.choice(arch, "activation", apath, ACTIVATIONS, "relu"),
            dropout=self.number(arch, "dropout", apath, 0.2, low=0.0, high=1.0, high_open=True),
        )
        feats = self.section(m, "features", path, required=False)
        fpath = f"{path}.features"
        features = FeatureConfig(
            lookback_periods=self.integer(feats, "lookback_periods", fpath, 0, 0),
            scale_features=self.boolean(feats, "scale_features", fpath, True),
        )
        tr = self.section(m, "training", path)
        tpath = f"{path}.training"
        es_raw = tr.get("early_stopping")
        early: EarlyStopping | None = None
        if es_raw is not None and es_raw is not False:
            epath = f"{tpath}.early_stopping"
            es = self.mapping(es_raw, epath)
            early = EarlyStopping(
                enabled=self.boolean(es, "enabled", epath, True),
                patience=self.integer(es, "patience", epath, 10, 1),
                monitor=self.choice(es, "monitor", epath, MONITORS, "val_loss"),
                min_delta=self.number(es, "min_delta", epath, 0.0, low=0.0),
            )
            if not early.enabled:
                early = None
        training = TrainingParams(
            learning_rate=self.number(tr, "learning_rate", tpath, 0.001, low=0.0, low_open=True, high=10.0),
            batch_size=self.integer(tr, "batch_size", tpath, 32, 1),
            epochs=self.integer(tr, "epochs", tpath, 100, 1),
            optimizer=self.choice(tr, "optimizer", tpath, OPTIMIZERS, "adam"),
            early_stopping=early,
        )
        return ModelConfig(mtype, architecture, features, training)

    def decisions(self, d: Mapping[str, Any]) -> Decisions:
        path = "decisions"
        return Decisions(
            output_format=self.choice(d, "output_format", path, ("classification",), "classification"),
            confidence_threshold=self.number(d, "confidence_threshold", path, 0.6, low=0.0, high=1.0),
        )

    def training(self, t: Mapping[str, Any]) -> TrainingConfig:
        path = "training"
        method = self.choice(t, "method", path, ("supervised",), "supervised")
        lab = self.section(t, "labels", path)
        lpath = f"{path}.labels"
        labels = LabelConfig(
            source=self.choice(lab, "source", lpath, ("zigzag",), "zigzag"),
            zigzag_threshold=self.number(
                lab, "zigzag_threshold", lpath, 0.03, low=0.0, low_open=True, high=1.0, high_open=True
            ),
            label_lookahead=self.integer(lab, "label_lookahead", lpath, 20, 1),
        )
        sp = self.section(t, "data_split", path)
        spath = f"{path}.data_split"
        split = DataSplit(
            train=self.number(sp, "train", spath, None, low=0.0, low_open=True, high=1.0),
            validation=self.number(sp, "validation", spath, None, low=0.0, low_open=True, high=1.0),
            test=self.number(sp, "test", spath, None, low=0.0, low_open=True, high=1.0),
        )
        total = split.train + split.validation + split.test
        if abs(total - 1.0) > 1e-6:
            raise self.fail(spath, f"train + validation + test must sum to 1, got {total:g}")
        return TrainingConfig(method, labels, split)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, str | int | float | bool):
        return f"{type(value).__name__} {value!r}"
    return type(value).__name__
