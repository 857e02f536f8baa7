"""The pages' JSON and their guard, served by a real `tracker serve --ui` on every backend:
`/api/calls` filters and pages newest first, `/api/calls/{id}` gives a call's tree, history
and deliveries, `/api/stats` the last day; without the pages' own credentials, nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from tests.browser_support import CALLBACK_USER, UI_USER, UiServer, running_ui
from tests.http_server import migrate
from tests.http_support import CREDENTIALS
from tracker.testing import conversation, encode, initiate

GUARDED = (
    "/ui/",
    "/ui/calls",
    "/ui/calls/c-anything",
    "/ui/stats",
    "/ui/stats.png",
    "/ui/static/ui.js",
    "/api/live",
    "/api/calls",
    "/api/calls/c-anything",
    "/api/stats",
)


@pytest.fixture
def ui(database_url: str, tmp_path: Path) -> Iterator[UiServer]:
    yield from running_ui(database_url, tmp_path / "server")


def post_all(server: UiServer, bodies: list[bytes]) -> None:
    for body in bodies:
        server.post(body)


def test_pages_and_api_refuse_no_credentials_and_the_callback_ones(ui: UiServer) -> None:
    """Every page, file and JSON path answers 401 without credentials, with wrong ones and
    with the callback credentials, and serves with the pages' own."""
    for path in GUARDED:
        for auth in (None, CALLBACK_USER, (UI_USER[0], "wrong")):
            response = ui.get(path, auth=auth)
            assert response.status_code == 401, (path, auth)
            assert response.headers["www-authenticate"].startswith("Basic realm=")
            assert response.headers["x-content-type-options"] == "nosniff"
        response = ui.get(path)
        assert response.status_code in (200, 404), (path, response.status_code)
        assert "default-src 'self'" in response.headers["content-security-policy"]
        assert response.headers["x-content-type-options"] == "nosniff"


def test_pages_are_read_only_and_callbacks_still_need_their_own_credentials(ui: UiServer) -> None:
    """A POST below /ui is no callback (405 with the pages' credentials, 401 with the callback
    ones), and the pages' credentials post no callback."""
    body = encode(initiate("c-read-only"))
    assert httpx.post(ui.url("/ui/calls"), content=body, auth=UI_USER).status_code == 405
    assert httpx.post(ui.url("/api/calls"), content=body, auth=CALLBACK_USER).status_code == 401
    assert (
        httpx.post(ui.url("/bandwidth/voice/status"), content=body, auth=UI_USER).status_code == 401
    )
    assert ui.get("/api/calls/c-read-only").status_code == 404


def test_a_call_gives_its_facts_its_legs_its_history_and_every_delivery(ui: UiServer) -> None:
    """`/api/calls/{id}` of a transfer: the tree with both legs, the call's moves, and one
    delivery per callback posted for the call and its legs, each body as posted."""
    talk = conversation(legs=2)
    post_all(ui, talk.encoded())
    for call_id in (talk.call_id, talk.leg_ids[1]):
        document = ui.get(f"/api/calls/{call_id}").json()
        assert document["call"]["call_id"] == call_id
        tree = document["tree"]
        assert tree["call_id"] == talk.call_id
        assert [leg["call_id"] for leg in tree["legs"]] == list(talk.leg_ids)
        assert [leg["legs"] for leg in tree["legs"]] == [[], []]
        deliveries = document["deliveries"]
        assert len(deliveries) == len(talk.bodies)
        assert [json.loads(delivery["body"]) for delivery in deliveries] == list(talk.bodies)
        assert {delivery["outcome"] for delivery in deliveries} == {"applied"}
        assert [d["id"] for d in deliveries] == sorted(d["id"] for d in deliveries)
    call = ui.get(f"/api/calls/{talk.call_id}").json()["call"]
    assert call["state"] == "disconnected" and call["disposition"] == "completed"
    assert call["legs"] == list(talk.leg_ids)
    assert [(step["source"], step["target"]) for step in call["history"]][-1][1] == "disconnected"
    assert call["start_time"] == talk.start_time.isoformat()
    assert len(call["transfers"]) == 1


