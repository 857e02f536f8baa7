"""The webhook app mounted in a host's Starlette application (FastAPI mounts the same way), as
the README shows: the callback and the app's own paths answer below the mount point, and the
host's routes stay the host's. The served app, over a real socket, is in `test_http.py`."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from tests.factories import initiate, new_call_id
from tracker import Tracker
from tracker.asgi import create_app


async def _home(_request: Request) -> PlainTextResponse:
    return PlainTextResponse("the host's own page")


class Client:
    """Requests to the host app in-process, each in an event loop of its own."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def request(self, method: str, path: str, **options: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://host") as client:
                return await client.request(method, path, **options)

        return asyncio.run(send())

    def get(self, path: str) -> httpx.Response:
        return self.request("GET", path)

    def post(self, path: str, **options: Any) -> httpx.Response:
        return self.request("POST", path, **options)


@pytest.fixture
def client(sqlite_tracker: Tracker) -> Client:
    return Client(
        Starlette(
            routes=[
                Route("/", _home),
                Mount("/bandwidth", app=create_app(sqlite_tracker, credentials={"bw": "s3cret"})),
            ]
        )
    )


def test_a_callback_below_the_mount_point_is_applied(
    client: Client, sqlite_tracker: Tracker
) -> None:
    call_id = new_call_id()
    response = client.post(
        "/bandwidth/voice/callbacks", content=json.dumps(initiate(call_id)), auth=("bw", "s3cret")
    )
    assert response.status_code == 204
    assert response.headers["x-tracker-outcome"] == "applied"
    call = sqlite_tracker.get_call(call_id)
    assert call is not None and call.state == "initiated"


def test_the_apps_own_paths_answer_below_the_mount_point(client: Client) -> None:
    assert client.get("/bandwidth/healthz").text == "ok\n"
    assert "tracker_deliveries_total" in client.get("/bandwidth/metrics").text
    assert client.get("/bandwidth/voice/callbacks").status_code == 405


def test_the_hosts_routes_stay_the_hosts(client: Client) -> None:
    assert client.get("/").text == "the host's own page"


def test_the_mounted_app_keeps_its_credentials(client: Client, sqlite_tracker: Tracker) -> None:
    response = client.post("/bandwidth/x", content=json.dumps(initiate(new_call_id())))
    assert response.status_code == 401
    assert sqlite_tracker.events() == []


def test_after_the_lifespan_shutdown_a_callback_is_503_not_left_waiting(
    sqlite_tracker: Tracker,
) -> None:
    """The shutdown stops the writing thread; a request that still arrives must hear so."""
    app = create_app(sqlite_tracker)
    sent: list[str] = []

    async def lifespan() -> None:
        messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

        async def receive() -> dict[str, str]:
            return next(messages)

        async def send(message: Any) -> None:
            sent.append(message["type"])

        await app({"type": "lifespan"}, receive, send)

    asyncio.run(lifespan())
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    response = Client(app).post("/callbacks", content=json.dumps(initiate(new_call_id())))
    assert response.status_code == 503
    assert "shutting down" in response.text
    assert sqlite_tracker.events() == []
