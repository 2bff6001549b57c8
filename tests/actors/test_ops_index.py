"""The operations index (actors/_orch_index.py, ktrdr/transport/opsindex.py): the active orchestrator
keeps one summary per operation as OPS stores its lifecycle events; `ops list` reads the index (the
hours that may hold the page, newest first) and the log only after the index's watermark; a kill -9
between an event and its summary is repaired at the next activation; `ops reindex` rebuilds it after
the bucket was deleted. Real nats-server, real orchestrator (in-process, or a process for the crash)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from events import subjects
from events.codec import encode
from events.messages import OperationCreated, OperationRejected, OpSummary, RunDummy
from ktrdr.client import Client
from ktrdr.ops import fold_all
from ktrdr.ops.index import Filters, parse_when
from ktrdr.ops.search import WORDS_MARK_KEY
from ktrdr.transport import opsindex
from ktrdr.web.views import row_json
from tests.actors.test_ha import orchestrators  # noqa: F401  (the fixture)
from tests.cli.test_cli import ktrdr
from tests.helpers import wait_for_event, wait_terminal


async def until(check: Callable[[], Awaitable[object]], timeout: float = 20.0) -> object:
    """Poll a server-side condition until truthy (TimeoutError after `timeout`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if result := await check():
            return result
        if loop.time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.05)


async def indexed(c: Client) -> dict[str, OpSummary]:
    """Every summary in the index, by op id."""
    return {s.op_id: s for h in await opsindex.hours(c.js) for s in await opsindex.in_hour(c.js, h)}


async def caught_up(c: Client) -> bool:
    """The index's watermark has passed every lifecycle event OPS stores."""
    try:
        return await opsindex.behind(c.js) == 0
    except opsindex.IndexMissing:
        return False


async def store_history(c: Client, hours: list[str], per_hour: int) -> list[str]:
    """Finished operations made in the given hours (yyyymmddHH), stored as an orchestrator stores a
    rejected one: created, rejected. Their ids, oldest first."""
    made = []
    for hour in hours:
        for i in range(per_hour):  # minute i % 60, second i // 60
            op_id = f"dummy-{hour[:8]}T{hour[8:]}{i % 60:02d}{i // 60 % 60:02d}{i:06d}-{i:06x}"
            made.append(op_id)
            await c.js.publish_async(subjects.ops(op_id, "created"), encode(OperationCreated(
                op_id=op_id, actor="orchestrator-test", domain="dummy", op_type="dummy",
                command=RunDummy(op_id=op_id, iterations=1))))
            await c.js.publish_async(subjects.ops(op_id, "rejected"), encode(OperationRejected(
                op_id=op_id, actor="orchestrator-test", reason="history")))
    await c.js.publish_async_completed()
    return sorted(made, key=subjects.created_at_of)


async def test_a_page_walks_only_the_newest_hours_and_the_cursor_and_window_page_back(start_actors, client):
    await start_actors("orchestrator")
    made = await store_history(client, ["2026110110", "2026110111", "2026110112"], per_hour=2)
    await until(lambda: caught_up(client))
    assert {o: s.status for o, s in (await indexed(client)).items()} == dict.fromkeys(made, "rejected")

    rows = await client.list_operations(limit=2)
    assert [v.op_id for v in rows] == made[4:] and client.index_note is None
    assert client.index_read == 4  # the newest hour, and one more to know there is a page before
    cursor = client.next_before
    rows = await client.list_operations(limit=3, before=cursor)
    assert [v.op_id for v in rows] == made[1:4] and client.next_before == made[1]
    window = Filters(since=parse_when("2026-11-01T11:00"), until=parse_when("2026-11-01T12:00"))
    rows = await client.list_operations(filters=window)
    assert [v.op_id for v in rows] == made[2:4] and client.index_read == 2  # one hour read
    rows = await client.list_operations(filters=Filters(status="completed"))
    assert rows == []


