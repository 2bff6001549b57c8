"""The operations page in a real browser (headless Chromium through selenium): a running operation is
listed and its percentage rises; Cancel on its page ends it cancelled (checked in the event log); a
finished training's page draws a point per epoch; a completed backtest's page shows its figures and
its equity and drawdown against buy-and-hold; a sweep's page its leaderboard, sortable by a click on
a column, and its variants' validation-loss curves; an ended operation's bar is drawn full at once and no
Cancel is offered on it. Screenshots are written (into docs/screenshots/ with KTRDR_SCREENSHOTS=1).

Selenium's calls block, and the actors run on this test's event loop, so every browser step runs in a
thread (asyncio.to_thread) and waits with WebDriverWait, never a fixed sleep."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from events import subjects
from events.messages import CancelRequested, OperationProgress, RunDummy, StartTraining, TrainingContext
from tests.helpers import wait_for_event, wait_terminal
from tests.web.conftest import save_screenshot

STRATEGY = Path(__file__).parents[2] / "strategies" / "mlp_rsi_aapl.yaml"
WAIT_S = 30


def wait_until(driver: Any, condition: Callable[[Any], Any], timeout: float = WAIT_S) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # The list is redrawn on every push, so an element read a moment ago can be gone: read again.
    return WebDriverWait(driver, timeout, poll_frequency=0.05,
                         ignored_exceptions=(StaleElementReferenceException,)).until(condition)


def row_percentage(op_id: str) -> Callable[[Any], float | None]:
    from selenium.webdriver.common.by import By

    def read(driver: Any) -> float | None:
        cells = driver.find_elements(By.CSS_SELECTOR, f'tr[data-op-id="{op_id}"] span.pct')
        return float(cells[0].text.rstrip("%")) if cells else None

    return read


async def run_dummy(client, iterations: int, interval: float) -> str:
    cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=iterations, interval_s=interval)
    await client.submit(cmd)
    return cmd.op_id


async def test_list_shows_a_running_operation_whose_percentage_rises(start_actors, client, web, browser):
    from selenium.webdriver.common.by import By

    await start_actors("orchestrator", "dummy")
    op_id = await run_dummy(client, 12, 0.3)

    def first_and_later() -> tuple[float, float, str]:
        browser.get(web.url)
        read = row_percentage(op_id)
        first = wait_until(browser, lambda d: (p := read(d)) is not None and p > 0 and p < 100 and p)
        later = wait_until(browser, lambda d: (p := read(d)) is not None and p > first and p)
        status = browser.find_element(By.CSS_SELECTOR, f'tr[data-op-id="{op_id}"]').get_attribute("data-status")
        return first, later, status

    first, later, status = await asyncio.to_thread(first_and_later)
    assert 0 < first < later
    assert status == "running"
    await wait_terminal(client, op_id)


async def test_cancel_on_the_operation_page_cancels_it(start_actors, client, web, browser):
    from selenium.webdriver.common.by import By

    await start_actors("orchestrator", "dummy")
    op_id = await run_dummy(client, 200, 0.3)
    await wait_for_event(client, op_id, lambda ev, v: v.status == "running")

    def click_cancel() -> str:
        browser.get(web.at("/"))
        browser.delete_all_cookies()
        browser.get(web.at(f"/ops/{op_id}"))  # read-only: not opened through a login link
        wait_until(browser, lambda d: d.find_element(By.ID, "status").text == "running")
        assert not browser.find_element(By.ID, "cancel").is_enabled()
        browser.get(web.login_url())  # what `ktrdr web` prints: a cookie, then the list
        wait_until(browser, lambda d: d.current_url == web.url)
        browser.get(web.at(f"/ops/{op_id}"))
        wait_until(browser, lambda d: d.find_element(By.ID, "status").text == "running")
        button = wait_until(browser, lambda d: (b := d.find_element(By.ID, "cancel")).is_enabled() and b)
        button.click()
        wait_until(browser, lambda d: d.find_element(By.ID, "status").text == "cancelled")
        return browser.find_element(By.ID, "line").text

    line = await asyncio.to_thread(click_cancel)
    view = await wait_terminal(client, op_id)  # the event log, not the page, says how it ended
    assert view.status == "cancelled" and view.where and view.where.startswith("iteration ")
    cancels = [e for e in await client.events(op_id) if isinstance(e, CancelRequested)]
    assert len(cancels) == 1 and cancels[0].requested_by == "web"
    assert line.startswith("Operation cancelled at iteration") or "cancelled" in line


@pytest.mark.slow
async def test_training_page_draws_a_point_per_epoch_as_epochs_finish(start_actors, client, web, browser,
                                                                      bars_in_store, tmp_path):
    from selenium.webdriver.common.by import By

    await start_actors("orchestrator", "trainer", "dummy")
    epochs = 8
    cmd = StartTraining(op_id=subjects.new_op_id("training"), strategy_path=str(STRATEGY),
                        strategy_yaml=STRATEGY.read_text(), epochs=epochs, data_mode="none")
    await client.submit(cmd)
    await wait_for_event(client, cmd.op_id, lambda ev, v: v.status != "unknown")  # its page exists now

    def training_page() -> dict[str, int]:
        # Opened while it runs: the points arrive as epochs finish; the page ends as a finished training's.
        browser.get(web.at(f"/ops/{cmd.op_id}"))
        wait_until(browser, lambda d: d.find_element(By.ID, "line").text.startswith(f"Training completed: {epochs}"),
                   timeout=120)
        wait_until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#loss-chart circle.pt")) == 2 * epochs)
        wait_until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#acc-chart circle.pt")) == 2 * epochs)
        counts = {s: len(browser.find_elements(By.CSS_SELECTOR, f'circle[data-series="{s}"]'))
                  for s in ("train_loss", "val_loss", "train_accuracy", "val_accuracy")}
        counts["visible"] = int(browser.find_element(By.ID, "curves").is_displayed())
        save_screenshot(browser, "training-page.png", tmp_path)
        return counts

    counts = await asyncio.to_thread(training_page)
    assert counts == {"train_loss": epochs, "val_loss": epochs, "train_accuracy": epochs, "val_accuracy": epochs,
                      "visible": 1}
    view = await wait_terminal(client, cmd.op_id)
    assert view.status == "completed", view.error
    stored = [e for e in await client.events(cmd.op_id) if isinstance(e, OperationProgress)
              and isinstance(e.progress.context, TrainingContext) and e.progress.context.batch == 0
              and e.progress.phase == "training" and e.progress.context.metrics]
    # One point per epoch: the holder also reports each stored checkpoint's digest with the epoch's
    # metrics (issue 18, F5), so an epoch may have more than one such event.
    assert sorted({e.progress.context.epoch for e in stored}) == list(range(1, epochs + 1))

    # The list, with a running operation above the finished ones.
    done = await run_dummy(client, 3, 0.01)
    await wait_terminal(client, done)
    running = await run_dummy(client, 60, 0.3)

    def list_page() -> None:
        browser.set_window_size(1280, 420)  # three rows: no empty page below them in the picture
        try:
            browser.get(web.url)
            wait_until(browser, lambda d: (p := row_percentage(running)(d)) is not None and p >= 10)
            save_screenshot(browser, "operations-list.png", tmp_path)
        finally:
            browser.set_window_size(1280, 900)

    await asyncio.to_thread(list_page)
    for name in ("operations-list.png", "training-page.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    await client.cancel(running)
    await wait_terminal(client, running)


async def test_children_are_listed_under_their_parent(settings, browser):
    """Operations whose view names a parent_op_id (parent/child workflows) are drawn under it (views
    served by the real app in this process)."""
    from aiohttp import web as aioweb
    from selenium.webdriver.common.by import By

    from ktrdr.ops import OperationView
    from ktrdr.web.hub import Hub
    from ktrdr.web.server import create_app

    def op(domain: str, stamp: str, parent: str | None = None, status: str = "running") -> OperationView:
        return OperationView(op_id=f"{domain}-20260101T{stamp}-abcdef", domain=domain, op_type=domain,
                            status=status, parent_op_id=parent)

    parent = op("training", "000000000000")
    child_a = op("data", "000001000000", parent.op_id, "completed")
    child_b = op("training", "000002000000", parent.op_id)
    other = op("dummy", "000003000000")
    hub = Hub(settings)
    hub.views = {v.op_id: v for v in (parent, child_a, child_b, other)}
    hub.client = object()  # type: ignore[assignment]  # only checked for "connected"
    runner = aioweb.AppRunner(create_app(hub, allowed_hosts=None), handler_cancellation=True)
    await runner.setup()
    site = aioweb.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/"

    def read_rows() -> list[tuple[str, str]]:
        browser.get(url)
        wait_until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#ops tbody tr")) == 4)
        return [(tr.get_attribute("data-op-id"), tr.get_attribute("class") or "")
                for tr in browser.find_elements(By.CSS_SELECTOR, "#ops tbody tr")]

    try:
        rows = await asyncio.to_thread(read_rows)
    finally:
        hub.close_streams()
        await runner.cleanup()
    assert [r[0] for r in rows] == [other.op_id, parent.op_id, child_a.op_id, child_b.op_id]
    assert [("child" in r[1]) for r in rows] == [False, False, True, True]


def bar_fill(driver: Any) -> float:
    """How full the operation's progress bar is drawn, as the browser lays it out now (0..1)."""
    return driver.execute_script(
        "const f = document.getElementById('bar-fill');"
        "return f.getBoundingClientRect().width / f.parentElement.getBoundingClientRect().width;")


