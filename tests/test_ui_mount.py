"""The pages mounted in a host's application, in-process: `create_ui_app` on a path of the
host's own (its links follow the mount point), `create_app(ui_credentials=...)` beside the
callback path, and the credentials either refuses."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from tracker import Tracker
from tracker.asgi import create_app
from tracker.testing import conversation
from tracker.ui import create_ui_app

CALLBACKS = [("bandwidth", "callback-secret")]
PAGES = [("alice", "page-secret")]


def request(app: Any, method: str, path: str, **options: Any) -> httpx.Response:
    """One request to `app` in-process, in an event loop of its own (the app must not care)."""

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://host") as client:
            return await client.request(method, path, **options)

    return asyncio.run(send())


def test_pages_mounted_on_a_host_path_link_below_it(tracker: Tracker) -> None:
    """Mounted at /ops, the pages answer there, their links and script stay below /ops, and
    the JSON holds the calls applied; the callback credentials are refused."""
    talk = conversation(legs=1)
    tracker.apply_many(talk.encoded())
    host = Starlette(
        routes=[
            Mount("/bandwidth", create_app(tracker, credentials=CALLBACKS)),
            Mount("/ops", create_ui_app(tracker, PAGES, callback_credentials=CALLBACKS)),
        ]
    )
    page = request(host, "GET", "/ops/ui/", auth=PAGES[0])
    assert page.status_code == 200
    assert 'href="/ops/ui/calls"' in page.text
    assert 'src="/ops/ui/static/ui.js"' in page.text
    assert 'data-source="/ops/api/live"' in page.text
    script = request(host, "GET", "/ops/ui/static/ui.js", auth=PAGES[0])
    assert script.status_code == 200 and "textContent" in script.text
    listed = request(host, "GET", "/ops/api/calls", auth=PAGES[0]).json()
    assert {call["call_id"] for call in listed["calls"]} == {talk.call_id, *talk.leg_ids}
    one = request(host, "GET", f"/ops/ui/calls/{talk.leg_ids[0]}", auth=PAGES[0])
    assert one.status_code == 200 and f'href="/ops/ui/calls/{talk.call_id}"' in one.text
    for auth in (None, CALLBACKS[0]):
        assert request(host, "GET", "/ops/api/calls", auth=auth).status_code == 401
        assert request(host, "GET", "/ops/ui/", auth=auth).status_code == 401


def test_create_app_serves_the_pages_beside_the_callbacks(tracker: Tracker) -> None:
    """With `ui_credentials`, /ui and /api are the pages' (read-only), every other path
    still takes callbacks with the callback credentials."""
    app = create_app(tracker, credentials=CALLBACKS, ui_credentials=PAGES)
    talk = conversation()
    for body in talk.encoded():
        answer = request(app, "POST", "/voice/status", content=body, auth=CALLBACKS[0])
        assert answer.status_code == 204
    found = request(app, "GET", f"/api/calls/{talk.call_id}", auth=PAGES[0])
    assert found.status_code == 200
    assert len(found.json()["deliveries"]) == len(talk.bodies)
    assert request(app, "POST", "/ui/calls", content=b"{}", auth=PAGES[0]).status_code == 405
    assert request(app, "POST", "/api/calls", content=b"{}", auth=CALLBACKS[0]).status_code == 401
    assert request(app, "GET", "/ui", auth=PAGES[0]).status_code == 308
    assert request(app, "GET", "/healthz").status_code == 200


def test_the_pages_refuse_no_credentials_and_the_callback_ones(tracker: Tracker) -> None:
    """The pages never serve without credentials, nor with a pair the callbacks take."""
    with pytest.raises(ValueError, match="credentials of their own"):
        create_ui_app(tracker, [])
    with pytest.raises(ValueError, match="must differ from the callback credentials"):
        create_ui_app(tracker, [*PAGES, *CALLBACKS], callback_credentials=CALLBACKS)
    with pytest.raises(ValueError, match="must differ from the callback credentials"):
        create_app(tracker, credentials=CALLBACKS, ui_credentials=CALLBACKS)
    with pytest.raises(ValueError, match="credentials of their own"):
        create_app(tracker, credentials=CALLBACKS, ui_credentials=[])


def test_without_matplotlib_the_stats_page_says_how_to_get_the_plot(
    tracker: Tracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the plot extra the stats page still shows the figures and names the extra, and
    the image answers 501 with the command that installs it."""
    import tracker.ui._app as pages

    monkeypatch.setattr(pages, "_can_plot", lambda: False)
    tracker.apply_many(conversation(start=datetime.now(UTC) - timedelta(hours=1)).encoded())
    app = create_ui_app(tracker, PAGES)
    page = request(app, "GET", "/ui/stats", auth=PAGES[0])
    assert page.status_code == 200
    assert 'id="no-plot"' in page.text and "pip install 'tracker[plot]'" in page.text
    assert 'id="plot"' not in page.text
    assert "<tr><th>attempts</th><td>1</td></tr>" in page.text
    image = request(app, "GET", "/ui/stats.png", auth=PAGES[0])
    assert image.status_code == 501
    assert "pip install 'tracker[plot]'" in image.text
