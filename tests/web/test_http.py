"""The operations page's server over HTTP, without a browser: what it answers at its boundary (ids,
paths, Host, sizes, cross-site cancels), the bounds on live streams and on the events a page replays,
and that what it pushes is the CLI's fold and wording."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from events import subjects
from events.messages import CancelRequested, RunDummy
from ktrdr.client import Client
from ktrdr.ops import fold_all
from ktrdr.rendering import ProgressRenderer
from tests.helpers import wait_for_event, wait_terminal
from tests.web.conftest import log_in, read_sse

UNKNOWN = "dummy-20200101T000000000000-abcdef"


async def run_dummy(client, iterations: int, interval: float) -> str:
    cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=iterations, interval_s=interval)
    await client.submit(cmd)
    return cmd.op_id


async def test_ids_paths_and_hosts_are_checked_at_the_boundary(web, http):
    async with http.get(web.at("/ops/not-an-id")) as r:
        assert r.status == 400 and "Not an operation id" in await r.text()
    async with http.get(web.at("/ops/" + "a" * 500)) as r:
        assert r.status == 400
    async with http.get(web.at(f"/ops/{UNKNOWN}")) as r:
        assert r.status == 404 and f"No operation {UNKNOWN} is stored" in await r.text()
    async with http.get(web.at(f"/ops/{UNKNOWN}/events")) as r:
        assert r.status == 404
    for path in ("/static/../__init__.py", "/static/%2e%2e%2fserver.py", "/static/list.html", "/static/nope.js",
                 "/etc/passwd"):
        async with http.get(web.at(path)) as r:
            assert r.status == 404, path
    async with http.get(web.at("/static/op.js")) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/javascript")
        assert "X-KTRDR-Cancel" in await r.text()
    async with http.get(web.at("/")) as r:
        assert r.status == 200
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        assert r.headers["X-Frame-Options"] == "DENY"
    # DNS rebinding: a page served under another name that resolves here is not answered.
    async with http.get(web.at("/"), headers={"Host": "evil.example:80"}) as r:
        assert r.status == 421
    async with http.post(web.at(f"/ops/{UNKNOWN}/cancel"), data=b"x" * 100_000) as r:
        assert r.status in (403, 413)  # refused before or while reading: never processed


async def test_cancel_needs_the_login_cookie_and_the_same_origin(start_actors, client, web, http):
    await start_actors("orchestrator", "dummy")
    op_id = await run_dummy(client, 200, 0.3)
    await wait_for_event(client, op_id, lambda ev, v: v.status == "running")
    url = web.at(f"/ops/{op_id}/cancel")
    origin = web.url.rstrip("/")
    async with http.post(url, headers={"Origin": origin, "X-KTRDR-Cancel": "1"}) as r:
        assert r.status == 403 and "read-only" in (await r.json())["note"]
    async with http.get(web.at(f"/ops/{op_id}")) as r:
        assert 'name="ktrdr-can-cancel" content="0"' in await r.text()
    await log_in(http, web)
    async with http.post(url, headers={"Origin": origin}) as r:  # a form could send this much
        assert r.status == 403 and "X-KTRDR-Cancel" in (await r.json())["note"]
    async with http.post(url, headers={"X-KTRDR-Cancel": "1", "Origin": "http://evil.example"}) as r:
        assert r.status == 403 and "cross-origin" in (await r.json())["note"]
    async with http.post(url, headers={"X-KTRDR-Cancel": "1", "Sec-Fetch-Site": "cross-site"}) as r:
        assert r.status == 403
    assert (await client.view(op_id)).status == "running"  # none of those reached NATS
    async with http.post(url, headers={"X-KTRDR-Cancel": "1", "Origin": origin}) as r:
        assert r.status == 202 and (await r.json())["ok"] is True
    view = await wait_terminal(client, op_id)
    assert view.status == "cancelled"
    cancels = [e for e in await client.events(op_id) if isinstance(e, CancelRequested)]
    assert cancels and cancels[0].requested_by == "web"
    async with http.post(url, headers={"X-KTRDR-Cancel": "1", "Origin": origin}) as r:
        body = await r.json()
        assert r.status == 200 and body["ok"] is False and "already cancelled; nothing to cancel" in body["note"]


async def test_operation_stream_replays_the_last_n_events_with_the_cli_wording(start_actors, client, start_web,
                                                                               http):
    await start_actors("orchestrator", "dummy")
    op_id = await run_dummy(client, 30, 0.001)
    await wait_terminal(client, op_id)
    web = await start_web("--history", "10")
    stored = await client.events(op_id)
    async with http.get(web.at(f"/ops/{op_id}/events")) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        name, snap = await read_sse(r)
    assert name == "snapshot"
    assert snap["count"] == len(stored) and len(snap["history"]) == 10 and snap["omitted"] == len(stored) - 10
    assert [h["type"] for h in snap["history"]] == [type(e).__name__ for e in stored[-10:]]
    view = fold_all(stored)
    assert snap["view"]["line"] == ProgressRenderer.for_domain("dummy").line(view)
    assert snap["view"]["line"].startswith("Dummy operation completed: 30 iterations")
    assert snap["view"]["status"] == "completed" and snap["view"]["percentage"] == 100.0


async def test_live_streams_are_bounded_and_push_changes(start_actors, client, start_web, http):
    await start_actors("orchestrator", "dummy")
    web = await start_web("--max-streams", "1")
    async with http.get(web.at("/events")) as first:
        name, snap = await read_sse(first)
        assert name == "snapshot" and snap["rows"] == []
        async with http.get(web.at("/events")) as second:
            assert second.status == 503
        op_id = await run_dummy(client, 3, 0.05)
        seen: list[dict] = []
        while not any(r["op_id"] == op_id and r["status"] == "completed" for r in seen):
            name, push = await read_sse(first)
            assert name == "ops"
            seen.extend(push["rows"])
    rows = [r for r in seen if r["op_id"] == op_id]
    assert rows[-1]["line"].startswith("Dummy operation completed: 3 iterations")
    assert rows[-1]["type"] == "dummy" and rows[-1]["percentage"] == 100.0
    # The slot is free again once the server has seen the first page go away.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        async with http.get(web.at("/events")) as again:
            if again.status == 200:
                break
        assert loop.time() < deadline, "the first stream's slot was never released"
        await asyncio.sleep(0.05)


async def test_server_records_where_it_serves(settings, web):
    from ktrdr.runfiles import web_url_file
    from ktrdr.web import running_url

    assert web_url_file(settings).read_text().strip() == web.url
    assert running_url(settings) == web.url
    web.proc.terminate()
    assert await asyncio.wait_for(web.proc.wait(), 10) == 0  # SIGTERM is a clean stop
    assert not web_url_file(settings).exists() and running_url(settings) is None


async def test_ktrdr_web_prints_the_running_page(settings, web):
    env = {**os.environ, "NATS_URL": settings.nats_url, "KTRDR_HOME": str(settings.home)}
    code = "import ktrdr.cli.view_commands; from ktrdr.cli import main; main()"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, "web", env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    assert out.decode().strip().startswith(web.at("/login?code="))  # a one-time way in that may cancel


def test_bad_arguments_are_refused_before_connecting():
    for args, says in ((["--port", "70000"], "0..65535"), (["--history", "5"], "10..10000"),
                       (["--max-streams", "0"], "1..1000")):
        res = subprocess.run([sys.executable, "-m", "ktrdr.web", *args], capture_output=True, text=True, timeout=30)
        assert res.returncode == 2 and says in res.stderr, (args, res.stderr)


async def test_unknown_route_is_a_404_page(web, http):
    async with http.get(web.at("/nope")) as r:
        assert r.status == 404
    async with http.delete(web.at("/")) as r:
        assert r.status == 405


async def test_training_curves_grow_live_and_replay_whole(start_actors, client, start_web, http, bars_in_store):
    from pathlib import Path

    from events.messages import StartTraining

    strategy = Path(__file__).parents[2] / "strategies" / "mlp_rsi_aapl.yaml"
    await start_actors("orchestrator", "trainer")
    web = await start_web()
    epochs = 12
    cmd = StartTraining(op_id=subjects.new_op_id("training"), strategy_path=str(strategy),
                        strategy_yaml=strategy.read_text(), epochs=epochs, data_mode="none")
    await client.submit(cmd)
    await wait_for_event(client, cmd.op_id, lambda ev, v: v.status != "unknown")
    async with http.get(web.at(f"/ops/{cmd.op_id}/events")) as r:
        name, snap = await read_sse(r)
        assert name == "snapshot"
        points = {e: m for e, m in snap["curves"]}
        live = 0
        while not snap["view"]["terminal"]:
            name, upd = await read_sse(r)
            assert name == "update"
            snap["view"] = upd["view"]
            if upd["point"]:
                points[upd["point"][0]] = upd["point"][1]
                live += 1
    assert sorted(points) == list(range(1, epochs + 1))
    assert live > 0  # connected before the first epoch ended: points came as pushes
    assert set(points[1]) >= {"train_loss", "val_loss", "train_accuracy", "val_accuracy"}
    async with http.get(web.at(f"/ops/{cmd.op_id}/events")) as r:
        _, again = await read_sse(r)
    assert {e: m for e, m in again["curves"]} == points
    assert again["view"]["line"].startswith(f"Training completed: {epochs} epochs")


async def test_page_reconnects_after_nats_was_away(start_actors, settings, nats_server, web, http):
    """Client gives up after a few reconnects; the page's server starts a new connection by itself."""
    await start_actors("orchestrator", "dummy")
    async with http.get(web.at("/events")) as r:
        name, _ = await read_sse(r)
        assert name == "snapshot"
        nats_server.stop()
        with pytest.raises(EOFError):  # the server ends the streams of a connection it lost
            while True:
                await read_sse(r)
    nats_server.restart()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        async with http.get(web.at("/events")) as r:
            if r.status == 200:
                name, _ = await read_sse(r)
                assert name == "snapshot"
                async with Client(settings) as fresh:  # the test's own Client gave up too
                    op_id = await run_dummy(fresh, 2, 0.01)
                while True:
                    _, push = await read_sse(r)
                    if any(row["op_id"] == op_id and row["status"] == "completed" for row in push["rows"]):
                        break
                break
            assert r.status == 503 and "Not connected to NATS" in await r.text()
        assert loop.time() < deadline, "the page never reconnected"
        await asyncio.sleep(0.1)


