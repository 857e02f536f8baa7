"""The webhook app mounted in a host's Starlette application (FastAPI mounts the same way), as
docs/endpoint.md shows: the callback and the app's own paths answer below the mount point, and
the host's routes stay the host's. The served app, over a real socket, is in the
`test_http_*.py` files."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from tracker import Tracker
from tracker.asgi import create_app
from tracker.testing import initiate, new_call_id


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


def test_two_passwords_of_one_user_are_both_accepted(sqlite_tracker: Tracker) -> None:
    """Credentials as (user, password) pairs: one user's old and new password hold at once."""
    client = Client(create_app(sqlite_tracker, credentials=[("bw", "old"), ("bw", "new")]))
    for password in ("old", "new"):
        body = json.dumps(initiate(new_call_id()))
        response = client.post("/callbacks", content=body, auth=("bw", password))
        assert response.headers["x-tracker-outcome"] == "applied"
    refused = client.post("/callbacks", content=b"{}", auth=("bw", "older"))
    assert refused.status_code == 401
    assert len(sqlite_tracker.events()) == 2


def test_the_endpoint_takes_the_trackers_own_body_limit(tmp_path: Path) -> None:
    """A body the tracker would log as too large is answered 413 by the endpoint, and one the
    endpoint reads whole is one the tracker parses: one limit, the tracker's."""
    with Tracker(f"sqlite:///{tmp_path / 'small.db'}", max_body_bytes=2000) as tracker:
        tracker.upgrade()
        client = Client(create_app(tracker))
        unpadded = json.dumps({**initiate(new_call_id()), "pad": ""}).encode()
        at_limit = unpadded.replace(
            b'"pad": ""', b'"pad": "' + b"x" * (2000 - len(unpadded)) + b'"'
        )
        assert len(at_limit) == 2000
        response = client.post("/callbacks", content=at_limit)
        assert response.headers["x-tracker-outcome"] == "applied"
        over = at_limit + b" "
        assert client.post("/callbacks", content=over).status_code == 413
        assert tracker.apply(over).reason == "too_large"
        with pytest.raises(ValueError, match="over the tracker's own limit of 2000"):
            create_app(tracker, max_body_bytes=2001)
        assert create_app(tracker, max_body_bytes=1000) is not None  # a lower one may be chosen
