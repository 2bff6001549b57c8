"""Strategy YAML validation: the shipped strategies load; every broken one names its field path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ktrdr.errors import StrategyError
from ktrdr.training.strategy import list_strategies, load_strategy, parse_strategy
from tests.training.conftest import SMALL_STRATEGY

STRATEGIES = Path(__file__).resolve().parents[2] / "strategies"


def _mutate(edit) -> str:
    doc = yaml.safe_load(SMALL_STRATEGY)
    edit(doc)
    return yaml.safe_dump(doc)


def test_shipped_strategies_load_valid() -> None:
    single = load_strategy(STRATEGIES / "mlp_rsi_aapl.yaml")
    assert single.training_data.symbols == ["AAPL"] and single.training_data.timeframes == ["1h"]
    multi = load_strategy(STRATEGIES / "mlp_multi.yaml")
    assert multi.training_data.symbols == ["AAPL", "MSFT"]
    assert multi.training_data.timeframes == ["1h", "4h"] and multi.training_data.base_timeframe == "1h"
    rows = list_strategies(STRATEGIES)
    assert {r["name"] for r in rows} >= {"mlp_rsi_aapl", "mlp_multi"}
    assert all(r["valid"] for r in rows)


def test_small_strategy_parses_typed_fields() -> None:
    s = parse_strategy(SMALL_STRATEGY)
    assert s.model.training.optimizer == "adam"
    assert s.model.architecture.hidden_layers == [24, 12]
    assert s.fuzzy_sets["rsi"]["oversold"].parameters == [0.0, 25.0, 45.0]
    assert s.indicators[1].params == {
        "fast_period": 12,
        "slow_period": 26,
        "signal_period": 9,
        "source": "close",
    }
    assert s.training.data_split.train == pytest.approx(0.7)


def _set(path: list, value):
    def edit(doc: dict) -> None:
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "path", "problem"),
    [
        (_set(["model", "training", "optimizer"], "adagrad"), "model.training.optimizer", "unknown value"),
        (_set(["indicators", 0, "name"], "supertrend"), "indicators[0].name", "unknown indicator"),
        (_set(["indicators", 1, "fast_period"], -3), "indicators[1].fast_period", "positive integer"),
        (_set(["indicators", 0, "perod"], 14), "indicators[0].perod", "unknown parameter"),
        (
            _set(["fuzzy_sets", "rsi", "oversold", "parameters"], [0, 20]),
            "fuzzy_sets.rsi.oversold.parameters",
            "takes 3 parameters",
        ),
        (
            _set(["fuzzy_sets", "rsi", "oversold", "parameters"], [0, 40, 35]),
            "fuzzy_sets.rsi.oversold.parameters",
            "non-decreasing",
        ),
        (
            _set(["fuzzy_sets", "rsi", "oversold"], {"type": "gaussian", "parameters": [0, 0]}),
            "fuzzy_sets.rsi.oversold.parameters",
            "sigma",
        ),
        (_set(["fuzzy_sets", "stoch"], {"low": [0, 10, 20]}), "fuzzy_sets.stoch", "not a declared indicator"),
        (
            _set(["training", "data_split"], {"train": 0.7, "validation": 0.2, "test": 0.2}),
            "training.data_split",
            "sum to 1",
        ),
        (
            _set(["training_data", "timeframes", "list"], ["2h"]),
            "training_data.timeframes.list[0]",
            "unknown timeframe",
        ),
        (
            _set(["model", "architecture", "activation"], "swish"),
            "model.architecture.activation",
            "unknown value",
        ),
        (
            _set(["model", "architecture", "hidden_layers"], [16, 0]),
            "model.architecture.hidden_layers[1]",
            "positive",
        ),
        (_set(["model", "architecture", "dropout"], 1.5), "model.architecture.dropout", "must be <"),
        (_set(["model", "type"], "lstm"), "model.type", "unknown value"),
        (_set(["training", "labels", "label_lookahead"], 0), "training.labels.label_lookahead", ">= 1"),
        (_set(["model", "training", "batch_size"], "big"), "model.training.batch_size", "integer"),
    ],
)
def test_invalid_strategy_rejected_with_field_path(edit, path: str, problem: str) -> None:
    with pytest.raises(StrategyError) as info:
        parse_strategy(_mutate(edit), file="bad.yaml")
    err = info.value
    assert err.file == "bad.yaml"
    assert err.path == path
    assert problem in err.problem
    assert str(err).startswith(f"bad.yaml: {path}: ")


def test_missing_section_rejected_with_its_name() -> None:
    def drop(doc: dict) -> None:
        del doc["model"]["training"]

    with pytest.raises(StrategyError) as info:
        parse_strategy(_mutate(drop))
    assert info.value.path == "model.training"


def test_yaml_syntax_error_reports_line_number() -> None:
    text = "name: x\ntraining_data:\n  symbols: [AAPL\n  timeframes: {}\n"
    with pytest.raises(StrategyError) as info:
        parse_strategy(text, file="broken.yaml")
    assert info.value.path.startswith("line ")
    assert "YAML syntax error" in info.value.problem


def test_missing_file_raises_strategy_error(tmp_path: Path) -> None:
    with pytest.raises(StrategyError) as info:
        load_strategy(tmp_path / "nope.yaml")
    assert "cannot read" in info.value.problem


def test_base_timeframe_not_in_list_rejected() -> None:
    def edit(doc: dict) -> None:
        doc["training_data"]["timeframes"] = {
            "mode": "multi_timeframe",
            "list": ["1h", "4h"],
            "base_timeframe": "1d",
        }

    with pytest.raises(StrategyError) as info:
        parse_strategy(_mutate(edit))
    assert info.value.path == "training_data.timeframes.base_timeframe"


def test_duplicate_indicator_needs_feature_id() -> None:
    def edit(doc: dict) -> None:
        doc["indicators"].append({"name": "rsi", "period": 7})

    with pytest.raises(StrategyError) as info:
        parse_strategy(_mutate(edit))
    assert info.value.path == "indicators[2]"

    def fixed(doc: dict) -> None:
        doc["indicators"].append({"name": "rsi", "period": 7, "feature_id": "rsi_fast"})

    assert parse_strategy(_mutate(fixed)).indicators[2].id == "rsi_fast"


def test_list_strategies_reports_invalid_files(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(SMALL_STRATEGY)
    (tmp_path / "bad.yaml").write_text("name: bad\n")
    rows = {r["name"]: r for r in list_strategies(tmp_path)}
    assert rows["test_small"]["valid"] is True
    assert rows["bad"]["valid"] is False and "training_data" in rows["bad"]["error"]
