"""ModelStore against a real nats-server: version numbers claimed atomically, listed, shown, and
pulled into an existing folder only."""

from __future__ import annotations

import asyncio
import json

import pytest

from ktrdr.errors import ValidationError
from ktrdr.training.model_store import ModelStore
from ktrdr.training.registry import FILES
from ktrdr.transport import objects
from ktrdr.transport.objects import MODELS


def artifacts(acc: float) -> dict[str, bytes]:
    out = {f: b"{}" for f in FILES}
    out["model.pt"] = b"weights" * 100
    out["metrics.json"] = json.dumps({"test_metrics": {"test_accuracy": acc}}).encode()
    out["metadata.json"] = json.dumps({"op_id": "training-x", "device": "cpu", "simulated": True}).encode()
    return out


async def test_model_versions_are_claimed_atomically_listed_shown_and_pulled_into_a_folder_only(client, tmp_path):
    models = ModelStore(client.js)
    saved = await asyncio.gather(*(models.save("mlp_rsi", ["AAPL"], ["1h"], artifacts(0.1 * i),
                                               result={"training_metrics": {"history": [{"epoch": 1}]}})
                                   for i in range(1, 4)))
    assert sorted(s["version"] for s in saved) == [1, 2, 3]
    rows = await models.list()
    assert [r["name"] for r in rows] == ["mlp_rsi/AAPL_1h_v1", "mlp_rsi/AAPL_1h_v2", "mlp_rsi/AAPL_1h_v3"]
    assert [r["latest"] for r in rows] == [False, False, True] and rows[0]["simulated"] is True
    assert await models.resolve("mlp_rsi") == await models.resolve("mlp_rsi/AAPL_1h") == "mlp_rsi/AAPL_1h_v3"
    shown = await models.show("mlp_rsi/AAPL_1h_v2")
    assert shown["result"]["training_metrics"]["history"] == [{"epoch": 1}] and shown["model_bytes"] == 700
    dest = tmp_path / "pulled"
    dest.mkdir()
    name, paths = await models.pull("mlp_rsi/AAPL_1h", dest)
    assert name == "mlp_rsi/AAPL_1h_v3"
    assert sorted(p.name for p in dest.iterdir()) == sorted([*FILES, "result.json"])
    assert all(p.parent == dest.resolve() for p in paths) and (dest / "model.pt").read_bytes() == b"weights" * 100
    for bad in ("../etc", "mlp_rsi/../../x", "mlp_rsi/AAPL_1h/model.pt", "mlp_rsi/nope_1h"):
        with pytest.raises(ValidationError):
            await models.pull(bad, dest)
    with pytest.raises(ValidationError):
        await models.pull("mlp_rsi", tmp_path / "missing")
    assert (await objects.stat(client.js, MODELS, "mlp_rsi/AAPL_1h_latest")) is not None


async def test_a_named_version_or_key_resolves_by_its_own_record_and_an_unknown_or_unfinished_one_is_refused(client):
    models = ModelStore(client.js)
    await models.save("mlp_rsi", ["AAPL"], ["1h"], artifacts(0.1))
    await models.save("mlp_rsi", ["AAPL"], ["1h"], artifacts(0.2))
    assert await models.resolve("mlp_rsi/AAPL_1h_v1") == "mlp_rsi/AAPL_1h_v1"
    assert await models.resolve("mlp_rsi/AAPL_1h") == "mlp_rsi/AAPL_1h_v2"
    # a version whose metadata.json (written last: it marks the version complete) is not there
    await objects.put(client.js, MODELS, "mlp_rsi/AAPL_1h_v3/model.pt", b"weights")
    for ref in ("mlp_rsi/AAPL_1h_v3", "mlp_rsi/AAPL_1h_v9", "mlp_rsi/MSFT_1h"):
        with pytest.raises(ValidationError, match="no model"):
            await models.resolve(ref)