async def test_an_ended_operations_page_draws_its_bar_full_and_offers_no_cancel(start_actors, client, web, browser):
    """Issue 23, item 4: a completed operation's bar was drawn growing from empty (five-sixths full in
    a screenshot beside "100.0%"), and Cancel was offered on operations that had already ended."""
    from selenium.webdriver.common.by import By

    await start_actors("orchestrator", "dummy")
    done = await run_dummy(client, 3, 0.01)
    await wait_terminal(client, done)
    running = await run_dummy(client, 200, 0.3)
    await wait_for_event(client, running, lambda ev, v: v.status == "running")

    def pages() -> dict[str, Any]:
        browser.get(web.login_url())  # logged in: a live operation's page may cancel
        wait_until(browser, lambda d: d.current_url == web.url)
        browser.get(web.at(f"/ops/{done}"))
        wait_until(browser, lambda d: d.find_element(By.ID, "pct").text == "100.0%")
        out: dict[str, Any] = {"fill_at_once": bar_fill(browser),
                               "cancel_shown_ended": browser.find_element(By.ID, "cancel").is_displayed()}
        browser.get(web.at(f"/ops/{running}"))
        wait_until(browser, lambda d: d.find_element(By.ID, "status").text == "running")
        button = wait_until(browser, lambda d: (b := d.find_element(By.ID, "cancel")).is_displayed()
                            and b.is_enabled() and b)
        out["cancel_shown_running"] = True
        button.click()  # it ends while its page is open: the button goes
        wait_until(browser, lambda d: d.find_element(By.ID, "status").text == "cancelled")
        wait_until(browser, lambda d: d.find_element(By.ID, "pct").text != "")
        out["cancel_shown_after"] = browser.find_element(By.ID, "cancel").is_displayed()
        return out

    seen = await asyncio.to_thread(pages)
    assert seen["fill_at_once"] > 0.999, seen  # full as soon as it says 100.0%, not growing towards it
    assert seen == {**seen, "cancel_shown_ended": False, "cancel_shown_running": True, "cancel_shown_after": False}
    await wait_terminal(client, running)