async def test_a_search_of_an_index_without_words_walks_a_bounded_stretch_per_call_and_says_so(
        start_actors, client):
    await start_actors("orchestrator")
    made = await store_history(client, ["2026110110", "2026110111", "2026110112", "2026110113"], per_hour=3)
    await until(lambda: caught_up(client))
    wanted = Filters(text=made[1].split("-")[1][8:])  # T + its time: a piece of a word of the second oldest id
    # Through the search words (ktrdr.ops.search): whole words only, so a piece of one finds nothing
    # and reads no summary.
    assert await client.list_operations(limit=50, filters=wanted) == [] and client.index_read == 0
    # An index built before words were filed (no meta.words): the scan, which finds pieces too.
    kv = await client.js.key_value(subjects.OPS_INDEX_BUCKET)
    await kv.delete(WORDS_MARK_KEY)
    # Unbounded (the CLI): the whole history in one call.
    assert [v.op_id for v in await client.list_operations(limit=50, filters=wanted)] == [made[1]]
    assert client.searched_to is None and client.next_before is None and client.index_read == 12
    assert client.index_note is not None and "no search words" in client.index_note
    # Bounded (the page): an hour at a time here; each call says how far back it looked.
    pages, before, reads = [], None, []
    while True:
        rows = await client.list_operations(limit=50, filters=wanted, before=before, max_walk=3)
        pages.append([v.op_id for v in rows])
        reads.append(client.index_read)
        if client.next_before is None:
            break
        assert client.next_before == client.searched_to
        before = client.next_before
    assert pages == [[], [], [], [made[1]]] and reads == [3, 3, 3, 3]
    assert before == "2026-11-01T11:00:00+00:00"  # the last stretch began with the oldest hour's end


async def test_a_busy_hour_is_read_minute_by_minute_newest_first(start_actors, client):
    await start_actors("orchestrator")
    made = await store_history(client, ["2026110110"], per_hour=opsindex.MULTI_LAST_MAX + 60)
    await until(lambda: caught_up(client))
    rows = await client.list_operations(limit=5)
    assert [v.op_id for v in rows] == made[-5:]
    assert client.index_read < 100  # its newest minutes, not the hour's 1,084
    assert len(await opsindex.in_hour(client.js, "2026110110")) == len(made)


async def test_a_live_operation_is_listed_live_then_leaves_the_live_keys(start_actors, settings, client):
    await start_actors("orchestrator", "dummy")
    rc, out, err = await ktrdr(settings, "dummy", "--iterations", "1", "--interval", "0.01", "--no-wait")
    assert rc == 0, err
    op_id = out.strip()
    await wait_terminal(client, op_id)
    rows = await client.list_operations(limit=5, filters=Filters(status="completed"))
    assert [v.op_id for v in rows] == [op_id] and client.index_note is None  # fresh: the log after the mark
    await until(lambda: caught_up(client))
    assert (await indexed(client))[op_id].status == "completed"
    assert await opsindex.live(client.js) == []


async def test_a_kill_9_between_a_terminal_event_and_its_summary_is_repaired_at_restart(
        orchestrators, start_actors, settings, client, monkeypatch):  # noqa: F811
    group = orchestrators()
    monkeypatch.setenv("KTRDR_TEST_CRASH", "after-event-before-index")
    first = group.start()
    monkeypatch.delenv("KTRDR_TEST_CRASH")
    await group.wait_state(first, "active")
    await start_actors("dummy")
    op_id = subjects.new_op_id("dummy")
    await client.submit(RunDummy(op_id=op_id, iterations=2, interval_s=0.05))
    assert await asyncio.to_thread(first.wait, 30) == 9, group.log_tail(first)  # os._exit(9) at the hook
    assert type(list(await client.events(op_id))[-1]).name == "completed"  # the log has it...
    before = (await indexed(client)).get(op_id)
    assert before is None or before.status != "completed"  # ...the index not
    second = group.start()
    await group.wait_state(second, "active")
    summary = await until(lambda: _status_of(client, op_id, "completed"))
    assert isinstance(summary, OpSummary) and summary.ended_at is not None
    assert await opsindex.live(client.js) == []
    rows = await client.list_operations()
    assert [v.status for v in rows] == ["completed"] and client.index_note is None
    rows = await client.list_operations(filters=Filters(text=op_id[-6:]))  # its words were filed at the repair
    assert [v.op_id for v in rows] == [op_id] and client.index_read == 1 and client.index_note is None


async def _status_of(c: Client, op_id: str, status: str) -> OpSummary | None:
    s = (await indexed(c)).get(op_id)
    return s if s is not None and s.status == status else None


