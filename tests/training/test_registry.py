"""The local model registry writes only inside models_dir, from validated names, whatever it is given."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ktrdr.errors import DataError, ValidationError
from ktrdr.training.registry import FILES, list_models, load_model, resolve_model, save_model


def artifacts() -> dict[str, bytes]:
    files = {name: b"{}" for name in FILES}
    files["model.pt"] = b"weights"
    files["metadata.json"] = json.dumps({"op_id": "op-1"}).encode()
    return files


def tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


@pytest.mark.parametrize(("name", "symbols", "timeframes"), [
    ("strat", ["../../../AAPL"], ["1h"]),
    ("strat", ["AAPL/../../x"], ["1h"]),
    ("strat", ["aapl"], ["1h"]),  # not normalised: the caller must pass what the data layer stores
    ("strat", ["AAPL"], ["../1h"]),
    ("strat", ["AAPL"], ["2h"]),
    ("../../escape", ["AAPL"], ["1h"]),
    ("..", ["AAPL"], ["1h"]),
    ("/abs", ["AAPL"], ["1h"]),
    ("a/b", ["AAPL"], ["1h"]),
    ("", ["AAPL"], ["1h"]),
    ("strat", [], ["1h"]),
])
def test_traversal_names_are_refused_and_nothing_is_written_anywhere(tmp_path: Path, name, symbols,
                                                                     timeframes) -> None:
    models = tmp_path / "home" / "models"
    before = tree(tmp_path)
    with pytest.raises(ValidationError):
        save_model(models, name, symbols, timeframes, artifacts())
    assert tree(tmp_path) == before


def test_a_symlinked_strategy_folder_pointing_outside_is_refused(tmp_path: Path) -> None:
    models, outside = tmp_path / "models", tmp_path / "outside"
    models.mkdir()
    outside.mkdir()
    (models / "strat").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValidationError, match="outside"):
        save_model(models, "strat", ["AAPL"], ["1h"], artifacts())
    assert list(outside.iterdir()) == []


def test_incomplete_artifacts_are_refused_before_any_write(tmp_path: Path) -> None:
    files = artifacts()
    del files["features.json"]
    with pytest.raises(ValidationError, match=r"features\.json"):
        save_model(tmp_path / "models", "strat", ["AAPL"], ["1h"], files)
    assert not (tmp_path / "models").exists()


def test_saved_version_is_listed_with_its_metadata(tmp_path: Path) -> None:
    models = tmp_path / "models"
    paths = save_model(models, "strat", ["AAPL", "MSFT"], ["1h", "4h"], artifacts())
    assert Path(paths["model_dir"]).name == "AAPL-MSFT_1h-4h_v1"
    assert Path(paths["model_path"]).read_bytes() == b"weights"
    rows = list_models(models)
    assert [(r["name"], r["op_id"], r["latest"]) for r in rows] == [("strat/AAPL-MSFT_1h-4h_v1", "op-1", True)]


def test_a_rewritten_model_file_is_refused_on_load_with_both_digests(tmp_path: Path) -> None:
    import hashlib

    models = tmp_path / "models"
    paths = save_model(models, "strat", ["AAPL"], ["1h"], artifacts())
    good = hashlib.sha256(b"weights").hexdigest()
    assert json.loads(Path(paths["files"]["metadata.json"]).read_text())["model_sha256"] == good
    assert load_model(models, "strat/AAPL_1h") == (Path(paths["model_dir"]), b"weights")
    Path(paths["model_path"]).write_bytes(b"zeroed")
    with pytest.raises(DataError) as refused:
        load_model(models, "strat/AAPL_1h")
    message = refused.value.message
    assert "does not match the digest of its weights" in message and "\n" not in message
    assert good in message and hashlib.sha256(b"zeroed").hexdigest() in message


def test_a_latest_pointer_naming_another_folder_is_refused(tmp_path: Path) -> None:
    models = tmp_path / "models"
    save_model(models, "strat", ["AAPL"], ["1h"], artifacts())
    (models / "strat" / "AAPL_1h_latest").write_text("../../../etc_v1\n")
    with pytest.raises(ValidationError, match="does not name a version folder"):
        resolve_model(models, "strat/AAPL_1h")