async def test_a_backtest_page_shows_its_figures_and_equity_against_buy_and_hold(start_actors, client, web, browser,
                                                                                 tmp_path):
    from selenium.webdriver.common.by import By

    from events.messages import RunBacktest
    from ktrdr.cli.backtest_commands import figure_rows
    from ktrdr.data.bars_store import BarStore
    from ktrdr.training.model_store import ModelStore
    from tests.backtest.conftest import STRATEGY as SMALL
    from tests.backtest.conftest import model_files
    from tests.training.conftest import make_bars

    bars = make_bars(1200, seed=3)
    await BarStore(client.js).merge("AAPL", "1h", bars, "sim")
    saved = await ModelStore(client.js).save("test_small", ["AAPL"], ["1h"], model_files(SMALL, bars))
    await start_actors("orchestrator", "backtester")
    cmd = RunBacktest(op_id=subjects.new_op_id("backtest"), model=saved["name"])
    await client.submit(cmd)
    view = await wait_terminal(client, cmd.op_id, timeout=60)
    assert view.status == "completed", view.error
    r = view.result

    def page() -> dict[str, Any]:
        browser.get(web.at(f"/ops/{cmd.op_id}"))
        wait_until(browser, lambda d: d.find_element(By.ID, "backtest").is_displayed())
        wait_until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#equity-chart polyline")) == 2)
        rows = [[c.text for c in tr.find_elements(By.CSS_SELECTOR, "th, td")]
                for tr in browser.find_elements(By.CSS_SELECTOR, "#bt-figures tbody tr")]
        lines = {p.get_attribute("data-series"): {k: float(p.get_attribute(f"data-{k}"))
                                                   for k in ("points", "last", "min")}
                 for p in browser.find_elements(By.CSS_SELECTOR, "#backtest polyline")}
        save_screenshot(browser, "backtest-page.png", tmp_path)
        return {"rows": rows, "lines": lines, "what": browser.find_element(By.ID, "bt-what").text}

    seen = await asyncio.to_thread(page)
    assert seen["rows"] == [list(row) for row in figure_rows(r)]  # the figures `ktrdr backtest` prints
    lines, capital = seen["lines"], r["capital"]
    assert set(lines) == {"equity", "buy_hold", "drawdown", "buy_hold_drawdown"}
    assert all(line["points"] == r["bars"] for line in lines.values())  # 1,200 bars: every one drawn
    # the curves end where the total returns say, and bottom out at the max drawdowns
    assert abs(lines["equity"]["last"] - capital * (1 + r["strategy"]["total_return"])) < 0.01
    assert abs(lines["buy_hold"]["last"] - capital * (1 + r["buy_and_hold"]["total_return"])) < 0.01
    assert abs(lines["drawdown"]["min"] - 100 * r["strategy"]["max_drawdown"]) < 1e-3
    assert abs(lines["buy_hold_drawdown"]["min"] - 100 * r["buy_and_hold"]["max_drawdown"]) < 1e-3
    assert f"{saved['name']} on AAPL [1h]" in seen["what"] and "1,200 bars" in seen["what"]