async def test_reindex_after_the_bucket_was_deleted_gives_the_same_list(start_actors, settings, client):
    await start_actors("orchestrator", "dummy")
    made = await store_history(client, ["2026110110", "2026110111"], per_hour=2)
    done = subjects.new_op_id("dummy")
    await client.submit(RunDummy(op_id=done, iterations=1, interval_s=0.01))
    await wait_terminal(client, done)
    await until(lambda: caught_up(client))
    listed = [(v.op_id, v.status) for v in await client.list_operations()]
    assert client.index_note is None and len(listed) == len(made) + 1

    await client.js.delete_key_value(subjects.OPS_INDEX_BUCKET)
    rc, out, err = await ktrdr(settings, "ops", "list", "--json")  # no index: the log, saying so once
    assert rc == 0 and err.count("note:") == 1 and "ops reindex" in err
    assert [(v["op_id"], v["status"]) for v in json.loads(out)] == listed

    rc, out, err = await ktrdr(settings, "ops", "reindex")
    assert rc == 0, err
    assert f"reindexed {len(made) + 1} operations (0 live)" in out
    assert [(v.op_id, v.status) for v in await client.list_operations()] == listed
    assert client.index_note is None
    assert await opsindex.has_words(client.js)  # rebuilt with the search words
    assert [v.op_id for v in await client.list_operations(filters=Filters(text=done[-6:]))] == [done]
    assert client.index_read == 1 and client.index_note is None


async def test_a_restarted_orchestrator_reads_only_the_live_operations_and_refuses_an_existing_op_id(
        start_actors, client):
    [first] = await start_actors("orchestrator")  # no dummy worker: its operations stay queued
    made = await store_history(client, ["2026110110", "2026110111"], per_hour=10)
    queued = [RunDummy(op_id=subjects.new_op_id("dummy"), iterations=1) for _ in range(2)]
    for cmd in queued:
        await client.submit(cmd)
    await until(lambda: _live_count(client, 2))
    await until(lambda: caught_up(client))
    await first.stop()

    [second] = await start_actors("orchestrator")
    assert second.rebuild_read == 2 and set(second.live) == {c.op_id for c in queued}  # not the 20 finished
    assert len(second.known) == 0
    await client.submit(RunDummy(op_id=made[0], iterations=1))  # an operation that exists: a duplicate
    probe = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=1)
    await client.submit(probe)  # handled after the duplicate (one command at a time, in order)
    await until(lambda: _live_count(client, 3))
    assert [type(e).name for e in await client.events(made[0])] == ["created", "rejected"]  # not created again
    assert made[0] in second.known


async def _live_count(c: Client, n: int) -> bool:
    return len(await opsindex.live(c.js)) == n


async def test_a_page_of_ended_operations_is_listed_from_the_index_alone_as_ops_show_shows_them(
        start_actors, client):
    await start_actors("orchestrator", "dummy")
    [rejected] = await store_history(client, ["2026110110"], per_hour=1)
    done = subjects.new_op_id("dummy")
    await client.submit(RunDummy(op_id=done, iterations=2, interval_s=0.01))
    await wait_terminal(client, done)
    stopped = subjects.new_op_id("dummy")
    await client.submit(RunDummy(op_id=stopped, iterations=500, interval_s=0.05))
    await wait_for_event(client, stopped, lambda _ev, v: v.percentage > 0)
    await until(lambda: caught_up(client))
    rows = await client.list_operations()
    assert [v.op_id for v in rows] == [rejected, done, stopped]
    assert client.ops_read == 1  # the live one (it changes): read from OPS
    await client.cancel(stopped, reason="enough")
    await wait_terminal(client, stopped)
    await until(lambda: caught_up(client))

    rows = await client.list_operations()
    assert client.ops_read == 0 and client.index_note is None  # every row from its summary
    for row in rows:
        shown = fold_all(await client.events(row.op_id))  # what `ops show` folds: every stored event
        assert (row.status, row.description, row.error, row.percentage, row.reason) == \
            (shown.status, shown.description, shown.error, shown.percentage, shown.reason)
        assert row_json(row) == row_json(shown)  # the page's row, its rendered line included
    assert {v.op_id: v.status for v in rows} == {rejected: "rejected", done: "completed", stopped: "cancelled"}
    assert 0 < rows[-1].percentage < 100 and rows[0].error == "history"
