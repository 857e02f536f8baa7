"""The pages in a real headless browser (Debian's Chromium, driven by playwright), served by a
real `tracker serve --ui`: the live list follows the calls without a reload, a transfer's page
shows its legs and deliveries, a tag full of HTML stays text, and no page errs or reaches past
127.0.0.1. With TRACKER_UI_SCREENSHOTS=1 the run also writes the screenshots of docs/ui.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.browser_support import (
    CALLBACK_USER,
    CHROMIUM,
    SCREENSHOTS,
    UI_USER,
    UiServer,
    Watched,
    running_ui,
    watch,
)
from tracker.testing import conversation, disconnect_between, encode, initiate

playwright_api = pytest.importorskip("playwright.sync_api")
DOCS = Path(__file__).resolve().parent.parent / "docs"
HOSTILE_TAG = '<img src=x onerror="alert(1)"><script>alert(2)</script>&amp; "quoted"'
HOSTILE_FROM = "<b>+15550001111</b><script>alert(3)</script>"
WAIT_MS = 10_000
# A browser is slow to start and drive: the pages read through the same reads on every backend
# (tests/test_ui_api.py proves those on each), so the browser runs on SQLite, and the live
# page, which polls while another process writes, on PostgreSQL too.
SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"])


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium for the module's tests, each in a context of its own."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        launched.close()


@pytest.fixture
def ui(database_url: str, tmp_path: Path) -> Iterator[UiServer]:
    yield from running_ui(database_url, tmp_path / "server")


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    """A browser context with the pages' credentials and a wide viewport."""
    opened = browser.new_context(
        http_credentials={"username": UI_USER[0], "password": UI_USER[1]},
        viewport={"width": 1440, "height": 900},
    )
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def watched(context: Any) -> Iterator[Watched]:
    """A page whose every request, console error, exception and dialog is recorded; at the end
    of the test, none of them may have gone wrong."""
    page = watch(context)
    yield page
    page.assert_clean()


def row(call_id: str) -> str:
    return f'tr[data-call-id="{call_id}"]'


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_new_call_appears_on_the_live_page_and_leaves_it_when_it_ends(
    ui: UiServer, watched: Watched
) -> None:
    """The live page shows a call posted after it loaded, and drops it once its disconnect is
    posted, without a reload (the page's own marker survives)."""
    page = watched.page
    response = page.goto(ui.url("/ui/"))
    assert response is not None and response.status == 200
    page.evaluate("window.loadedOnce = true")
    start = datetime.now(UTC) - timedelta(seconds=5)
    call_id = "c-live-0001"
    caller = {"from": "+15550009999", "direction": "inbound"}
    ui.post(encode(initiate(call_id, start=start, **caller)))
    page.wait_for_selector(row(call_id), timeout=WAIT_MS)
    cells = page.locator(row(call_id) + " td").all_inner_texts()
    assert cells[:6] == [
        call_id,
        "55555555",
        "inbound",
        "+15550009999",
        "+15553334444",
        "initiated",
    ]
    assert page.locator("#live-count").inner_text() == "1"
    end = start + timedelta(seconds=3)
    ended = ui.post(encode(disconnect_between(start, end, call_id, cause="cancel", **caller)))
    assert ended.headers["x-tracker-outcome"] == "applied"
    page.wait_for_selector(row(call_id), state="detached", timeout=WAIT_MS)
    assert page.locator("#live-count").inner_text() == "0"
    assert page.locator("#live-empty").is_visible()
    assert page.evaluate("window.loadedOnce") is True


@SQLITE_ONLY
def test_a_transfer_shows_both_legs_and_one_entry_per_delivery(
    ui: UiServer, watched: Watched
) -> None:
    """A transfer's page lists the call and both its legs, each a link to its own page, and
    every callback received for them, its body as posted."""
    talk = conversation(legs=2)
    for body in talk.encoded():
        ui.post(body)
    page = watched.page
    page.goto(ui.url(f"/ui/calls/{talk.call_id}"))
    tree = page.locator("#tree li")
    assert tree.count() == 3
    assert [tree.nth(i).get_attribute("data-call-id") for i in range(3)] == [
        talk.call_id,
        *talk.leg_ids,
    ]
    assert page.locator("#deliveries > li").count() == len(talk.bodies)
    page.locator("#deliveries > li details").first.locator("summary").click()
    assert '"eventType": "initiate"' in page.locator("#deliveries pre.body").first.inner_text()
    assert page.locator("#timeline li").count() == len(
        ui.get(f"/api/calls/{talk.call_id}").json()["call"]["history"]
    )
    page.locator(f'#tree li[data-call-id="{talk.leg_ids[0]}"] a.call-id').click()
    page.wait_for_url(f"**/ui/calls/{talk.leg_ids[0]}")
    assert page.locator("#call-id").inner_text() == talk.leg_ids[0]
    assert page.locator("#tree li.current").get_attribute("data-call-id") == talk.leg_ids[0]


