"""Issue 18, F5: object buckets, tried with real role keys on a server with auth on (a nats-server with
every role's NKEY; the orchestrator provisions the buckets; a trainer and the CLI run in this process
or as a user's `ktrdr`, each connected with its own role's key).

- A purge of a whole bucket is refused to a trainer key on MODELS and a CLI key on BARS (the purge
  filter is in the payload: no writer is granted one), and everything that writes objects still
  works without one: bars merge (CAS put) with the CLI's and the job-manager's keys, `ktrdr data
  import`, a model save, checkpoints put/replace/delete, the orchestrator deleting a finished
  training's checkpoint, `ktrdr models pull`; replaced chunks do not pile up.
- A model.pt rewritten by another trainer key is refused by `ktrdr models pull` and by a load, with
  one line naming the model and both digests: against its metadata.json when no operation in OPS made
  it, against the training's completed result when it is there (metadata.json rewritten too).
- A checkpoint rewritten by another trainer key (bytes changed: zeroed weights, its record kept) is
  refused when the operation resumes on another trainer, which says so and trains from scratch.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any

import pytest

from events import roles, subjects
from events.messages import OperationProgress, StartTraining, TrainingContext
from ktrdr.client import Client
from ktrdr.data.bars_store import BarStore
from ktrdr.errors import DataError
from ktrdr.training.checkpoint_store import CheckpointStore, checkpoint_name
from ktrdr.training.model_store import ModelStore
from ktrdr.training.registry import FILES
from ktrdr.transport import objects
from ktrdr.transport.objects import CHECKPOINTS, MODELS
from tests.conftest import make_settings
from tests.helpers import run_ktrdr, wait_for_event, wait_terminal
from tests.security.conftest import Errors, Server, Stack
from tests.training.conftest import make_bars

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
STRATEGY = Path(__file__).parents[2] / "strategies" / "mlp_rsi_aapl.yaml"


@pytest.fixture
async def stack(secure_server: tuple[Server, Path]) -> AsyncIterator[Stack]:
    server, home = secure_server
    s = Stack(server, make_settings(home, server.url, orphan_timeout_s=600.0))
    await s.start(roles.ORCHESTRATOR)  # provisions the streams and buckets
    yield s
    await s.close()


@pytest.fixture
async def cli(stack: Stack) -> AsyncIterator[Client]:
    async with Client(stack.settings) as c:
        yield c


@pytest.fixture(scope="module")
def shared_child() -> Iterator[object]:
    from ktrdr.training.process import TrainingProcess

    process = TrainingProcess()
    yield process
    process.close()


@pytest.fixture
def one_child(monkeypatch: pytest.MonkeyPatch, shared_child: object) -> None:
    """The trainers of a test share one training child (each would import torch in its own)."""
    from actors.trainer import Trainer

    monkeypatch.setattr(Trainer, "training_process", shared_child)


def model_artifacts(weights: bytes, op_id: str = "training-x") -> dict[str, bytes]:
    out = {f: b"{}" for f in FILES}
    out["model.pt"] = weights
    out["metadata.json"] = json.dumps({"op_id": op_id, "device": "cpu", "simulated": True}).encode()
    return out


def pull(stack: Stack, name: str, dest: Path) -> tuple[int, str, str]:
    done = run_ktrdr(stack.env(), "models", "pull", name, "-o", str(dest))
    return done.returncode, done.stdout, done.stderr


async def refused(errors: Errors, call: Awaitable[Any], subject: str) -> None:
    """The server's permission error for `subject` arrives; the call is then abandoned (it would time
    out); it must not have succeeded."""
    task = asyncio.ensure_future(call)
    try:
        await errors.wait_for(f'permissions violation for publish to "{subject.lower()}"')
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert not (task.done() and not task.cancelled() and task.exception() is None), f"{subject}: it succeeded"


async def overwrite(js: object, name: str, data: bytes) -> None:
    """What another trainer key can do to any object of MODELS: put new bytes under its name."""
    await objects.put(js, MODELS, name, data)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- purge
async def test_no_writer_can_purge_a_bucket_and_every_writer_still_works(stack, cli, tmp_path):
    trainer_nc, trainer_errors = await stack.key(roles.TRAINER)
    jm_nc, _ = await stack.key(roles.JOB_MANAGER)
    orch_nc, _ = await stack.key(roles.ORCHESTRATOR)
    trainer_js, jm_js = trainer_nc.jetstream(), jm_nc.jetstream()
    # Something in each bucket first, written by the roles that write it.
    await BarStore(cli.js).merge("AAPL", "1h", make_bars(500, seed=1), "import")  # the CLI's key
    added, _ = await BarStore(jm_js).merge("AAPL", "1h", make_bars(800, seed=1), "sim")  # the job-manager's
    assert added == 300
    saved = await ModelStore(trainer_js).save("mlp_rsi", ["AAPL"], ["1h"], model_artifacts(b"weights" * 100))
    # The purges of the campaign: one call would have emptied the bucket.
    cli_nc, cli_errors = await stack.key(roles.CLI)
    jm_errors = await stack.key(roles.JOB_MANAGER)
    for (nc, errors), stream in (((trainer_nc, trainer_errors), "OBJ_MODELS"), ((cli_nc, cli_errors), "OBJ_BARS"),
                                 ((trainer_nc, trainer_errors), "OBJ_CHECKPOINTS"), (jm_errors, "OBJ_BARS")):
        await refused(errors, nc.jetstream().purge_stream(stream), f"$JS.API.STREAM.PURGE.{stream}")
    assert (await objects.stat(trainer_js, MODELS, saved["model_object"])) is not None
    assert len((await BarStore(cli.js).load("AAPL", "1h")).df) == 800
    assert await ModelStore(cli.js).load(saved["name"]) == (saved["name"], b"weights" * 100)
    # Every writer still replaces and deletes without a purge.
    csv = tmp_path / "msft.csv"
    (make_bars(50, seed=3).rename_axis("date")).to_csv(csv)
    imported = await asyncio.to_thread(run_ktrdr, stack.env(), "data", "import", str(csv), "-s", "MSFT", "-t", "1h")
    assert imported.returncode == 0 and "imported 50 rows" in imported.stdout, imported.stderr
    again = await asyncio.to_thread(run_ktrdr, stack.env(), "data", "import", str(csv), "-s", "MSFT", "-t", "1h")
    assert again.returncode == 0 and "(0 new bars)" in again.stdout, again.stderr
    ckpts, op = CheckpointStore(trainer_js), subjects.new_op_id("training")
    for epoch in (1, 2, 3):
        await ckpts.put(op, f"epoch {epoch}".encode() * 1000, attempt=1, epoch=epoch)
    assert await ckpts.get(op) == b"epoch 3" * 1000
    done = subjects.new_op_id("training")
    await ckpts.put(done, b"finished run", attempt=1, epoch=1)
    assert await CheckpointStore(orch_nc.jetstream()).delete(done)  # the orchestrator's clean-up
    assert await ckpts.delete(op) and await ckpts.get(op) is None and await ckpts.get(done) is None
    code, out, err = await asyncio.to_thread(pull, stack, saved["name"], tmp_path / "pulled")
    assert code == 0 and "pulled mlp_rsi/AAPL_1h_v1" in out, err
    assert f"weights checked: sha256 {saved['model_sha256']} (from its metadata.json" in out, out
    assert (tmp_path / "pulled" / "model.pt").read_bytes() == b"weights" * 100
    # What stays of the replaced and deleted objects is one empty marker each, not their chunks.
    for stream, live in (("OBJ_CHECKPOINTS", 0), ("OBJ_BARS", 4)):
        info = await orch_nc.jetstream().stream_info(stream)
        assert info.state.bytes < 4000 + (live and 200_000), (stream, info.state)


# ---------------------------------------------------------------------------------------------- models
async def test_a_rewritten_model_is_refused_by_pull_and_load_against_its_metadata(stack, cli, tmp_path):
    trainer_nc, _ = await stack.key(roles.TRAINER)
    other_nc, _ = await stack.key(roles.TRAINER)  # all trainers share one key: this is another trainer
    saved = await ModelStore(trainer_nc.jetstream()).save("mlp_rsi", ["AAPL"], ["1h"],
                                                          model_artifacts(b"genuine weights" * 50))
    name, good = saved["name"], hashlib.sha256(b"genuine weights" * 50).hexdigest()
    code, out, err = await asyncio.to_thread(pull, stack, name, tmp_path / "genuine")
    assert code == 0 and (tmp_path / "genuine" / "model.pt").read_bytes() == b"genuine weights" * 50, err
    await overwrite(other_nc.jetstream(), saved["model_object"], b"junk" * 10)
    bad = hashlib.sha256(b"junk" * 10).hexdigest()
    code, out, err = await asyncio.to_thread(pull, stack, name, tmp_path / "pulled")
    assert code != 0 and not (tmp_path / "pulled" / "model.pt").exists(), out
    line = err.strip().splitlines()[-1]
    assert f"{MODELS}/{name}/model.pt does not match the digest of its weights" in line, err
    assert good in line and bad in line and "metadata.json" in line, line
    with pytest.raises(DataError) as refused:
        await ModelStore(cli.js).load(name)
    assert good in refused.value.message and bad in refused.value.message
    assert saved["model_sha256"] == good and json.loads((tmp_path / "genuine" / "metadata.json").read_text())[
        "model_sha256"] == good
    # The other files are checked too: a rewritten features.json (the scaler) is refused as well.
    again = await ModelStore(trainer_nc.jetstream()).save("mlp_rsi", ["AAPL"], ["1h"], model_artifacts(b"w" * 10))
    await overwrite(other_nc.jetstream(), f"{again['name']}/features.json", b'{"scaler": "shifted"}')
    code, out, err = await asyncio.to_thread(pull, stack, again["name"], tmp_path / "features")
    assert code != 0 and f"{again['name']}/features.json does not match its recorded digest" in err, (out, err)
    assert again["files_sha256"]["features.json"] in err and not list((tmp_path / "features").iterdir())


# ---------------------------------------------------------------------------------------------- checkpoints
async def test_a_rewritten_checkpoint_is_refused_on_resume_and_the_model_against_the_completed_result(
        stack, cli, tmp_path, one_child):
    import torch

    from ktrdr.training import checkpoint

    await BarStore(cli.js).merge("AAPL", "1h", make_bars(3000, seed=1), "sim")
    first, = await stack.start(roles.TRAINER)
    cmd = StartTraining(op_id=subjects.new_op_id("training"), strategy_path=str(STRATEGY),
                        strategy_yaml=STRATEGY.read_text(), epochs=8, data_mode="none")
    await cli.submit(cmd)

    def reported(ev: object, v: object) -> bool:  # epoch 3 done, its checkpoint stored and reported
        ctx = getattr(v, "context", None)
        return isinstance(ctx, TrainingContext) and ctx.epoch >= 3 and ctx.batch == 0 \
            and getattr(ctx, "checkpoint_epoch", 3) >= 3

    await wait_for_event(cli, cmd.op_id, reported, timeout=90)
    await first.kill()  # the operation is redelivered to the next trainer, which would resume
    # Another trainer key rewrites the checkpoint: the same record and fingerprint, zeroed weights.
    other_nc, _ = await stack.key(roles.TRAINER)
    other = other_nc.jetstream()
    st = await objects.stat(other, CHECKPOINTS, checkpoint_name(cmd.op_id))
    assert st is not None
    payload = checkpoint.decode(await CheckpointStore(other).get(cmd.op_id))
    payload["model"] = {k: torch.zeros_like(v) for k, v in payload["model"].items()}
    payload["epoch"] = 7  # "Resumed from checkpoint at epoch 7"
    buf = io.BytesIO()
    torch.save(payload, buf)
    await objects.put(other, CHECKPOINTS, st.name, buf.getvalue(),  # its record (op id, attempt, epoch) kept
                      headers={k: v for k in st.headers if (v := st.header(k)) is not None})
    await stack.start(roles.TRAINER)
    view = await wait_terminal(cli, cmd.op_id, timeout=120)
    assert view.status == "completed" and view.attempts == 2, view.error
    events = await cli.events(cmd.op_id)
    progress = [e for e in events if isinstance(e, OperationProgress)]
    resumed = [e.progress.message for e in progress if "Resumed from checkpoint" in e.progress.message]
    assert resumed == [], resumed  # the forged weights were never trained on
    assert any("checkpoint refused" in e and "starting from scratch" in e for e in view.errors), view.errors
    second = [e.progress.context for e in progress
              if e.attempt == 2 and isinstance(e.progress.context, TrainingContext)]
    assert min(c.epoch for c in second if c.epoch) == 1  # from scratch: epoch 1 again
    assert view.result is not None and view.result["training_metrics"]["epochs_completed"] == 8
    # The model it made, rewritten with its metadata.json (the digest in it too): the completed
    # result in OPS still names the real weights.
    arts = view.result["artifacts"]
    name, good = arts["name"], arts["model_sha256"]
    meta = json.loads(bytes((await objects.get(other, MODELS, f"{name}/metadata.json", max_bytes=1 << 20))[0]))
    code, out, err = await asyncio.to_thread(pull, stack, name, tmp_path / "genuine")
    assert code == 0 and f"weights checked: sha256 {good} (from the completed result of {cmd.op_id} in OPS)" in out, \
        (out, err)
    bad = hashlib.sha256(b"junk").hexdigest()
    await overwrite(other, f"{name}/model.pt", b"junk")
    await overwrite(other, f"{name}/metadata.json", json.dumps({**meta, "model_sha256": bad}).encode())
    code, out, err = await asyncio.to_thread(pull, stack, name, tmp_path / "pulled")
    line = err.strip().splitlines()[-1] if err.strip() else out
    assert code != 0 and good in line and bad in line and f"completed result of {cmd.op_id}" in line, (out, err)
    with pytest.raises(DataError, match="does not match the digest"):
        await ModelStore(cli.js).load(name)
