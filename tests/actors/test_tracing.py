"""OpenTelemetry traces across every hop: one training workflow is one trace, from the client's command
through the orchestrator's operations, the work items, the workers' runs, each data segment and IB
request, into the training child's epochs; `ktrdr ops show ID --trace` prints it as a tree. Off, nothing
of OpenTelemetry is imported and no message carries a traceparent."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from events import subjects
from events.messages import OperationCreated, RunDummy
from ktrdr import tracing
from tests.actors.test_backtester import backtest, stored  # noqa: F401 (a fixture)
from tests.actors.test_ha import orchestrators  # noqa: F401 (a fixture)
from tests.actors.test_workflows import training
from tests.cli.test_cli import cli_env, ktrdr
from tests.conftest import make_settings
from tests.helpers import eventually, wait_for_event, wait_terminal

ROOT = Path(__file__).parents[2]


@pytest.fixture
def traced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Traces on in this process (the in-process actors and client) with the SDK's in-memory exporter,
    and the collector-free export for the training child (a subprocess that inherits the variables)."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "ktrdr")
    monkeypatch.setenv(tracing.ENV_DIR, str(tmp_path / "traces"))
    tracing.shutdown()
    memory = InMemorySpanExporter()
    assert tracing.setup("test", extra=[memory])
    yield memory
    tracing.shutdown()


def _id(span: Any) -> str:
    return f"{span.context.span_id:016x}"


def _as_dicts(memory: Any) -> list[dict[str, Any]]:
    return [{"trace_id": f"{s.context.trace_id:032x}", "span_id": _id(s),
             "parent_id": f"{s.parent.span_id:016x}" if s.parent is not None else None,
             "name": s.name, "attributes": dict(s.attributes or {})} for s in memory.get_finished_spans()]


def _children(spans: list[dict[str, Any]], parent: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["parent_id"] == parent["span_id"] and s["name"] == name]


def _one(spans: list[dict[str, Any]], parent: dict[str, Any], name: str, op_id: str | None = None) -> dict[str, Any]:
    found = [s for s in _children(spans, parent, name) if op_id is None or s["attributes"].get(tracing.OP_ID) == op_id]
    assert len(found) == 1, (name, op_id, [(s["name"], s["attributes"]) for s in _children(spans, parent, name)])
    return found[0]


@pytest.mark.slow
async def test_one_training_workflow_is_one_trace_with_every_hop(traced, data_stack, data_settings, start_actors,
                                                                  client, tmp_path):
    await start_actors("trainer", settings=data_settings)
    cmd = training()
    await client.submit(cmd)
    view = await wait_terminal(client, cmd.op_id, timeout=180)
    assert view.status == "completed", view.error
    data_op, train_op = view.children
    # The spans end a moment after the events we read: an operation's once the orchestrator folded its
    # end, a run's once its verdict is acknowledged.
    await eventually(lambda: {(cmd.op_id, "operation training"), (data_op, "run data"), (train_op, "run training")}
                     <= {(s["attributes"].get(tracing.OP_ID), s["name"]) for s in _as_dicts(traced)})
    files = tracing.read_spans(tmp_path / "traces")  # the child's spans: on disk as each epoch ended
    child = [s for s in files if s["service"] == "training-child"]
    spans = _as_dicts(traced) + child

    root = next(s for s in spans if s["name"] == "command cmd.training.start")
    assert root["parent_id"] is None and root["attributes"][tracing.OP_ID] == cmd.op_id
    assert {s["trace_id"] for s in spans if s["attributes"].get(tracing.OP_ID) in (cmd.op_id, data_op, train_op)} \
        == {root["trace_id"]}  # one trace: the command's

    workflow = _one(spans, root, "operation training", cmd.op_id)
    data = _one(spans, workflow, "operation data", data_op)
    data_run = _one(spans, data, "run data", data_op)
    segments = _children(spans, data_run, "segment")
    assert segments and all(s["attributes"][tracing.OP_ID] == data_op for s in segments)
    requests = [r for s in segments for r in _children(spans, s, "ib bars")]
    assert len(requests) >= len(segments)  # each segment asked IB at least once
    assert all(_children(spans, r, f"serve {r['attributes']['ktrdr.ib.subject']}") for r in requests)  # the ib actor

    train = _one(spans, workflow, "operation training", train_op)
    train_run = _one(spans, train, "run training", train_op)
    in_child = _one(spans, train_run, "training", train_op)  # the subprocess, from its job frame
    epochs = _children(spans, in_child, "epoch")
    assert sorted(e["attributes"]["ktrdr.epoch"] for e in epochs) == [1, 2]
    assert all(e["trace_id"] == root["trace_id"] and e["attributes"][tracing.OP_ID] == train_op for e in epochs)

    # The same tree from the collector-free export, as a user prints it.
    rc, out, err = await ktrdr(data_settings, "ops", "show", cmd.op_id, "--trace")
    assert rc == 0, err
    lines = out.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("trace      ")))
    tree = lines[start + 1:]
    assert tree[0].startswith("  command cmd.training.start  [test]"), out
    assert any(line.startswith("      operation data  [test/orchestrator]") for line in tree), out
    assert any(line.lstrip().startswith("serve ib.bars  [test/ib]") for line in tree), out
    assert any(line.lstrip().startswith("segment  [test/job-manager]") for line in tree), out
    assert any(line.lstrip().startswith("epoch  [training-child]") for line in tree), out


def test_off_by_default_imports_nothing_of_opentelemetry(settings):
    """Off (no OTEL_TRACES_EXPORTER), an actor's and the CLI's modules import no OpenTelemetry at all,
    and setting up traces leaves them off."""
    env = {k: v for k, v in cli_env(settings).items() if not k.startswith("OTEL_")}
    code = ("import sys, actors.orchestrator, actors.job_manager, actors.trainer, ktrdr.cli, ktrdr.tracing as t;"
            "t.setup('x'); print(t.enabled(), sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False []"


def test_a_malformed_traceparent_starts_a_new_trace_and_never_fails():
    assert tracing.valid("00-" + "a" * 32 + "-" + "b" * 16 + "-01") is not None
    for bad in ("", "01-" + "a" * 32 + "-" + "b" * 16 + "-01", "00-" + "A" * 32 + "-" + "b" * 16 + "-01",
                "00-" + "a" * 32 + "-" + "b" * 16 + "-01x", "../../etc", 5, None):
        assert tracing.valid(bad) is None


async def test_a_backtest_has_one_span_per_chunk_under_its_run(traced, start_actors, client, stored):  # noqa: F811
    _orch, backtester = await start_actors("orchestrator", "backtester")
    backtester.chunk_bars = 400  # 1,200 bars: 3 chunks
    cmd = backtest()
    await client.submit(cmd)
    view = await wait_terminal(client, cmd.op_id, timeout=60)
    assert view.status == "completed", view.error
    # the run's span ends once its verdict is out, the operation's once the orchestrator folded it
    await eventually(lambda: {"operation backtest", "run backtest"} <= {s["name"] for s in _as_dicts(traced)})
    spans = _as_dicts(traced)
    root = next(s for s in spans if s["name"] == "command cmd.backtest.run")
    run = _one(spans, _one(spans, root, "operation backtest", cmd.op_id), "run backtest", cmd.op_id)
    chunks = _children(spans, run, "backtest chunk")
    assert [c["attributes"]["ktrdr.bars"] for c in chunks] == [400, 400, 400]
    assert all(c["attributes"][tracing.OP_ID] == cmd.op_id for c in chunks)


async def test_ops_show_trace_with_traces_off_says_none_was_recorded_and_how(start_actors, settings, client):
    await start_actors("orchestrator", "dummy")
    assert not tracing.enabled()
    cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=1, interval_s=0.01)
    await client.submit(cmd)
    assert (await wait_terminal(client, cmd.op_id)).status == "completed"
    rc, out, err = await ktrdr(settings, "ops", "show", cmd.op_id, "--trace")
    assert rc == 0, err
    assert "trace      none recorded (traces are off unless OTEL_TRACES_EXPORTER names ktrdr" in out
    assert not (settings.home / tracing.TRACES_DIR).exists()  # nothing written while off
    rc, out, err = await ktrdr(settings, "ops", "show", cmd.op_id, "--trace", "--json")
    assert rc == 0 and json.loads(out)["trace"] == [], out


def test_a_span_file_is_rotated_at_its_cap_keeping_the_newest_spans(tmp_path):
    """The `ktrdr` exporter's file never passes its cap: the write that would rotates it to `.1` (the
    one before replaced), so a process keeps at most two capped files, and read_spans (what `ops show
    --trace` reads) still has the newest spans, in order, none torn."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    cap = 8_192
    exporter = tracing.JsonLinesExporter(tmp_path, "svc", max_bytes=cap)
    provider = TracerProvider(resource=Resource.create({"service.name": "svc"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    def write(provider: TracerProvider, first: int, count: int) -> None:
        tracer = provider.get_tracer("test")
        for i in range(first, first + count):
            with tracer.start_as_current_span("segment", attributes={"ktrdr.seq": i}):
                pass

    write(provider, 0, 300)  # ~300 bytes a line: several caps' worth
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([exporter.path.name, exporter.rotated.name])
    assert all(p.stat().st_size <= cap for p in tmp_path.iterdir())
    seqs = sorted(s["attributes"]["ktrdr.seq"] for s in tracing.read_spans(tmp_path))
    assert 0 < len(seqs) < 300 and seqs == list(range(seqs[0], 300))  # the newest, none lost between them
    provider.shutdown()
    # tracing set up again in the same process: a new exporter goes on from the file's size
    again = TracerProvider(resource=Resource.create({"service.name": "svc"}))
    again.add_span_processor(SimpleSpanProcessor(tracing.JsonLinesExporter(tmp_path, "svc", max_bytes=cap)))
    write(again, 300, 40)
    again.shutdown()
    assert all(p.stat().st_size <= cap for p in tmp_path.iterdir()) and len(list(tmp_path.iterdir())) == 2
    assert max(s["attributes"]["ktrdr.seq"] for s in tracing.read_spans(tmp_path)) == 339


@pytest.mark.slow
async def test_an_operation_span_is_continued_by_the_orchestrator_that_takes_over_after_a_kill_9(
        traced, orchestrators, start_actors, settings, client, tmp_path):  # noqa: F811
    """The active orchestrator (a process writing its spans to the files) is killed mid-operation: its
    operation span is lost with it, but `created` carried that span's traceparent, so the standby that
    takes over continues it: an `operation dummy` span resumed by the new leader, a child of the lost
    one in the same trace as the command and the worker's run, ended with the outcome; and `ops show
    --trace` prints them as one trace."""
    orch = orchestrators()
    first = orch.start()
    await orch.wait_state(first, "active")
    second = orch.start()
    await orch.wait_state(second, "standby")
    await start_actors("dummy")
    cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=80, interval_s=0.05)
    await client.submit(cmd)
    await wait_for_event(client, cmd.op_id, lambda ev, v: v.current_step >= 2, timeout=30)
    first.kill()  # SIGKILL: its operation span never ends, never exported
    await orch.wait_state(second, "active")
    view = await wait_terminal(client, cmd.op_id, timeout=60)
    assert view.status == "completed", view.error
    created = await client.js.get_last_msg(subjects.STREAM_OPS, subjects.ops(cmd.op_id, OperationCreated.name))
    _v, trace_id, lost_span, _f = tracing.valid(created.headers.get(tracing.HEADER)).split("-")  # type: ignore[union-attr]

    def resumed() -> list[dict[str, Any]]:
        return [s for s in tracing.read_spans(tmp_path / "traces") if s["name"] == "operation dummy"
                and s["attributes"].get(tracing.OP_ID) == cmd.op_id]

    await eventually(resumed, timeout=20)  # written when the new leader folded the verdict
    (span,) = resumed()
    second_id = next(hb.actor for hb in await client.live_actors() if hb.role == "orchestrator"
                     and int(hb.actor.split("-")[-2]) == second.pid)
    assert span["trace_id"] == trace_id and span["parent_id"] == lost_span
    assert span["attributes"]["ktrdr.resumed_by"] == second_id
    assert span["attributes"]["ktrdr.outcome"] == "completed" and span["service"] == "orchestrator"
    await eventually(lambda: any(s["name"] == "run dummy" for s in _as_dicts(traced)))
    mine = _as_dicts(traced)
    command = next(s for s in mine if s["name"] == f"command {subjects.command(cmd)}")
    run = next(s for s in mine if s["name"] == "run dummy" and s["attributes"][tracing.OP_ID] == cmd.op_id)
    assert command["trace_id"] == run["trace_id"] == trace_id and run["parent_id"] == lost_span
    # the files hold the orchestrators' spans (the lost one's never came): the tree shows what is there
    shown = tracing.tree_lines(tracing.trace_of(tracing.read_spans(tmp_path / "traces"), cmd.op_id))
    assert any(line.lstrip().startswith("operation dummy  [orchestrator]") for line in shown), shown
    assert any("not recorded" in line and lost_span in line for line in shown), shown


async def test_an_orchestrator_that_stops_cleanly_ends_its_operation_spans_and_the_next_continues_them(
        traced, start_actors, settings, client):
    """A clean stop hands the lead over: the stopping orchestrator ends its open operation spans with
    the outcome `handed_over`, and the one that takes over continues each as a child of that span."""
    quick = make_settings(settings.home, settings.nats_url or "", leader_ttl_s=1.0)
    first, second = await start_actors("orchestrator", "orchestrator", settings=quick)
    await eventually(lambda: any(o.succession.state().startswith("active") for o in (first, second)), timeout=20)
    active, standby = (first, second) if first.succession.state().startswith("active") else (second, first)
    await start_actors("dummy")
    cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=80, interval_s=0.05)
    await client.submit(cmd)
    await wait_for_event(client, cmd.op_id, lambda ev, v: v.current_step >= 2, timeout=30)
    await active.stop()
    view = await wait_terminal(client, cmd.op_id, timeout=60)
    assert view.status == "completed", view.error

    def op_spans() -> list[dict[str, Any]]:
        return [s for s in _as_dicts(traced) if s["name"] == "operation dummy"
                and s["attributes"].get(tracing.OP_ID) == cmd.op_id]

    await eventually(lambda: len(op_spans()) == 2, timeout=20)
    ended, resumed = sorted(op_spans(), key=lambda s: "ktrdr.resumed_by" in s["attributes"])
    assert ended["attributes"]["ktrdr.outcome"] == "handed_over"
    assert resumed["parent_id"] == ended["span_id"] and resumed["trace_id"] == ended["trace_id"]
    assert resumed["attributes"]["ktrdr.resumed_by"] == standby.id
    assert resumed["attributes"]["ktrdr.outcome"] == "completed"