@SQLITE_ONLY
def test_html_in_a_tag_and_in_numbers_is_shown_as_text(ui: UiServer, watched: Watched) -> None:
    """A body whose tag and calling number hold HTML and scripts is shown as that very text on
    every page: no element is injected and no script runs (no dialog opens)."""
    start = datetime.now(UTC) - timedelta(seconds=20)
    call_id = "c-hostile-0001"
    ui.post(encode(initiate(call_id, start=start, tag=HOSTILE_TAG, **{"from": HOSTILE_FROM})))
    page = watched.page
    page.goto(ui.url("/ui/"))
    page.wait_for_selector(row(call_id))
    page.wait_for_timeout(1500)  # one refresh by the script, which builds the rows itself
    assert page.locator(row(call_id) + " td").nth(3).inner_text() == HOSTILE_FROM
    page.goto(ui.url(f"/ui/calls/{call_id}"))
    assert page.locator("#fact-tag").inner_text() == HOSTILE_TAG
    assert page.locator("#fact-from").inner_text() == HOSTILE_FROM
    page.locator("#deliveries details summary").first.click()
    assert HOSTILE_FROM.replace('"', '\\"') in page.locator("#deliveries pre.body").inner_text()
    page.goto(ui.url("/ui/calls"))
    assert page.locator(row(call_id) + " td").nth(4).inner_text() == HOSTILE_FROM
    for path in ("/ui/", f"/ui/calls/{call_id}", "/ui/calls"):
        page.goto(ui.url(path))
        assert page.locator("img[src='x'], main script, main b").count() == 0, path


@SQLITE_ONLY
def test_pages_refuse_a_browser_without_their_credentials(browser: Any, ui: UiServer) -> None:
    """A browser with no credentials, or with the callback ones, is answered 401 and shown no
    page (headless Chromium shows the 401's text, or gives the navigation up as
    ERR_INVALID_AUTH_CREDENTIALS once it has offered credentials that were refused)."""
    for credentials in (None, {"username": CALLBACK_USER[0], "password": CALLBACK_USER[1]}):
        context = browser.new_context(http_credentials=credentials)
        try:
            page = context.new_page()
            statuses: list[int] = []
            page.on("response", lambda response, seen=statuses: seen.append(response.status))
            for path in ("/ui/", "/ui/stats", "/api/calls"):
                statuses.clear()
                given_up = ""
                try:
                    page.goto(ui.url(path))
                except playwright_api.Error as error:
                    given_up = str(error)
                if given_up:
                    assert "ERR_INVALID_AUTH_CREDENTIALS" in given_up
                else:
                    assert "the pages need their own credentials" in page.content()
                assert statuses and set(statuses) == {401}, (path, credentials, statuses)
        finally:
            context.close()


@SQLITE_ONLY
def test_every_page_renders_and_the_search_finds_a_call(ui: UiServer, watched: Watched) -> None:
    """The four pages render with the day's calls (the stats with their plot), the search
    finds a call by id and by number; with TRACKER_UI_SCREENSHOTS=1 each page is saved for
    the docs."""
    now = datetime.now(UTC).replace(microsecond=0)
    talks = [
        conversation(start=now - timedelta(minutes=37 * index), caller=f"+1919555{index:04d}")
        for index in range(1, 18)
    ]
    talks += [
        conversation("outbound", answered=index % 3 != 0, start=now - timedelta(minutes=53 * index))
        for index in range(1, 12)
    ]
    transfer = conversation(legs=2, start=now - timedelta(minutes=20), caller="+19195550042")
    live = [
        conversation(start=now - timedelta(seconds=12), ended=False, caller="+19195550101"),
        conversation("outbound", start=now - timedelta(minutes=4), ended=False),
        conversation(legs=1, start=now - timedelta(minutes=2), ended=False),
    ]
    for talk in (*talks, transfer, *live):
        for body in talk.encoded():
            ui.post(body)
    page = watched.page

    page.goto(ui.url("/ui/"))
    assert page.locator("#live tbody tr").count() == 4  # the transfer's bridged leg too
    page.wait_for_timeout(1200)
    shoot(page, "ui-live.png")

    page.goto(ui.url(f"/ui/calls/{transfer.call_id}"))
    page.locator("#deliveries details summary").nth(1).click()
    shoot(page, "ui-call.png")

    page.goto(ui.url("/ui/calls?window=24h&limit=20"))
    assert page.locator("#calls tbody tr").count() == 20
    assert page.locator("#next-page").is_visible()
    shoot(page, "ui-calls.png")
    page.locator("#next-page").click()
    assert page.locator("#calls tbody tr").count() > 0

    page.goto(ui.url("/ui/stats"))
    plot = page.locator("#plot")
    plot.wait_for()
    assert page.evaluate("document.getElementById('plot').naturalWidth") == 1000
    attempts = ui.get("/api/stats").json()["total"]["attempts"]
    assert page.locator("#summary td").first.inner_text() == str(attempts) != "0"
    shoot(page, "ui-stats.png")

    page.fill("header input[name=q]", transfer.call_id)
    page.press("header input[name=q]", "Enter")
    page.wait_for_url(f"**/ui/calls/{transfer.call_id}")
    page.fill("header input[name=q]", "+19195550042")
    page.press("header input[name=q]", "Enter")
    page.wait_for_url("**/ui/calls?q=*")
    found = page.locator("#calls tbody tr")
    assert [found.nth(i).get_attribute("data-call-id") for i in range(found.count())] == [
        transfer.call_id
    ]


def shoot(page: Any, name: str) -> None:
    if SCREENSHOTS:
        page.screenshot(path=str(DOCS / name), full_page=True)
