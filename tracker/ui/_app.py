"""The pages' ASGI application: routes, the shared reads that bound their cost, the guard."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Generic, TypeVar
from urllib.parse import quote, urlencode

from tracker._http import App, BasicCredentials, Credentials, Receive, Scope, Send
from tracker.errors import SchemaError, StorageError
from tracker.lifecycle import ALL_DISPOSITIONS, LIVE_STATES, STATES
from tracker.tracker import Tracker
from tracker.ui import _reads

try:
    import jinja2
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import (
        HTMLResponse,
        JSONResponse,
        PlainTextResponse,
        RedirectResponse,
        Response,
    )
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError(
        f"the pages need the ui extra ({error}); pip install 'tracker[ui]'"
    ) from error

PAGES_PREFIX: Final = "/ui"
API_PREFIX: Final = "/api"
# The live list is read at most once a second whatever the number of browsers watching: each
# watcher polls, and gets the one snapshot all share until it is a second old.
LIVE_REFRESH: Final = 1.0
# The live calls listed, at most (the oldest first: a call stuck ringing for hours is the one
# to see); the count above the list is of all of them.
LIVE_LIMIT: Final = 500
# The last day's figures and their plot are read and drawn at most once a minute.
STATS_REFRESH: Final = 60.0
STATS_WINDOW: Final = timedelta(hours=24)
REALM: Final = b'Basic realm="tracker pages", charset="UTF-8"'
_HERE: Final = Path(__file__).parent
_SECURITY_HEADERS: Final = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        b"frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]

T = TypeVar("T")


def is_ui_path(path: str) -> bool:
    """Whether `path` (below the app's mount point) is one of the pages' or their JSON's."""
    return any(path == prefix or path.startswith(prefix + "/") for prefix in _PREFIXES)


_PREFIXES: Final = (PAGES_PREFIX, API_PREFIX)


def create_ui_app(
    tracker: Tracker,
    credentials: Credentials,
    *,
    callback_credentials: Credentials = (),
    live_refresh: float = LIVE_REFRESH,
    live_limit: int = LIVE_LIMIT,
    stats_refresh: float = STATS_REFRESH,
) -> App:
    """The pages and their JSON, as an ASGI application to mount where the callback app is
    (`create_app(..., ui_credentials=...)` does) or on a path of a host's own.

    `credentials`: (user, password) pairs of HTTP Basic authentication, as `create_app` takes
    them; required, and none of them may be one of `callback_credentials` (give the callback
    app's, so that a mistake is refused here rather than found later). The live list is read
    at most once per `live_refresh` seconds (at most `live_limit` calls) and the last day's
    figures once per `stats_refresh`, however many browsers watch.
    """
    guard = BasicCredentials(credentials)
    if not guard.required:
        raise ValueError(
            "the pages show phone numbers: give them credentials of their own "
            "(TRACKER_UI_CREDENTIALS for tracker serve --ui)"
        )
    if guard.overlaps(BasicCredentials(callback_credentials)):
        raise ValueError(
            "the pages' credentials must differ from the callback credentials: whoever posts "
            "callbacks (Bandwidth) must not read the pages; give the pages a pair of their own"
        )
    pages = _Pages(tracker, live_refresh, live_limit, stats_refresh)
    return _Guarded(pages.app, guard)


class _Shared(Generic[T]):
    """One read shared by every request until it is `max_age` seconds old: however many
    browsers ask, the database is read at most once per `max_age`, and one read at a time (the
    others wait for it, then take its result). A thread lock rather than an asyncio one: a host
    may call the app from more than one event loop."""

    def __init__(self, read: Callable[[], T], max_age: float) -> None:
        self._read = read
        self.max_age = max_age
        self._value: T | None = None
        self._at = 0.0
        self._lock = threading.Lock()

    async def get(self) -> T:
        fresh = self._fresh()
        if fresh is not None:
            return fresh
        return await asyncio.to_thread(self._refresh)

    def _fresh(self) -> T | None:
        if self._value is not None and time.monotonic() - self._at < self.max_age:
            return self._value
        return None

    def _refresh(self) -> T:
        with self._lock:
            fresh = self._fresh()
            if fresh is not None:
                return fresh
            value = self._read()
            self._value, self._at = value, time.monotonic()
            return value


class _Stats:
    """The last day's figures, whole and by hour, as of `now`."""

    def __init__(self, now: datetime, total: Any, hours: list[Any]) -> None:
        self.now = now
        self.since = now - STATS_WINDOW
        self.total = total
        self.hours = hours


class _Pages:
    def __init__(
        self, tracker: Tracker, live_refresh: float, live_limit: int, stats_refresh: float
    ) -> None:
        self.tracker = tracker
        self.live_limit = live_limit
        self.live = _Shared(self._read_live, live_refresh)
        self.stats = _Shared(self._read_stats, stats_refresh)
        self.plot = _Shared(self._draw_plot, stats_refresh)
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["path"] = lambda text: quote(str(text), safe="")
        self.templates.filters["instant"] = _shown_instant
        self.templates.filters["short_instant"] = _short_instant
        self.templates.filters["seconds"] = _shown_seconds
        self.templates.filters["ratio"] = _shown_ratio
        self.app = Starlette(
            routes=[
                Route(PAGES_PREFIX, self.redirect_home),
                Route(PAGES_PREFIX + "/", self.live_page),
                Route(PAGES_PREFIX + "/calls", self.calls_page),
                Route(PAGES_PREFIX + "/calls/{call_id:path}", self.call_page),
                Route(PAGES_PREFIX + "/stats", self.stats_page),
                Route(PAGES_PREFIX + "/stats.png", self.plot_image),
                Mount(PAGES_PREFIX + "/static", StaticFiles(directory=_HERE / "static")),
                Route(API_PREFIX + "/live", self.live_json),
                Route(API_PREFIX + "/calls", self.calls_json),
                Route(API_PREFIX + "/calls/{call_id:path}", self.call_json),
                Route(API_PREFIX + "/stats", self.stats_json),
            ],
            exception_handlers={
                StorageError: self.unavailable,
                SchemaError: self.unavailable,
            },
        )

    # --- the shared reads ---------------------------------------------------------------

    def _read_live(self) -> bytes:
        now = datetime.now(UTC)
        count = self.tracker.count_calls(state=LIVE_STATES)
        listed = self.tracker.calls(state=LIVE_STATES, limit=self.live_limit)
        document = {
            "now": _reads.iso(now),
            "count": count,
            "calls": [_reads.call_json(call) for call in listed],
        }
        return json.dumps(document).encode()

    def _read_stats(self) -> _Stats:
        now = datetime.now(UTC)
        since = now - STATS_WINDOW
        total = self.tracker.stats(since=since, until=now, now=now)
        hours = self.tracker.stats(by="hour", since=since, until=now, now=now)
        return _Stats(now, total[0] if total else None, hours)

    def _draw_plot(self) -> bytes:
        from tracker.plotting import write_plot

        stats = self._read_stats()
        with tempfile.TemporaryDirectory(prefix="tracker-plot-") as directory:
            path = Path(directory) / "stats.png"
            write_plot(
                stats.hours,
                path,
                bucket_length=timedelta(hours=1),
                title=f"The 24 hours to {stats.now:%Y-%m-%d %H:%M} UTC",
            )
            return path.read_bytes()

    # --- pages ---------------------------------------------------------------------------

    def render(self, request: Request, name: str, status: int = 200, **values: Any) -> Response:
        root = request.scope.get("root_path", "")
        html = self.templates.get_template(name).render(
            root=root, pages=root + PAGES_PREFIX, api=root + API_PREFIX, **values
        )
        return HTMLResponse(html, status_code=status)

    async def redirect_home(self, request: Request) -> Response:
        return RedirectResponse(request.scope.get("root_path", "") + PAGES_PREFIX + "/", 308)

    async def live_page(self, request: Request) -> Response:
        document = json.loads(await self.live.get())
        return self.render(request, "live.html", live=document, refresh=self.live.max_age)

    async def calls_page(self, request: Request) -> Response:
        query = dict(request.query_params)
        wanted = (query.pop("q", "") or "").strip()
        if wanted:
            found = await asyncio.to_thread(self.tracker.get_call, wanted)
            if found is not None:
                target = request.scope.get("root_path", "") + PAGES_PREFIX + "/calls/"
                return RedirectResponse(target + quote(found.call_id, safe=""), 303)
            query["number"] = wanted
        try:
            filters = _reads.CallQuery.parse(query, datetime.now(UTC))
        except ValueError as error:
            return self.render(
                request, "calls.html", 400, error=str(error), **self._calls_values(query)
            )
        listed, cursor = await asyncio.to_thread(_reads.recent_calls, self.tracker, filters)
        next_query = None
        if cursor is not None:
            next_query = urlencode({**{k: v for k, v in query.items() if v}, "cursor": cursor})
        return self.render(
            request,
            "calls.html",
            calls=listed,
            next_query=next_query,
            error=None,
            **self._calls_values(query),
        )

    @staticmethod
    def _calls_values(query: dict[str, str]) -> dict[str, Any]:
        return {
            "query": query,
            "states": ["live", *STATES],
            "dispositions": sorted(ALL_DISPOSITIONS),
            "windows": list(_reads.WINDOWS),
        }

    async def call_page(self, request: Request) -> Response:
        call_id = request.path_params["call_id"]
        page = await asyncio.to_thread(_reads.call_page, self.tracker, call_id)
        if page is None:
            return self.render(request, "missing.html", 404, call_id=call_id)
        return self.render(
            request,
            "call.html",
            page=page,
            call=page.call,
            tree=_reads.tree_order(page),
            deliveries=[(event, _reads.body_text(event.body)) for event in page.deliveries],
        )

    async def stats_page(self, request: Request) -> Response:
        stats = await self.stats.get()
        return self.render(request, "stats.html", stats=stats, plotting=_can_plot())

    async def plot_image(self, request: Request) -> Response:
        if not _can_plot():
            from tracker.plotting import MISSING_EXTRA

            return PlainTextResponse(MISSING_EXTRA + "\n", 501)
        return Response(await self.plot.get(), media_type="image/png")

    # --- JSON ----------------------------------------------------------------------------

    async def live_json(self, request: Request) -> Response:
        return Response(await self.live.get(), media_type="application/json")

    async def calls_json(self, request: Request) -> Response:
        try:
            filters = _reads.CallQuery.parse(dict(request.query_params), datetime.now(UTC))
        except ValueError as error:
            return JSONResponse({"error": str(error)}, 400)
        listed, cursor = await asyncio.to_thread(_reads.recent_calls, self.tracker, filters)
        return JSONResponse({"calls": [_reads.call_json(c) for c in listed], "next": cursor})

    async def call_json(self, request: Request) -> Response:
        call_id = request.path_params["call_id"]
        page = await asyncio.to_thread(_reads.call_page, self.tracker, call_id)
        if page is None:
            return JSONResponse({"error": f"no call {call_id!r} is known"}, 404)
        return JSONResponse(_reads.call_page_json(page))

    async def stats_json(self, request: Request) -> Response:
        stats = await self.stats.get()
        return JSONResponse(
            {
                "since": _reads.iso(stats.since),
                "until": _reads.iso(stats.now),
                "total": None if stats.total is None else _reads.statistics_json(stats.total),
                "hours": [_reads.statistics_json(hour) for hour in stats.hours],
            }
        )

    async def unavailable(self, request: Request, error: Exception) -> Response:
        """The database failed or its schema is not current: 503, the reason in the text (the
        pages are for the operator, who needs it; the callback path never says it)."""
        text = f"the database cannot be read now: {error}"
        if request.url.path.startswith(request.scope.get("root_path", "") + API_PREFIX):
            return JSONResponse({"error": text}, 503, headers={"retry-after": "5"})
        return PlainTextResponse(text + "\n", 503, headers={"retry-after": "5"})


class _Guarded:
    """The pages behind their own Basic credentials, every answer with the security headers:
    a strict Content-Security-Policy (this origin only, no inline script or style), no MIME
    sniffing, no framing, no referrer, no caching of pages holding phone numbers."""

    def __init__(self, app: App, credentials: BasicCredentials) -> None:
        self.app = app
        self.credentials = credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        authorization = dict(scope["headers"]).get(b"authorization")

        async def secured(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() != b"cache-control"
                ]
                message = {**message, "headers": [*headers, *_SECURITY_HEADERS]}
            await send(message)

        if not self.credentials.accept(authorization):
            body = b"the pages need their own credentials\n"
            await secured(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"www-authenticate", REALM),
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        if scope["method"] not in ("GET", "HEAD"):
            body = b"the pages are read-only\n"
            await secured(
                {
                    "type": "http.response.start",
                    "status": 405,
                    "headers": [
                        (b"allow", b"GET, HEAD"),
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, secured)


def _can_plot() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _shown_instant(instant: datetime | None) -> str:
    if instant is None:
        return "—"
    return instant.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _short_instant(instant: datetime | None) -> str:
    return "—" if instant is None else instant.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _shown_seconds(seconds: float | timedelta | None) -> str:
    if seconds is None:
        return "—"
    if isinstance(seconds, timedelta):
        seconds = seconds.total_seconds()
    return f"{seconds:.1f} s"


def _shown_ratio(ratio: float | None) -> str:
    return "—" if ratio is None else f"{100 * ratio:.1f} %"