async def test_a_training_workflows_backtest_is_served_for_its_page(start_actors, client, web, http, bars_in_store):
    """`/ops/ID/backtest`: the figures and curve of a training workflow's backtest child (run with
    `backtest`), the figures worded as `ktrdr backtest` prints them; none for any other operation."""
    from pathlib import Path

    from events.messages import StartTraining
    from ktrdr.cli.backtest_commands import figure_rows

    strategy = Path(__file__).parents[2] / "strategies" / "mlp_rsi_aapl.yaml"
    await start_actors("orchestrator", "trainer", "backtester", "dummy")
    cmd = StartTraining(op_id=subjects.new_op_id("training"), strategy_path=str(strategy),
                        strategy_yaml=strategy.read_text(), epochs=2, data_mode="none", backtest=True)
    await client.submit(cmd)
    view = await wait_terminal(client, cmd.op_id, timeout=120)
    assert view.status == "completed", view.error
    tested = await client.view(view.children[-1])
    async with http.get(web.at(f"/ops/{cmd.op_id}/backtest")) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
    assert body["op_id"] == tested.op_id and body["model"] == tested.result["model"]
    assert body["rows"] == [list(row) for row in figure_rows(tested.result)]
    curve = body["curve"]
    assert curve["bars"] == tested.result["bars"] == len(curve["t"]) == len(curve["equity"])
    assert abs(min(curve["drawdown"]) - tested.result["strategy"]["max_drawdown"]) < 1e-6
    assert curve["t"] == sorted(curve["t"])
    dummy = await run_dummy(client, 2, 0.01)
    await wait_terminal(client, dummy)
    for op_id, status in ((dummy, 404), (UNKNOWN, 404), ("not-an-id", 400)):
        async with http.get(web.at(f"/ops/{op_id}/backtest")) as r:
            assert r.status == status, (op_id, await r.text())
    async with http.get(web.at(f"/ops/{dummy}/backtest")) as r:
        assert (await r.json())["note"] == f"{dummy} has no completed backtest to show"


async def test_the_list_page_serves_the_schedules(start_actors, client, web, http):
    from events.messages import Schedule
    from ktrdr.transport import schedules as store
    from tests.actors.test_schedules import started, wait_records

    await start_actors("orchestrator", "dummy")
    async with http.get(web.at("/schedules")) as r:
        assert r.status == 200 and await r.json() == []
    await store.put_definition(client.js, Schedule(name="page-tick", spec="@every 1s", command=RunDummy(
        op_id="dummy-20260101T000000000000-000000", iterations=1, interval_s=0.0)))
    recs = await wait_records(client, "page-tick", lambda rs: len(started(rs)) >= 1)
    async with http.get(web.at("/schedules")) as r:
        rows = await r.json()
    assert [(s["name"], s["spec"], s["overlap"], s["state"]) for s in rows] == [
        ("page-tick", "@every 1s", "skip", "active")]
    assert rows[0]["last_firing"]["seq"] >= started(recs)[0].seq
    async with http.get(web.at("/")) as r:
        assert 'id="schedules"' in await r.text()