@pytest.mark.slow  # three trainings
async def test_a_sweeps_page_shows_its_leaderboard_sortable_with_the_variants_curves(start_actors, client, web,
                                                                                   browser, http, bars_in_store,
                                                                                   tmp_path):
    from selenium.webdriver.common.by import By

    from events.messages import RunSweep, SweepParam

    await start_actors("orchestrator", "trainer", "trainer")
    cmd = RunSweep(op_id=subjects.new_op_id("training"), strategy_path=str(STRATEGY),
                   strategy_yaml=STRATEGY.read_text(), epochs=3, data_mode="none",
                   params=[SweepParam(path="model.training.learning_rate", values=[0.01, 0.003, 0.001])])
    await client.submit(cmd)
    view = await wait_terminal(client, cmd.op_id, timeout=120)
    assert view.status == "completed", view.error
    board = view.result["leaderboard"]
    async with http.get(web.at(f"/ops/{cmd.op_id}/leaderboard")) as r:
        assert r.status == 200, await r.text()
        served = await r.json()
    assert served["rows"] == board
    for row in board:  # each variant's curve is its training's validation loss per epoch
        history = (await client.view(row["op_id"])).result["training_metrics"]["history"]
        assert served["curves"][str(row["variant"])] == [h["val_loss"] for h in history]
    async with http.get(web.at(f"/ops/{row['op_id']}/leaderboard")) as r:  # a training is no sweep
        assert r.status == 404

    def variants(driver: Any) -> list[str]:
        return [tr.get_attribute("data-variant") for tr in driver.find_elements(By.CSS_SELECTOR, "#lb-table tbody tr")]

    def page() -> dict[str, Any]:
        browser.get(web.at(f"/ops/{cmd.op_id}"))
        wait_until(browser, lambda d: d.find_element(By.ID, "sweep").is_displayed())
        wait_until(browser, lambda d: len(variants(d)) == 3)
        ranked = variants(browser)
        curves = len(browser.find_elements(By.CSS_SELECTOR, "#lb-chart polyline"))
        header = browser.find_element(By.CSS_SELECTOR, '#lb-table th[data-key="val_loss"]')
        header.click()  # ascending
        header = browser.find_element(By.CSS_SELECTOR, '#lb-table th[data-key="val_loss"]')
        header.click()  # then descending
        wait_until(browser, lambda d: variants(d) != ranked or len(set(ranked)) < 2)
        save_screenshot(browser, "sweep-page.png", tmp_path)
        return {"ranked": ranked, "descending": variants(browser), "curves": curves}

    seen = await asyncio.to_thread(page)
    assert seen["ranked"] == [str(r["variant"]) for r in board]  # the sweep's own order: val_loss lowest first
    assert seen["descending"] == [str(r["variant"]) for r in sorted(board, key=lambda r: -r["val_loss"])]
    assert seen["curves"] == 3


