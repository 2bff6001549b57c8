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


# --- hostile input -------------------------------------------------------------------------------
BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))


def test_alias_bomb_is_refused_at_its_first_anchor_before_anything_is_composed(monkeypatch) -> None:
    import ktrdr.training.strategy as strategy_module

    def never(*_a, **_k):
        raise AssertionError("the document was composed")

    monkeypatch.setattr(strategy_module.yaml, "load", never)
    with pytest.raises(StrategyError) as info:
        parse_strategy(BOMB, file="bomb.yaml")
    assert info.value.path == "line 1, column 4"
    assert info.value.problem == "YAML anchors and aliases are not allowed"


def test_a_lone_alias_is_refused_too() -> None:
    text = SMALL_STRATEGY.replace("hidden_layers: [24, 12]", "hidden_layers: &h [24, 12]")
    with pytest.raises(StrategyError, match="anchors and aliases"):
        parse_strategy(text)


@pytest.mark.parametrize(("text", "problem"), [
    ("a: " + "[" * 40 + "]" * 40, "nested deeper than 32 levels"),
    ("a: [" + ", ".join(["1"] * 60_000) + "]", "YAML nodes"),
    ("# " + "x" * (256 * 1024), "larger than 256 KiB"),
    ("a: 1\n---\nb: 2\n", "one YAML document"),
])
def test_size_depth_and_shape_of_the_yaml_are_bounded(text: str, problem: str) -> None:
    with pytest.raises(StrategyError, match=problem):
        parse_strategy(text)


@pytest.mark.parametrize(("edit", "path", "cap"), [
    (_set(["model", "architecture", "hidden_layers"], [60000] * 3), "model.architecture.hidden_layers[0]", "8192"),
    (_set(["model", "architecture", "hidden_layers"], [8] * 17), "model.architecture.hidden_layers", "at most 16"),
    (_set(["model", "architecture", "hidden_layers"], [8192] * 3), "model.architecture.hidden_layers", "50,000,000"),
    (_set(["model", "training", "epochs"], 10**9), "model.training.epochs", "100000"),
    (_set(["model", "training", "epochs"], 10**30), "model.training.epochs", "100000"),
    (_set(["model", "training", "batch_size"], 10**6), "model.training.batch_size", "65536"),
    (_set(["model", "features", "lookback_periods"], 1000), "model.features.lookback_periods", "100"),
    (_set(["training_data", "history_required"], 10**7), "training_data.history_required", "100000"),
    (_set(["training", "labels", "label_lookahead"], 10**6), "training.labels.label_lookahead", "10000"),
    (_set(["indicators", 0, "period"], 10**6), "indicators[0].period", "5000"),
    (_set(["model", "training", "early_stopping"], {"patience": 10**9}), "model.training.early_stopping.patience",
     "100000"),
    (_set(["indicators"], [{"name": "rsi", "feature_id": f"r{i}"} for i in range(65)]), "indicators", "at most 64"),
    (_set(["model", "training", "learning_rate"], float("nan")), "model.training.learning_rate", "nan"),
])
def test_every_number_is_capped_and_the_cap_is_in_the_error(edit, path: str, cap: str) -> None:
    with pytest.raises(StrategyError) as info:
        parse_strategy(_mutate(edit), file="caps.yaml")
    assert info.value.path == path
    assert cap in info.value.problem


@pytest.mark.parametrize(("edit", "path"), [
    (_set(["name"], "../../etc"), "name"),
    (_set(["name"], "a..b"), "name"),
    (_set(["name"], "with space"), "name"),
    (_set(["name"], "x" * 65), "name"),
    (_set(["training_data", "symbols", "list"], ["../../../AAPL"]), "training_data.symbols.list[0]"),
    (_set(["training_data", "symbols", "list"], ["..\\AAPL"]), "training_data.symbols.list[0]"),
    (_set(["training_data", "symbols", "list"], ["AAPL/.."]), "training_data.symbols.list[0]"),
    (_set(["indicators", 0, "feature_id"], "../rsi"), "indicators[0].feature_id"),
    (_set(["fuzzy_sets", "rsi", "../up"], [1, 2, 3]), "fuzzy_sets.rsi.../up"),
])
def test_names_and_symbols_that_could_form_a_path_are_refused(edit, path: str) -> None:
    with pytest.raises(StrategyError) as info:
        parse_strategy(_mutate(edit))
    assert info.value.path == path


def test_symbols_are_stored_as_the_data_layer_names_them() -> None:
    s = parse_strategy(_mutate(_set(["training_data", "symbols", "list"], ["eur.usd"])))
    assert s.training_data.symbols == ["EURUSD"]


def test_ktrdr_spellings_still_load() -> None:
    def edit(doc: dict) -> None:
        doc["version"] = 2.1  # unquoted in many KTRDR files
        doc["backtesting"] = {"initial_capital": 100000, "nested": {"anything": [1, 2]}}  # ignored section
        doc["model"]["training"]["optimizer"] = "Adam"
        doc["model"]["training"]["early_stopping"] = True
        doc["model"]["extra_key"] = "ignored"
        doc["training_data"]["symbols"] = {"list": "AAPL"}  # a single symbol as a string, mode inferred
        doc["training_data"]["timeframes"]["list"] = ["60m"]  # one timeframe table: ktrdr.data.timeframes
        doc["training_data"]["timeframes"]["base_timeframe"] = "1H"
        doc["fuzzy_sets"]["rsi"]["oversold"] = [0, 25, 45]  # a bare list is a triangle
        doc["decisions"] = None

    s = parse_strategy(_mutate(edit))
    assert s.version == "2.1" and s.model.training.optimizer == "adam"
    assert s.model.training.early_stopping is not None and s.model.training.early_stopping.patience == 10
    assert s.training_data.symbols == ["AAPL"] and s.training_data.symbols_mode == "single_symbol"
    assert s.training_data.timeframes == ["1h"] and s.training_data.base_timeframe == "1h"
    assert s.fuzzy_sets["rsi"]["oversold"].type == "triangular"
    assert s.decisions.confidence_threshold == 0.6


def test_early_stopping_false_or_disabled_means_none() -> None:
    assert parse_strategy(_mutate(_set(["model", "training", "early_stopping"], False))).model.training \
        .early_stopping is None
    off = _set(["model", "training", "early_stopping"], {"enabled": False, "patience": 3})
    assert parse_strategy(_mutate(off)).model.training.early_stopping is None


def test_unknown_key_inside_a_fuzzy_set_is_an_error() -> None:
    with pytest.raises(StrategyError) as info:
        parse_strategy(_mutate(_set(["fuzzy_sets", "rsi", "oversold", "typo"], 1)))
    assert info.value.path == "fuzzy_sets.rsi.oversold.typo" and "unknown key" in info.value.problem


def test_the_same_text_is_parsed_once_per_process() -> None:
    first = parse_strategy(SMALL_STRATEGY, file="cache.yaml")
    assert parse_strategy(SMALL_STRATEGY, file="cache.yaml") is first
    assert parse_strategy(SMALL_STRATEGY, file="other.yaml").source_file == "other.yaml"


def test_strategy_structs_are_frozen() -> None:
    s = parse_strategy(SMALL_STRATEGY)
    with pytest.raises(AttributeError):
        s.name = "other"  # type: ignore[misc]