def test_recent_calls_are_filtered_and_paged_newest_first(ui: UiServer) -> None:
    """`/api/calls` lists newest first, a page at a time by its `next` cursor, never a call
    twice; state, disposition, account, number and window each narrow the list."""
    now = datetime.now(UTC).replace(microsecond=0)
    ended = [
        conversation(start=now - timedelta(minutes=10 * (index + 1)), caller=f"+1555000{index:04d}")
        for index in range(5)
    ]
    old = conversation(start=now - timedelta(days=3), account="77777777", answered=False)
    ringing = conversation(start=now - timedelta(minutes=1), ended=False)
    for talk in (*ended, old, ringing):
        post_all(ui, talk.encoded())
    newest_first = [ringing.call_id] + [talk.call_id for talk in ended] + [old.call_id]

    listed: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = "/api/calls?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = ui.get(query).json()
        listed += [call["call_id"] for call in page["calls"]]
        pages += 1
        cursor = page["next"]
        if cursor is None:
            break
    assert listed == newest_first
    assert pages == 4

    def ids(query: str) -> list[str]:
        response = ui.get("/api/calls?" + query)
        assert response.status_code == 200, response.text
        return [call["call_id"] for call in response.json()["calls"]]

    assert ids("state=live") == [ringing.call_id]
    assert ids("state=initiated,disconnected&window=1h") == newest_first[:-1]
    assert ids("disposition=cancelled") == [old.call_id]
    assert ids("account=77777777") == [old.call_id]
    assert ids(urlencode({"number": ended[3].bodies[0]["from"]})) == [ended[3].call_id]
    assert ids("window=24h") == newest_first[:-1]
    assert ids(urlencode({"since": (now - timedelta(minutes=15)).isoformat()})) == [
        ringing.call_id,
        ended[0].call_id,
    ]


BAD_FILTERS = (
    "state=ringing",
    "disposition=maybe",
    "window=2h",
    "limit=0",
    "limit=501",
    "since=yesterday",
    "since=2026-01-01T00:00:00",
    "cursor=not-a-cursor",
    "window=1h&since=2026-01-01T00:00:00Z",
)


def test_bad_filters_are_refused_with_the_reason(ui: UiServer) -> None:
    """A filter that is not one answers 400 with the reason (JSON for the API, on the page
    for the list), never 500."""
    for query in BAD_FILTERS:
        response = ui.get("/api/calls?" + query)
        assert response.status_code == 400, query
        assert response.json()["error"], query
        page = ui.get("/ui/calls?" + query)
        assert page.status_code == 400, query
        assert 'role="alert"' in page.text, query


def test_live_and_stats_count_the_calls_of_now_and_the_last_day(ui: UiServer) -> None:
    """`/api/live` lists the calls ringing or talking; `/api/stats` counts the last 24 hours'
    attempts, whole and by hour."""
    now = datetime.now(UTC).replace(microsecond=0)
    ringing = conversation(start=now - timedelta(seconds=30), ended=False)
    talking = conversation("outbound", start=now - timedelta(minutes=2), ended=False)
    done = conversation(start=now - timedelta(hours=2))
    yesterday = conversation(start=now - timedelta(hours=30))
    for talk in (ringing, talking, done, yesterday):
        post_all(ui, talk.encoded())
    live = ui.get("/api/live").json()
    assert live["count"] == 2
    assert {call["call_id"]: call["state"] for call in live["calls"]} == {
        ringing.call_id: "initiated",
        talking.call_id: "answered",
    }
    stats = ui.get("/api/stats").json()
    assert stats["total"]["attempts"] == 3
    assert stats["total"]["answered"] == 2
    assert sum(hour["attempts"] for hour in stats["hours"]) == 3
    assert datetime.fromisoformat(stats["until"]) - datetime.fromisoformat(
        stats["since"]
    ) == timedelta(hours=24)


def test_serve_ui_refuses_to_start_without_credentials_of_its_own(
    database_url: str, tmp_path: Path
) -> None:
    """`serve --ui` exits 2 with the reason when $TRACKER_UI_CREDENTIALS is unset, or holds
    the callback credentials."""
    migrate(database_url)
    for ui_credentials, said in (
        (None, "--ui needs $TRACKER_UI_CREDENTIALS"),
        (CREDENTIALS, "holds callback credentials"),
        (f"someone:else,{CALLBACK_USER[0]}:{CALLBACK_USER[1]}", "holds callback credentials"),
    ):
        server = UiServer(database_url, tmp_path / "refused", ui_credentials=ui_credentials)
        server.launch()
        assert server.wait() == 2
        assert said in server.stderr
        assert "serving on" not in server.stderr