async def test_the_list_filters_pages_back_and_an_operation_downloads_its_events(start_actors, client, web,
                                                                                 browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from tests.web.test_search import made_operations

    ops = await made_operations(start_actors, client)

    def shown(d: Any) -> list[str]:
        # read in one script: the list is redrawn on every push, so rows found a moment before their
        # attributes are read can be gone (a stale element; seen once in a CI rehearsal)
        return d.execute_script(
            "return Array.from(document.querySelectorAll('#ops tbody tr'), tr => tr.dataset.opId)")

    def submit(d: Any, **fields: str) -> None:
        form = d.find_element(By.ID, "filters")
        for name, value in fields.items():
            box = form.find_element(By.NAME, name)
            if box.tag_name == "select":
                Select(box).select_by_value(value)
            else:
                box.clear()
                box.send_keys(value)
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

    def page() -> dict[str, Any]:
        out: dict[str, Any] = {}
        browser.get(web.at("/?limit=2"))  # two rows a page, so that three pages hold the five
        wait_until(browser, lambda d: len(shown(d)) == 5)  # the live list first
        submit(browser, text="msft")  # through the search words the index files (ktrdr.ops.search)
        wait_until(browser, lambda d: shown(d) == [ops["load"]])
        submit(browser, text="msft*")  # a character no searched field has: the server's one line
        wait_until(browser, lambda d: "letters, digits" in d.find_element(By.ID, "filter-note").text)
        submit(browser, text="", status="completed")
        wait_until(browser, lambda d: sorted(shown(d)) == sorted([ops["done1"], ops["done2"]]))
        save_screenshot(browser, "list-filtered.png", tmp_path)
        submit(browser, status="failed")
        wait_until(browser, lambda d: shown(d) == [] and d.find_element(By.ID, "nomatch").is_displayed())
        browser.find_element(By.ID, "clear").click()  # no filters: the newest page from the index
        wait_until(browser, lambda d: sorted(shown(d)) == sorted([ops["load"], ops["train"]]))
        pages = [sorted(shown(browser))]
        while browser.find_element(By.ID, "older").is_displayed():
            count = len(shown(browser))
            browser.find_element(By.ID, "older").click()
            wait_until(browser, lambda d, n=count: len(shown(d)) > n
                       or not d.find_element(By.ID, "older").is_displayed())
            pages.append(sorted(shown(browser)))
        out["pages"] = pages
        browser.get(web.at(f"/ops/{ops['done1']}"))
        link = wait_until(browser, lambda d: (a := d.find_element(By.ID, "download")).get_attribute("href")
                          .endswith("/events.json") and a)
        out["download"] = link.get_attribute("href")
        return out

    seen = await asyncio.to_thread(page)
    everything = sorted(ops.values())
    assert seen["pages"][-1] == everything  # "Older" reached the oldest, and then was gone
    assert seen["pages"][:2] == [sorted([ops["load"], ops["train"]]),
                                 sorted([ops["waiting"], ops["load"], ops["train"], ops["done2"]])]
    assert seen["download"] == web.at(f"/ops/{ops['done1']}/events.json")


async def test_a_workflows_page_draws_its_children_as_a_timeline_coloured_by_outcome(data_stack, client, web,
                                                                                    browser, tmp_path):
    from selenium.webdriver.common.by import By

    from events.messages import LoadData
    from tests.conftest import utc

    # A universe of two, one at a time: AAPL loads, then NOSUCH fails (an unknown symbol); the
    # parent completes, naming the failed one.
    cmd = LoadData(op_id=subjects.new_op_id("data"), symbol="AAPL", symbols=["AAPL", "NOSUCH"], timeframe="1h",
                   mode="full", start=utc(2023, 1, 2), end=utc(2023, 1, 9), max_parallel=1)
    await client.submit(cmd)
    view = await wait_terminal(client, cmd.op_id, timeout=120)
    assert view.status == "completed", view.error
    kids = {k: await client.view(k) for k in view.children}

    def timeline() -> dict[str, Any]:
        browser.get(web.at(f"/ops/{cmd.op_id}"))
        wait_until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#tl-chart g.tl-row")) == 2)
        bars = {}
        for g in browser.find_elements(By.CSS_SELECTOR, "#tl-chart g.tl-row"):
            rect = g.find_element(By.CSS_SELECTOR, "rect.tl-bar")
            bars[g.get_attribute("data-op-id")] = {
                "status": g.get_attribute("data-status"), "class": rect.get_attribute("class"),
                "x": float(rect.get_attribute("x")), "width": float(rect.get_attribute("width")),
                "fill": rect.value_of_css_property("fill")}
        save_screenshot(browser, "workflow-timeline.png", tmp_path)
        return bars

    bars = await asyncio.to_thread(timeline)
    assert {k: b["status"] for k, b in bars.items()} == {k: v.status for k, v in kids.items()}
    assert sorted(b["status"] for b in bars.values()) == ["completed", "failed"]
    done = next(b for b in bars.values() if b["status"] == "completed")
    failed = next(b for b in bars.values() if b["status"] == "failed")
    assert "completed" in done["class"] and "failed" in failed["class"] and done["fill"] != failed["fill"]
    # One at a time: the failed one starts where the loaded one ended, or after it.
    first, second = sorted(kids.values(), key=lambda v: v.started_at or v.created_at)
    assert first.finished_at <= (second.started_at or second.created_at)
    assert bars[second.op_id]["x"] >= bars[first.op_id]["x"] + bars[first.op_id]["width"] - 1.0


async def test_two_trainings_curves_are_overlaid_for_comparison(start_actors, client, web, browser, bars_in_store,
                                                               tmp_path):
    from selenium.webdriver.common.by import By

    await start_actors("orchestrator", "trainer")
    runs = {}
    for epochs, rate in ((3, "0.001"), (5, "0.005")):  # two learning rates: two different curves
        text = STRATEGY.read_text()
        assert "learning_rate: 0.001" in text
        cmd = StartTraining(op_id=subjects.new_op_id("training"), strategy_path=str(STRATEGY),
                            strategy_yaml=text.replace("learning_rate: 0.001", f"learning_rate: {rate}"),
                            epochs=epochs, data_mode="none")
        await client.submit(cmd)
        view = await wait_terminal(client, cmd.op_id, timeout=180)
        assert view.status == "completed", view.error
        runs[cmd.op_id] = epochs

    def compare() -> dict[str, Any]:
        out: dict[str, Any] = {}
        browser.get(web.url)
        for op_id in runs:  # tick both on the list, then follow the link it offers
            pick = f'input.pick[data-op-id="{op_id}"]'
            # (a redraw between finding and clicking makes the box stale: find it again until ticked)
            wait_until(browser, lambda d, p=pick: (b := d.find_element(By.CSS_SELECTOR, p)).is_selected()
                       or (b.click() and False))
        link = wait_until(browser, lambda d: (a := d.find_element(By.ID, "compare-link")).is_displayed() and a)
        link.click()
        wait_until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#val-loss-chart polyline")) == 2)
        polylines = browser.find_elements(By.CSS_SELECTOR, "#val-loss-chart polyline")
        out["lines"] = {p.get_attribute("data-op-id"): len(p.get_attribute("points").split()) for p in polylines}
        out["first_points"] = {p.get_attribute("points").split()[0] for p in polylines}
        out["colours"] = {p.get_attribute("stroke") for p in browser.find_elements(By.CSS_SELECTOR,
                                                                                      "#val-loss-chart polyline")}
        out["rows"] = [tr.get_attribute("data-op-id")
                       for tr in browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr")]
        out["acc_lines"] = len(browser.find_elements(By.CSS_SELECTOR, "#val-acc-chart polyline"))
        save_screenshot(browser, "compare-trainings.png", tmp_path)
        return out

    seen = await asyncio.to_thread(compare)
    assert seen["lines"] == runs  # one line per training, a point per epoch it ran
    assert len(seen["colours"]) == 2 and seen["acc_lines"] == 2
    assert len(seen["first_points"]) == 2  # the two runs' first epochs differ: both lines are seen
    assert sorted(seen["rows"]) == sorted(runs)
