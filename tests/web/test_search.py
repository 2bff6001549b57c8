"""The page's list filtered and paged on the server (GET /ops.json, through the operations index that
`ktrdr ops list` reads) and an operation's events downloaded as JSON (GET /ops/ID/events.json), over
HTTP against the page's own process and a real stack; the browser side is in test_browser.py."""

from __future__ import annotations

from pathlib import Path

from events import subjects
from events.messages import LoadData, RunDummy, StartTraining
from tests.helpers import wait_for_event, wait_terminal

STRATEGY = Path(__file__).parents[2] / "strategies" / "mlp_rsi_aapl.yaml"


async def made_operations(start_actors, client) -> dict[str, str]:
    """Five operations, oldest first: two completed dummies, a dummy queued in a pool nobody serves,
    a data load of MSFT and a training of mlp_rsi_aapl (both queued: no worker of theirs runs)."""
    await start_actors("orchestrator", "dummy")
    ops: dict[str, str] = {}
    for name in ("done1", "done2"):
        cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=1, interval_s=0.01)
        await client.submit(cmd)
        await wait_terminal(client, cmd.op_id)
        ops[name] = cmd.op_id
    cmds = {"waiting": RunDummy(op_id=subjects.new_op_id("dummy"), iterations=1, pool="nobody"),
            "load": LoadData(op_id=subjects.new_op_id("data"), symbol="MSFT", mode="full"),
            "train": StartTraining(op_id=subjects.new_op_id("training"), strategy_path=str(STRATEGY),
                                   strategy_yaml=STRATEGY.read_text(), data_mode="none")}
    for name, cmd in cmds.items():
        await client.submit(cmd)
        await wait_for_event(client, cmd.op_id, lambda ev, v: v.status == "queued")
        ops[name] = cmd.op_id
    return ops


async def listed(http, web, query: str = "") -> tuple[list[str], str | None]:
    async with http.get(web.at("/ops.json" + query)) as r:
        body = await r.json()
        assert r.status == 200, body
    return [row["op_id"] for row in body["rows"]], body["next_before"]


async def test_the_list_filters_and_pages_on_the_server(start_actors, client, web, http):
    ops = await made_operations(start_actors, client)
    everything = list(ops.values())
    assert (await listed(http, web)) == (everything, None)
    assert (await listed(http, web, "?status=completed"))[0] == [ops["done1"], ops["done2"]]
    assert (await listed(http, web, "?status=queued"))[0] == [ops["waiting"], ops["load"], ops["train"]]
    assert (await listed(http, web, "?type=data"))[0] == [ops["load"]]
    assert (await listed(http, web, "?type=training&status=queued"))[0] == [ops["train"]]
    assert (await listed(http, web, "?pool=nobody"))[0] == [ops["waiting"]]
    assert (await listed(http, web, "?text=msft"))[0] == [ops["load"]]  # a symbol, in any case
    assert (await listed(http, web, "?text=RSI_AAPL"))[0] == [ops["train"]]  # the strategy
    assert (await listed(http, web, f"?text={ops['done2'][-6:]}"))[0] == [ops["done2"]]  # a piece of the id
    assert (await listed(http, web, "?text=nothing-like-it"))[0] == []
    made = subjects.created_at_of(ops["waiting"]).strftime("%Y-%m-%dT%H:%M:%S.%f")  # UTC, as the CLI takes it
    assert (await listed(http, web, f"?since={made}"))[0] == [ops["waiting"], ops["load"], ops["train"]]
    assert (await listed(http, web, f"?until={made}"))[0] == [ops["done1"], ops["done2"]]
    assert (await listed(http, web, "?since=2999-01-01"))[0] == []
    # Pages back with the cursor each page gives, to the oldest; together they are the whole list.
    pages, before = [], ""
    while True:
        rows, cursor = await listed(http, web, "?limit=2" + (f"&before={before}" if before else ""))
        pages.append(rows)
        if cursor is None:
            break
        before = cursor
    assert pages == [everything[3:], everything[1:3], everything[:1]]
    assert (await listed(http, web, f"?status=completed&limit=1&before={ops['done2']}")) == ([ops["done1"]], None)


async def test_bad_filters_are_one_line_and_400(web, http):
    for query in ("?status=done", "?limit=0", "?limit=5000", "?limit=x", "?since=yesterday", "?until=2026-13-01",
                  "?type=a%20b", "?pool=*", "?colour=red", "?text=" + "x" * 65, "?text=a*b", "?text=%22quoted%22",
                  "?before=not-a-cursor"):
        async with http.get(web.at("/ops.json" + query)) as r:
            body = await r.json()
            assert r.status == 400 and body["error"] and "\n" not in body["error"], (query, body)


async def test_an_operations_events_download_as_json(start_actors, client, web, http):
    await start_actors("orchestrator", "dummy")
    cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=3, interval_s=0.01)
    await client.submit(cmd)
    await wait_terminal(client, cmd.op_id)
    async with http.get(web.at(f"/ops/{cmd.op_id}/events.json")) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("application/json")
        assert r.headers["Content-Disposition"] == f'attachment; filename="{cmd.op_id}.events.json"'
        events = await r.json()
    stored = await client.events(cmd.op_id)
    assert [e["type"] for e in events] == [type(e).__name__ for e in stored]
    assert events[0]["type"] == "OperationCreated" and events[-1]["type"] == "OperationCompleted"
    assert {e["op_id"] for e in events} == {cmd.op_id}
    async with http.get(web.at("/ops/dummy-20200101T000000000000-abcdef/events.json")) as r:
        assert r.status == 404
    async with http.get(web.at("/ops/not-an-id/events.json")) as r:
        assert r.status == 400


async def test_the_timeline_and_curves_endpoints_check_ids_and_say_what_is_missing(start_actors, client, web, http):
    await start_actors("orchestrator", "dummy")
    cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=1, interval_s=0.01)
    await client.submit(cmd)
    await wait_terminal(client, cmd.op_id)
    for what in ("timeline", "curves"):
        async with http.get(web.at(f"/ops/not-an-id/{what}")) as r:
            assert r.status == 400
        async with http.get(web.at(f"/ops/dummy-20200101T000000000000-abcdef/{what}")) as r:
            assert r.status == 404 and "no operation" in (await r.json())["error"]
    async with http.get(web.at(f"/ops/{cmd.op_id}/timeline")) as r:
        assert r.status == 200 and (await r.json())["children"] == []  # not a workflow: no children
    async with http.get(web.at(f"/ops/{cmd.op_id}/curves")) as r:
        body = await r.json()
        assert r.status == 200 and body["op_id"] == cmd.op_id and body["points"] == []  # not a training
    async with http.get(web.at("/compare?ops=x")) as r:  # the page itself; its script checks the ids
        assert r.status == 200 and "script-src 'self'" in r.headers["Content-Security-Policy"]
