"""A sweep's grid: the variants of one strategy, checked before anything runs. Pure, no transport.

`--param PATH=VALUES` names a strategy field by its dotted path (list items by their index:
`indicators.0.period`) and the values it takes; the grid is the product of every param's values, in
the order given (the first param varies slowest). Each PATH is checked against the strategy's schema
(the typed sections: a field the schema has, set in the file or not; the free sections, indicators and
fuzzy sets: a key the file has) before any value is put in, then each variant's text is parsed by
the strategy's own parser, so a value out of its field's bounds is refused with the variant named.
A variant's strategy text is the strategy's document with its values put in (YAML, comments lost);
it is what its training child's command carries.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import yaml

from events.bounds import MAX_SWEEP_VARIANTS
from events.messages import SweepParam
from ktrdr.errors import StrategyError, ValidationError

# The strategy's data is loaded once for all variants: a grid over it would need other data per variant.
SHARED_SECTIONS = ("training_data",)


class SweepError(ValidationError):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


@dataclass(frozen=True)
class Variant:
    index: int
    params: dict[str, Any]
    strategy_yaml: str


def grid_size(params: Sequence[SweepParam]) -> int:
    return math.prod(len(p.values) for p in params)


def grid(params: Sequence[SweepParam]) -> list[dict[str, Any]]:
    """Each variant's values, {path: value}, the first param varying slowest (no parsing: cheap)."""
    paths = [p.path for p in params]
    return [dict(zip(paths, combo, strict=True)) for combo in itertools.product(*(p.values for p in params))]


def check_grid(params: Sequence[SweepParam]) -> None:
    """The grid's own bounds: each path once, at most MAX_SWEEP_VARIANTS variants."""
    seen: set[str] = set()
    for p in params:
        if p.path in seen:
            raise SweepError(f"params {p.path}", "given twice; put every value in one list")
        seen.add(p.path)
        if p.path.split(".", 1)[0] in SHARED_SECTIONS:
            raise SweepError(f"params {p.path}", "the variants of a sweep share their data: the grid cannot vary "
                                                 "training_data (pass --symbols for other symbols)")
    n = grid_size(params)
    if n > MAX_SWEEP_VARIANTS:
        sizes = " x ".join(str(len(p.values)) for p in params)
        raise SweepError("params", f"the grid has {sizes} = {n} variants: at most {MAX_SWEEP_VARIANTS}")


def _schema_fields(info: Any) -> dict[str, Any] | None:
    """{encoded field name: its type info} of a Struct type (an Optional Struct too), else None."""
    if isinstance(info, msgspec.inspect.UnionType):
        structs = [t for t in info.types if isinstance(t, msgspec.inspect.StructType)]
        info = structs[0] if len(structs) == 1 else None
    if isinstance(info, msgspec.inspect.StructType):
        return {f.encode_name: f.type for f in info.fields}
    return None


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


def put(doc: dict[str, Any], path: str, value: Any, schema: Any) -> None:
    """Set `path` in the strategy document `doc` (in place) to `value`, after checking the path: each
    key a field of the schema's section there or a key the file has; each index within its list."""
    parts = path.split(".")
    node: Any = doc
    info: Any = schema
    where = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        here = f"{where}.{part}" if where else part
        fields = _schema_fields(info)
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise SweepError(f"params {path}", f"{where} is a list of {len(node)}: no item {part}")
            key: Any = int(part)
            info = info.item_type if isinstance(info, msgspec.inspect.ListType) else None
        elif isinstance(node, dict):
            if part not in node and (fields is None or part not in fields):
                known = sorted(fields) if fields is not None else sorted(str(k) for k in node)
                section = where or "the strategy"
                raise SweepError(f"params {path}", f"the strategy has no field {part!r} in {section} "
                                                   f"(it has: {', '.join(known[:20])})")
            key = part
            info = fields.get(part) if fields is not None else None
            if not last and node.get(part) is None:
                if _schema_fields(info) is None:
                    raise SweepError(f"params {path}", f"{here} is not set in the strategy and is no section")
                node[part] = {}
        else:
            raise SweepError(f"params {path}", f"{where} is {_kind(node)}, not a section: it has no field {part!r}")
        if last:
            node[key] = value
        else:
            node = node[key]
        where = here


def expand(strategy_yaml: str, params: Sequence[SweepParam], file: str = "<strategy>") -> list[Variant]:
    """Every variant of the grid, each path checked and each variant's text parsed (a SweepError or
    StrategyError naming the variant and the field otherwise)."""
    from ktrdr.training.strategy import _StrategyDoc, parse_strategy, safe_yaml

    check_grid(params)
    parse_strategy(strategy_yaml, file=file)  # the strategy itself first: its own errors, as `train` says them
    base = safe_yaml(strategy_yaml, file)
    schema = msgspec.inspect.type_info(_StrategyDoc)
    for p in params:  # every path checked before any value: a bad path is one error, not one per variant
        put(yaml_copy(base), p.path, p.values[0], schema)
    out: list[Variant] = []
    for index, values in enumerate(grid(params)):
        doc = yaml_copy(base)
        for path, value in values.items():
            put(doc, path, value, schema)
        text = yaml.dump(doc, Dumper=_DUMPER, sort_keys=False, allow_unicode=True)
        label = ", ".join(f"{k}={_short(v)}" for k, v in values.items())
        try:
            parse_strategy(text, file=f"{file} variant {index} ({label})")
        except StrategyError as exc:
            raise SweepError(f"params variant {index} ({label})", f"{exc.path}: {exc.problem}") from None
        out.append(Variant(index=index, params=values, strategy_yaml=text))
    return out


# libyaml's safe dumper where PyYAML has it (as strategy.py's loader): the pure-Python one was most of
# a 32-variant plan (measured: 250-730 ms on the loaded 2-core host, before the parent existed)
_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def yaml_copy(doc: Any) -> Any:
    """A deep copy of a plain YAML document (mappings, lists, scalars)."""
    if isinstance(doc, dict):
        return {k: yaml_copy(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [yaml_copy(v) for v in doc]
    return doc


def _short(value: Any) -> str:
    text = msgspec.json.encode(value).decode() if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def parse_values(text: str, path: str) -> list[Any]:
    """The VALUES of `--param PATH=VALUES`: a JSON or YAML flow list (`[0.001, 0.0003]`, `[[32],[64,32]]`)."""
    from ktrdr.training.strategy import safe_yaml

    try:
        values = safe_yaml(text, f"--param {path}")
    except StrategyError as exc:
        raise SweepError(f"--param {path}", f"VALUES is not a JSON/YAML list: {exc.problem}") from None
    if not isinstance(values, list):
        raise SweepError(f"--param {path}", f"VALUES must be a list like '[0.001, 0.0003]', got {_kind(values)}")
    if not values:
        raise SweepError(f"--param {path}", "VALUES is an empty list")
    return values
