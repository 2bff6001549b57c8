"""KTRDR v2 strategy YAML: parse it safely, decode it into frozen msgspec Structs, check what spans fields.

A strategy file is what users bring from KTRDR, and it also arrives inside commands from anyone who can
publish one, so it is treated as hostile until decoded:
- the text is bounded in size, the YAML in nesting depth and node count, and anchors/aliases are
  refused while parsing (an alias "billion laughs" is refused at its first anchor, before anything is
  expanded);
- the document is decoded by msgspec into the Structs below; every number has a cap, and the cap is
  in the error; names and symbols are restricted to alphabets that can never form a path like `..`;
- then the checks that span fields run (modes vs list lengths, the base timeframe, indicator
  parameters against the indicator registry, fuzzy sets against declared indicator outputs, the data
  split summing to 1).
Every problem raises `StrategyError(file, path, problem)` where `path` is the field path a user can find
in the file (`indicators[2].period`, `fuzzy_sets.rsi.oversold.parameters`, `model.training.optimizer`).
Unknown keys are ignored outside the indicator and fuzzy-set sections (KTRDR files carry extra sections
such as backtesting settings); inside those two an unknown key is almost always a typo that would
silently change the features, so it is an error. Parsing is cached per process on (text, file).
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from pathlib import Path
from typing import Annotated, Any

import msgspec
import yaml
from msgspec import Meta
from msgspec.structs import force_setattr

from events.bounds import MAX_STRATEGY_BYTES, MAX_SYMBOLS, MAX_TIMEFRAMES, Epochs, Timeframe
from ktrdr.data.symbols import normalize_symbol
from ktrdr.errors import StrategyError, ValidationError

# --- bounds on the YAML tree (its text: MAX_STRATEGY_BYTES) --------------------------------------
MAX_DEPTH = 32
MAX_NODES = 50_000

# --- caps on fields (each one appears in the error that enforces it; symbols, timeframes and epochs
# are bounded as the commands bound them, in events/bounds.py) ------------------------------------
MAX_INDICATORS = 64
MAX_INDICATOR_INT_PARAM = 5_000  # periods and other integer indicator parameters
MAX_FUZZY_COLUMNS = 256
MAX_FUZZY_SETS = 32
MAX_LAYERS = 16
MAX_LAYER_UNITS = 8_192
MAX_HIDDEN_PARAMETERS = 50_000_000  # weights between hidden layers: a cap on memory, not on taste
MAX_BATCH_SIZE = 65_536
MAX_LOOKBACK = 100
MAX_HISTORY = 100_000
MAX_LOOKAHEAD = 10_000
MAX_PATIENCE = 100_000

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # strategy names become folder names under models/
ID_RE = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"  # feature ids and fuzzy-set names become column names
_ID = re.compile(ID_RE)

ACTIVATIONS: tuple[str, ...] = ("relu", "tanh", "gelu", "leaky_relu")
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd", "rmsprop")
MONITORS: tuple[str, ...] = ("val_loss", "val_accuracy")
MEMBERSHIP_PARAM_COUNT: dict[str, int] = {"triangular": 3, "trapezoidal": 4, "gaussian": 2}

# Sections a file must have; a missing one is reported as a section, not a field.
_SECTIONS = frozenset({"training_data", "symbols", "timeframes", "model", "architecture", "training",
                       "labels", "data_split", "indicators", "fuzzy_sets"})

PositiveInt = Annotated[int, Meta(ge=1)]
Fraction = Annotated[float, Meta(gt=0.0, le=1.0)]


def _choose(obj: msgspec.Struct, field: str, options: tuple[str, ...]) -> None:
    """Lower-case a choice field in place (KTRDR files write `Adam`) and check it is one of `options`.
    Raised from __post_init__ as "field: problem"; msgspec appends where the Struct sits."""
    value = str(getattr(obj, field)).strip().lower()
    if value not in options:
        raise ValueError(f"{field}: unknown value {value!r}; expected one of {', '.join(options)}")
    force_setattr(obj, field, value)


# --------------------------------------------------------------------------------------------------
# The typed strategy (frozen: one parsed strategy is shared by every caller in the process)
# --------------------------------------------------------------------------------------------------
class TrainingData(msgspec.Struct, frozen=True):
    symbols: list[str]
    symbols_mode: str  # single_symbol | multi_symbol
    timeframes: list[Timeframe]
    timeframes_mode: str  # single_timeframe | multi_timeframe
    base_timeframe: Timeframe
    history_required: int = 200


class IndicatorConfig(msgspec.Struct, frozen=True):
    name: str  # registry name, e.g. "rsi"
    id: str  # column name of the primary output: feature_id if given, else name
    params: dict[str, Any] = msgspec.field(default_factory=dict)


class MembershipConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    type: str = "triangular"  # triangular | trapezoidal | gaussian
    parameters: list[float] = msgspec.field(default_factory=list)


class Architecture(msgspec.Struct, frozen=True):
    hidden_layers: Annotated[
        list[Annotated[int, Meta(ge=1, le=MAX_LAYER_UNITS)]], Meta(min_length=1, max_length=MAX_LAYERS)
    ]
    activation: str = "relu"
    dropout: Annotated[float, Meta(ge=0.0, lt=1.0)] = 0.2

    def __post_init__(self) -> None:
        _choose(self, "activation", ACTIVATIONS)
        weights = sum(a * b for a, b in itertools.pairwise(self.hidden_layers))
        if weights > MAX_HIDDEN_PARAMETERS:
            raise ValueError(f"hidden_layers: {weights:,} weights between hidden layers; "
                             f"at most {MAX_HIDDEN_PARAMETERS:,}")


class FeatureConfig(msgspec.Struct, frozen=True):
    lookback_periods: Annotated[int, Meta(ge=0, le=MAX_LOOKBACK)] = 0
    scale_features: bool = True


class EarlyStopping(msgspec.Struct, frozen=True):
    enabled: bool = True
    patience: Annotated[int, Meta(ge=1, le=MAX_PATIENCE)] = 10
    monitor: str = "val_loss"
    min_delta: Annotated[float, Meta(ge=0.0, le=1e6)] = 0.0

    def __post_init__(self) -> None:
        _choose(self, "monitor", MONITORS)


class TrainingParams(msgspec.Struct, frozen=True):
    learning_rate: Annotated[float, Meta(gt=0.0, le=10.0)] = 0.001
    batch_size: Annotated[int, Meta(ge=1, le=MAX_BATCH_SIZE)] = 32
    epochs: Epochs = 100
    optimizer: str = "adam"
    early_stopping: EarlyStopping | None = None

    def __post_init__(self) -> None:
        _choose(self, "optimizer", OPTIMIZERS)
        if self.early_stopping is not None and not self.early_stopping.enabled:
            force_setattr(self, "early_stopping", None)


class ModelConfig(msgspec.Struct, frozen=True):
    architecture: Architecture
    training: TrainingParams
    type: str = "mlp"
    features: FeatureConfig = FeatureConfig()

    def __post_init__(self) -> None:
        _choose(self, "type", ("mlp",))


class Decisions(msgspec.Struct, frozen=True):
    output_format: str = "classification"
    confidence_threshold: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.6

    def __post_init__(self) -> None:
        _choose(self, "output_format", ("classification",))


class LabelConfig(msgspec.Struct, frozen=True):
    source: str = "zigzag"
    zigzag_threshold: Annotated[float, Meta(gt=0.0, lt=1.0)] = 0.03
    label_lookahead: Annotated[int, Meta(ge=1, le=MAX_LOOKAHEAD)] = 20

    def __post_init__(self) -> None:
        _choose(self, "source", ("zigzag",))


class DataSplit(msgspec.Struct, frozen=True):
    train: Fraction
    validation: Fraction
    test: Fraction

    def __post_init__(self) -> None:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must sum to 1, got {total:g}")


class TrainingConfig(msgspec.Struct, frozen=True):
    labels: LabelConfig
    data_split: DataSplit
    method: str = "supervised"

    def __post_init__(self) -> None:
        _choose(self, "method", ("supervised",))


class Strategy(msgspec.Struct, frozen=True):
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
        return msgspec.to_builtins(self)


# --------------------------------------------------------------------------------------------------
# The file's shape where it differs from the typed strategy (decoded, then checked across fields)
# --------------------------------------------------------------------------------------------------
class _SymbolsDoc(msgspec.Struct, frozen=True):
    items: Annotated[list[str], Meta(min_length=1, max_length=MAX_SYMBOLS)] = (
        msgspec.field(name="list"))
    mode: str | None = None


class _TimeframesDoc(msgspec.Struct, frozen=True):
    items: Annotated[list[Annotated[str, Meta(max_length=16)]], Meta(min_length=1, max_length=MAX_TIMEFRAMES)] = (
        msgspec.field(name="list"))
    mode: str | None = None
    base_timeframe: Annotated[str, Meta(max_length=16)] | None = None


class _TrainingDataDoc(msgspec.Struct, frozen=True):
    symbols: _SymbolsDoc
    timeframes: _TimeframesDoc
    history_required: Annotated[int, Meta(ge=0, le=MAX_HISTORY)] = 200


class _StrategyDoc(msgspec.Struct, frozen=True):
    name: Annotated[str, Meta(pattern=NAME_RE)]
    training_data: _TrainingDataDoc
    indicators: Annotated[list[dict[str, Any]], Meta(min_length=1, max_length=MAX_INDICATORS)]
    fuzzy_sets: Annotated[dict[str, Any], Meta(min_length=1, max_length=MAX_FUZZY_COLUMNS)]
    model: ModelConfig
    training: TrainingConfig
    decisions: Decisions = Decisions()
    description: Any = ""  # free text; KTRDR accepted anything here and printed it
    version: Annotated[str, Meta(max_length=64)] | int | float = "1.0"


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------
def load_strategy(path: str | Path) -> Strategy:
    """Read and validate a strategy file; every problem raises StrategyError naming the field path."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_STRATEGY_BYTES:
            raise StrategyError(str(p), "<file>", f"the file is larger than {MAX_STRATEGY_BYTES // 1024} KiB")
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise StrategyError(str(p), "<file>", f"cannot read the file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise StrategyError(str(p), "<file>", f"not UTF-8 text: {exc.reason}") from exc
    return parse_strategy(text, file=str(p))


def parse_strategy(text: str, file: str = "<string>") -> Strategy:
    """Validate strategy YAML text. `file` is only used in error messages. The same (text, file) is
    parsed once per process: the orchestrator, the CLI and the trainer each ask for it."""
    if not isinstance(text, str):
        raise StrategyError(file, "<file>", f"expected YAML text, got {type(text).__name__}")
    return _parse_cached(text, file)


@functools.lru_cache(maxsize=64)
def _parse_cached(text: str, file: str) -> Strategy:
    doc = safe_yaml(text, file)
    if doc is None:
        raise StrategyError(file, "<root>", "the file is empty")
    if not isinstance(doc, dict):
        raise StrategyError(file, "<root>", f"must be a mapping, got {_kind(doc)}")
    shaped = _shorthands(doc)
    try:
        raw = msgspec.convert(shaped, type=_StrategyDoc, strict=False)
    except msgspec.ValidationError as exc:
        path, problem = _explain(str(exc), shaped)
        raise StrategyError(file, path, problem) from None
    return _Checker(file).strategy(raw)


def safe_yaml(text: str, file: str = "<string>") -> Any:
    """YAML -> plain Python objects, refusing anchors/aliases, bounded in size, depth and node count.

    The event stream is walked first: an anchor is refused at the event that declares it, so an alias
    bomb costs the parse of its first line. Only then is the (now known to be small, tree-shaped)
    document composed with the safe loader."""
    if len(text) > MAX_STRATEGY_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_STRATEGY_BYTES:
        raise StrategyError(file, "<file>", f"the strategy is larger than {MAX_STRATEGY_BYTES // 1024} KiB")
    loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        depth = nodes = 0
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise StrategyError(file, _where(event), "YAML anchors and aliases are not allowed")
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise StrategyError(file, _where(event), f"nested deeper than {MAX_DEPTH} levels")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
            if isinstance(event, yaml.NodeEvent):
                nodes += 1
                if nodes > MAX_NODES:
                    raise StrategyError(file, _where(event), f"more than {MAX_NODES:,} YAML nodes")
            if isinstance(event, yaml.DocumentStartEvent) and nodes:
                raise StrategyError(file, _where(event), "expected one YAML document, found several")
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "<yaml>"
        problem = getattr(exc, "problem", None) or str(exc)
        raise StrategyError(file, where, f"YAML syntax error: {problem}") from None
    except RecursionError:
        raise StrategyError(file, "<yaml>", f"nested deeper than {MAX_DEPTH} levels") from None


def _where(event: Any) -> str:
    mark = getattr(event, "start_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "<yaml>"


def _shorthands(doc: dict[str, Any]) -> dict[str, Any]:
    """KTRDR's spellings that do not map onto one Struct shape: a null value means "not given"
    (as an absent key), `early_stopping: true|false`, a single symbol or timeframe as a string.
    Indicator and fuzzy-set sections are left as written: they are checked item by item."""

    def strip_nulls(node: Any, depth: int = 0) -> Any:
        if isinstance(node, dict) and depth < 4:
            return {k: strip_nulls(v, depth + 1) for k, v in node.items() if v is not None}
        return node

    out = {k: (v if k in ("indicators", "fuzzy_sets") else strip_nulls(v)) for k, v in doc.items() if v is not None}
    training = out.get("model", {}).get("training") if isinstance(out.get("model"), dict) else None
    if isinstance(training, dict) and isinstance(training.get("early_stopping"), bool):
        if training["early_stopping"]:
            training["early_stopping"] = {}
        else:
            del training["early_stopping"]
    td = out.get("training_data")
    for key in ("symbols", "timeframes"):
        section = td.get(key) if isinstance(td, dict) else None
        if isinstance(section, dict) and isinstance(section.get("list"), str):
            section["list"] = [section["list"]]
    return out


# --------------------------------------------------------------------------------------------------
# Turning msgspec's errors into the file's words
# --------------------------------------------------------------------------------------------------
_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_NOUNS = {"int": "an integer", "float": "a finite number", "str": "a string", "array": "a list",
          "object": "a mapping", "bool": "true or false", "null": "nothing"}


def _explain(message: str, doc: Any) -> tuple[str, str]:
    """(field path, problem) for a msgspec ValidationError message, with the offending value."""
    m = _AT.match(message)
    assert m is not None
    msg, path = m["msg"], (m["path"] or "").lstrip(".")
    if mm := re.match(r"Object missing required field `(\w+)`", msg):
        field = mm[1]
        what = "section" if field in _SECTIONS else "field"
        return _join(path, field), f"missing required {what}"
    if mm := re.match(r"(\w+): (.*)", msg, re.S):  # raised by a __post_init__ as "field: problem"
        return _join(path, mm[1]), mm[2]
    if not (mm := re.match(r"Expected `([^`]+)`(.*)", msg)):
        return path or "<root>", msg  # any other shape: msgspec's own words
    kind, rest = mm[1], mm[2].strip()
    value = _lookup(doc, path)
    got = _kind(value)
    if rest.startswith(", got"):
        nouns = [_NOUNS.get(k.strip(), k.strip()) for k in kind.split("|")]
        return path or "<root>", f"must be {' or '.join(nouns)}, got {got}"
    if rest.startswith("matching regex"):
        return path, _pattern_problem(path, value)
    if mm := re.match(r"of length ([<>]=) (\d+)", rest):
        op, n = mm[1], int(mm[2])
        count = f", got {len(value)}" if isinstance(value, list | dict | str) else ""
        if kind == "str":
            return path, f"must be at most {n} characters long{count}"
        if op == ">=":
            return path, f"must not be empty{count}" if n == 1 else f"must have at least {n} items{count}"
        return path, f"must have at most {n} items{count}"
    if mm := re.match(r"([<>]=?) (\S+)", rest):
        op, bound = mm[1], mm[2]
        if op == ">=" and bound == "1" and kind == "int":
            return path, f"must be a positive integer (>= 1), got {got}"
        cap = " (the cap)" if op in ("<=", "<") and kind == "int" else ""
        return path, f"must be {op} {bound}{cap}, got {got}"
    return path or "<root>", msg


def _pattern_problem(path: str, value: Any) -> str:
    if path == "name":
        return (f"{value!r} must be usable as a folder name: 1-64 letters, digits, '_', '.' or '-', "
                f"starting with a letter or digit")
    return f"{value!r} may hold only letters, digits, '_', '.' and '-' (at most 64)"


def _lookup(doc: Any, path: str) -> Any:
    node = doc
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        try:
            node = node[int(part[1:-1])] if part.startswith("[") else node[part]
        except (KeyError, IndexError, TypeError, ValueError):
            return None
    return node


# --------------------------------------------------------------------------------------------------
# Checks that span fields, and the sections decoded item by item
# --------------------------------------------------------------------------------------------------
class _Checker:
    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, path: str, problem: str) -> StrategyError:
        return StrategyError(self.file, path or "<root>", problem)

    def strategy(self, raw: _StrategyDoc) -> Strategy:
        if ".." in raw.name:
            raise self.fail("name", f"{raw.name!r} must not contain '..'")
        indicators = self.indicators(raw.indicators)
        return Strategy(
            name=raw.name,
            description=str(raw.description)[:10_000],
            version=str(raw.version),
            training_data=self.training_data(raw.training_data),
            indicators=indicators,
            fuzzy_sets=self.fuzzy_sets(raw.fuzzy_sets, indicators),
            model=raw.model,
            decisions=raw.decisions,
            training=raw.training,
            source_file=self.file,
        )

    def mode(self, value: str | None, path: str, options: tuple[str, str], count: int) -> str:
        mode = (value or (options[0] if count == 1 else options[1])).strip().lower()
        if mode not in options:
            raise self.fail(path, f"unknown value {mode!r}; expected one of {', '.join(options)}")
        return mode

    def training_data(self, td: _TrainingDataDoc) -> TrainingData:
        sym_path, tf_path = "training_data.symbols", "training_data.timeframes"
        symbols = [self.symbol(s, f"{sym_path}.list[{i}]") for i, s in enumerate(td.symbols.items)]
        if len(set(symbols)) != len(symbols):
            raise self.fail(f"{sym_path}.list", "contains duplicate symbols")
        sym_mode = self.mode(td.symbols.mode, f"{sym_path}.mode", ("single_symbol", "multi_symbol"), len(symbols))
        if sym_mode == "single_symbol" and len(symbols) != 1:
            raise self.fail(f"{sym_path}.list", f"mode single_symbol needs exactly one symbol, got {len(symbols)}")

        timeframes = [self.timeframe(t, f"{tf_path}.list[{i}]") for i, t in enumerate(td.timeframes.items)]
        if len(set(timeframes)) != len(timeframes):
            raise self.fail(f"{tf_path}.list", "contains duplicate timeframes")
        tf_mode = self.mode(td.timeframes.mode, f"{tf_path}.mode", ("single_timeframe", "multi_timeframe"),
                            len(timeframes))
        if tf_mode == "single_timeframe" and len(timeframes) != 1:
            raise self.fail(f"{tf_path}.list",
                            f"mode single_timeframe needs exactly one timeframe, got {len(timeframes)}")
        # The base timeframe carries the labels; by default the finest one, so higher ones align onto it.
        finest = min(timeframes, key=lambda t: t.seconds)
        base_raw = td.timeframes.base_timeframe
        base = finest if base_raw is None else _canonical_timeframe(base_raw) or base_raw.strip()
        names = [str(t) for t in timeframes]
        if base not in timeframes:
            raise self.fail(f"{tf_path}.base_timeframe", f"{str(base)!r} is not in the timeframe list {names}")
        if base != finest:
            raise self.fail(f"{tf_path}.base_timeframe", f"{str(base)!r} must be the finest timeframe "
                                                          f"({str(finest)!r}): higher timeframes are aligned onto it")
        return TrainingData(symbols, sym_mode, timeframes, tf_mode, Timeframe(base), td.history_required)

    def symbol(self, value: str, path: str) -> str:
        try:
            return normalize_symbol(value)
        except ValidationError as exc:
            raise self.fail(path, str(exc)) from None

    def timeframe(self, value: str, path: str) -> Timeframe:
        tf = _canonical_timeframe(value)
        if tf is None:
            raise self.fail(path, f"unknown timeframe {value.strip()!r}; valid: {', '.join(Timeframe)}")
        return tf

    def indicators(self, items: list[dict[str, Any]]) -> list[IndicatorConfig]:
        # Imported here: it needs pandas, and `ktrdr.training.strategy` must import light.
        from ktrdr.training.indicators import REGISTRY

        out: list[IndicatorConfig] = []
        seen: set[str] = set()
        for i, item in enumerate(items):
            path = f"indicators[{i}]"
            raw_name = item.get("name")
            if raw_name is None:
                raise self.fail(f"{path}.name", "missing required field")
            if not isinstance(raw_name, str) or not raw_name.strip():
                raise self.fail(f"{path}.name", f"must be a non-empty string, got {_kind(raw_name)}")
            name = raw_name.strip().lower()
            spec = REGISTRY.get(name)
            if spec is None:
                known = ", ".join(sorted(REGISTRY))
                raise self.fail(f"{path}.name", f"unknown indicator {name[:64]!r}; known: {known}")
            ind_id = name
            if "feature_id" in item:
                fid = item["feature_id"]
                ind_id = str(fid).strip() if isinstance(fid, str | int) and not isinstance(fid, bool) else ""
                if not _ID.match(ind_id):
                    raise self.fail(f"{path}.feature_id", _pattern_problem("feature_id", item["feature_id"]))
            if ind_id in seen:
                raise self.fail(path, f"duplicate indicator {ind_id!r}; give repeated indicators distinct "
                                      "feature_id values")
            seen.add(ind_id)
            out.append(IndicatorConfig(name=name, id=ind_id, params=self.indicator_params(spec, item, path)))
        return out

    def indicator_params(self, spec: Any, item: dict[str, Any], path: str) -> dict[str, Any]:
        raw = {k: v for k, v in item.items() if k not in ("name", "feature_id")}
        # KTRDR also allows `params: {period: 14}` nested; accept both spellings.
        for key in ("params", "parameters"):
            if key in raw:
                nested = raw.pop(key)
                if not isinstance(nested, dict):
                    raise self.fail(f"{path}.{key}", f"must be a mapping, got {_kind(nested)}")
                raw.update(nested)
        for key, value in raw.items():
            if not isinstance(key, str):
                raise self.fail(path, f"parameter names must be strings, got {_kind(key)}")
            if isinstance(value, int | float) and not isinstance(value, bool) and (
                    not math.isfinite(value) or abs(value) > MAX_INDICATOR_INT_PARAM):
                raise self.fail(f"{path}.{key}", f"must be at most {MAX_INDICATOR_INT_PARAM} (the cap), got {value!r}")
        try:
            return spec.validate(raw)
        except ValueError as exc:
            param, _, problem = str(exc).partition(": ")
            raise self.fail(f"{path}.{param}" if param else path, problem or str(exc)) from None

    def fuzzy_sets(self, sets: dict[str, Any], indicators: list[IndicatorConfig]
                   ) -> dict[str, dict[str, MembershipConfig]]:
        from ktrdr.training.indicators import output_columns

        columns = {col for ind in indicators for col in output_columns(ind.name, ind.id)}
        out: dict[str, dict[str, MembershipConfig]] = {}
        for column, members in sets.items():
            path = f"fuzzy_sets.{column}"
            if column not in columns:
                raise self.fail(path, f"fuzzy sets for {str(column)[:64]!r}, which is not a declared indicator "
                                      f"output; declared: {', '.join(sorted(columns))}")
            if not isinstance(members, dict):
                raise self.fail(path, f"must be a mapping, got {_kind(members)}")
            if not members:
                raise self.fail(path, "must declare at least one fuzzy set")
            if len(members) > MAX_FUZZY_SETS:
                raise self.fail(path, f"must have at most {MAX_FUZZY_SETS} fuzzy sets, got {len(members)}")
            out[column] = {}
            for set_name, value in members.items():
                if not isinstance(set_name, str) or not _ID.match(set_name):
                    raise self.fail(f"{path}.{set_name}", _pattern_problem("set", set_name))
                out[column][set_name] = self.membership(value, f"{path}.{set_name}")
        return out

    def membership(self, value: Any, path: str) -> MembershipConfig:
        if isinstance(value, list):  # KTRDR shorthand: a bare list is a triangle
            value = {"type": "triangular", "parameters": value}
        try:
            m = msgspec.convert(value, type=MembershipConfig, strict=False)
        except msgspec.ValidationError as exc:
            if unknown := re.match(r"Object contains unknown field `(.*?)`", str(exc)):
                problem = "unknown key; a fuzzy set has `type` and `parameters`"
                raise self.fail(f"{path}.{unknown[1]}", problem) from None
            sub, problem = _explain(str(exc), value)
            raise self.fail(_join(path, sub) if sub != "<root>" else path, problem) from None
        mtype = m.type.strip().lower()
        if mtype not in MEMBERSHIP_PARAM_COUNT:
            raise self.fail(f"{path}.type",
                            f"unknown value {mtype!r}; expected one of {', '.join(MEMBERSHIP_PARAM_COUNT)}")
        ppath = f"{path}.parameters"
        params = m.parameters
        for i, x in enumerate(params):
            if not math.isfinite(x):
                raise self.fail(f"{ppath}[{i}]", f"must be a finite number, got {x!r}")
        want = MEMBERSHIP_PARAM_COUNT[mtype]
        if len(params) != want:
            raise self.fail(ppath, f"{mtype} membership takes {want} parameters, got {len(params)}")
        if mtype == "gaussian":
            if params[1] <= 0:
                raise self.fail(ppath, f"gaussian sigma (second parameter) must be > 0, got {params[1]}")
        elif any(b < a for a, b in itertools.pairwise(params)) or params[0] == params[-1]:
            raise self.fail(ppath, f"{mtype} parameters must be non-decreasing with first < last, got {params}")
        return MembershipConfig(mtype, [float(x) for x in params])


# --------------------------------------------------------------------------------------------------
# Names shared with the trainer and the model registry
# --------------------------------------------------------------------------------------------------
def validate_name(value: str) -> str:
    """A strategy name safe to use as a folder name (the same rule the strategy file's `name` obeys)."""
    if not isinstance(value, str) or not re.match(NAME_RE, value) or ".." in value:
        raise ValidationError(f"invalid strategy name {str(value)[:70]!r}",
                              hint="1-64 letters, digits, '_', '.' or '-', starting with a letter or digit")
    return value


def _canonical_timeframe(value: str) -> Timeframe | None:
    from ktrdr.data.timeframes import parse_timeframe

    try:
        return parse_timeframe(value)
    except ValidationError:
        return None


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


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, str | int | float | bool):
        text = repr(value)
        return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"
    return type(value).__name__
