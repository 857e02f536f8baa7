"""The webhook endpoint Bandwidth calls (SPEC section 7), as an ASGI application.

Mount `create_app(tracker)` in a host's FastAPI, Starlette or Django ASGI app, or run it with
`tracker serve`. Every callback path takes a POST; `/healthz` and `/metrics` are the two paths
the app keeps for itself.

Bandwidth does not redeliver a callback answered with a non-2xx status, so the answer is `204`
for every outcome, bad bodies included, and it is sent only once the delivery is committed: a
`204` means the delivery is in the log. Concurrent requests share commits (see `_GroupCommit`),
which is what makes durable commits affordable under load; a delivery the database refuses
fails alone, its group's others are written as if each had come alone.

Needs the `serve` extra (`pip install 'tracker[serve]'`) for the Prometheus client; the module
itself imports without it, so that the command line can read its defaults.

With `ui_credentials=...` (`tracker serve --ui`), the app also serves the read-only pages and
their JSON below `/ui` and `/api` (`tracker.ui`), behind those credentials of their own.

With `sweep=BackgroundSweep(...)` (`tracker serve --sweep-every`), the app also sweeps lost
calls in the background while it serves (`tracker.sweeping`), from its lifespan's startup to
its shutdown.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Final

from tracker import parsing
from tracker._http import BasicCredentials, Credentials, Headers, Receive, Scope, Send
from tracker.errors import SchemaError, StorageError, check_positive
from tracker.facts import CALLBACK, END_SOURCES
from tracker.lifecycle import LIVE_STATES
from tracker.records import Outcome, Result
from tracker.sweeping import BackgroundSweep
from tracker.tracker import Tracker

# The tracker's own limit (`Tracker(max_body_bytes=...)`) is the endpoint's: a body the
# endpoint read whole is one the tracker parses.
MAX_BODY_BYTES: Final = parsing.MAX_BODY_BYTES
# Bandwidth gives up on a callback after its callback timeout (15 s by default, 25 s at most),
# so a body that has not arrived in 30 s will never be answered usefully: the bound only frees
# the server of the connection.
BODY_TIMEOUT: Final = 30.0
MAX_GROUP: Final = 500
# Deliveries waiting for a group, at most: four groups' worth, a few seconds of a busy minute's
# traffic behind a slow commit. Past it a request is answered 503 at once rather than held in
# memory with no promise of an answer before Bandwidth's callback timeout.
MAX_QUEUE: Final = 4 * MAX_GROUP
RETRY_AFTER: Final = 5
HEALTH_PATH: Final = "/healthz"
METRICS_PATH: Final = "/metrics"
REALM: Final = b'Basic realm="tracker", charset="UTF-8"'
CLOSE: Final = (b"connection", b"close")
_log = logging.getLogger(__name__)


def create_app(
    tracker: Tracker,
    *,
    credentials: Credentials | None = None,
    max_body_bytes: int | None = None,
    body_timeout: float = BODY_TIMEOUT,
    max_group: int = MAX_GROUP,
    max_queue: int = MAX_QUEUE,
    retry_after: int = RETRY_AFTER,
    sweep: BackgroundSweep | None = None,
    ui_credentials: Credentials | None = None,
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The ASGI application applying each POSTed body with `tracker`.

    `credentials`: the (user, password) pairs of HTTP Basic authentication, any of which is
    accepted; several may be valid at once, for one user's too, for a rotation (a mapping of
    user to password is taken as well). None or empty accepts every request, for a host that
    authenticates in front of the app. A body over `max_body_bytes` (by default the tracker's
    own `max_body_bytes`; never more) gets `413` unread; one not complete within `body_timeout`
    seconds gets `408`. At most `max_group` deliveries share a commit; past `max_queue`
    deliveries waiting for one, a request gets `503` at once. `retry_after` (seconds) goes with
    each `503`. The app owns one writing thread; it ends with the ASGI lifespan's shutdown, or
    with the process. `sweep` (of the same tracker) starts with the lifespan's startup and
    stops with its shutdown; its ends and its provider's requests are in the metrics.
    `ui_credentials` (pairs as `credentials`, none of them a callback pair) adds the pages
    below `/ui` and their JSON below `/api` (`tracker.ui.create_ui_app`; the `ui` extra);
    those paths are then no callback paths.
    """
    if max_body_bytes is None:
        max_body_bytes = tracker.max_body_bytes
    elif max_body_bytes > tracker.max_body_bytes:
        raise ValueError(
            f"max_body_bytes={max_body_bytes} is over the tracker's own limit of "
            f"{tracker.max_body_bytes}, which would log the bodies between as invalid "
            "(too_large); give the limit to the Tracker (Tracker(..., max_body_bytes=...)) and "
            "leave create_app's out"
        )
    check_positive("max_group", max_group)
    check_positive("max_queue", max_queue)
    if sweep is not None and sweep.tracker is not tracker:
        raise ValueError("the background sweep must sweep the app's own tracker")
    ui = None
    if ui_credentials is not None:
        from tracker.ui import create_ui_app

        ui = create_ui_app(tracker, ui_credentials, callback_credentials=credentials or ())
    return _App(
        tracker,
        BasicCredentials(credentials or ()),
        max_body_bytes=max_body_bytes,
        body_timeout=body_timeout,
        group_commit=_GroupCommit(tracker, max_group, max_queue, _Metrics(sweep)),
        retry_after=retry_after,
        sweep=sweep,
        ui=ui,
    )


class _Metrics:
    """The app's Prometheus metrics, in a registry of its own: two apps in one process (tests,
    a host mounting two trackers) keep apart."""

    def __init__(self, sweep: BackgroundSweep | None = None) -> None:
        try:
            from prometheus_client import (
                CONTENT_TYPE_LATEST,
                CollectorRegistry,
                Counter,
                Gauge,
                Histogram,
                generate_latest,
            )
            from prometheus_client.core import CounterMetricFamily
        except ImportError as error:
            raise ImportError(
                f"the webhook endpoint needs the serve extra ({error}); "
                "pip install 'tracker[serve]'"
            ) from error
        self.registry = CollectorRegistry(auto_describe=True)
        self.content_type = CONTENT_TYPE_LATEST.encode()
        self._generate_latest = generate_latest
        self.deliveries = Counter(
            "tracker_deliveries",
            "Deliveries committed, by outcome and reason code ('' when none).",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self.apply_seconds = Histogram(
            "tracker_apply_seconds",
            "From a delivery's body received to its commit, in seconds.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.group_size = Histogram(
            "tracker_group_size",
            "Deliveries committed together in one transaction.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )
        self.storage_errors = Counter(
            "tracker_storage_errors",
            "Groups of deliveries the database failed to commit, each of their requests "
            "answered 503 (a group one delivery of which the database refused counts once, "
            "for that delivery alone).",
            registry=self.registry,
        )
        self.unexpected_errors = Counter(
            "tracker_unexpected_errors",
            "Groups of deliveries whose applying raised an error other than StorageError or "
            "SchemaError (a bug: the traceback is in the log), each request answered 503.",
            registry=self.registry,
        )
        self.queue_full = Counter(
            "tracker_queue_full",
            "Requests answered 503 at once because the queue of deliveries waiting for a group "
            "was at its bound.",
            registry=self.registry,
        )
        self.queued = Gauge(
            "tracker_queued_deliveries",
            "Deliveries waiting for a group to be written in.",
            registry=self.registry,
        )
        self.writing = Gauge(
            "tracker_writing_deliveries",
            "Deliveries in the group being written now.",
            registry=self.registry,
        )
        self.live_calls = Gauge(
            "tracker_live_calls",
            "Calls ringing or talking (initiated or answered), counted at the scrape.",
            registry=self.registry,
        )
        # Counted by the writing thread (callbacks) and the sweep's (the rest), read at the
        # scrape: one family whatever counted it.
        self.callback_ends = 0
        self.sweep = sweep
        self._family = CounterMetricFamily
        self.registry.register(_Collected(self._call_ends))
        self.registry.register(_Collected(self._provider_requests))

    def exposition(self) -> bytes:
        """Every metric in Prometheus' text format."""
        return self._generate_latest(self.registry)

    def _call_ends(self) -> Any:
        family = self._family(
            "tracker_call_ends",
            "Calls this process ended, by where the end came from: callback (a terminal "
            "callback applied here; one that replaced an earlier sweep or provider end counts "
            "too), provider (Bandwidth's call state, asked by the background sweep), sweep "
            "(expired by the background sweep).",
            labels=["source"],
        )
        ended = {CALLBACK: self.callback_ends}
        if self.sweep is not None:
            ended.update(self.sweep.ended())
        for source in END_SOURCES:
            family.add_metric([source], ended.get(source, 0))
        return family

    def _provider_requests(self) -> Any:
        family = self._family(
            "tracker_provider_requests",
            "Requests the background sweep's resolver made to the provider, by outcome, as the "
            "resolver counts them (ok, not_found, retried, failed, refused, ...).",
            labels=["outcome"],
        )
        requests = {} if self.sweep is None else self.sweep.provider_requests()
        for outcome, count in sorted(requests.items()):
            family.add_metric([outcome], count)
        return family


class _Collected:
    """A Prometheus collector of one metric family, built at each scrape by `build`: for counts
    kept elsewhere (the sweep's thread, the resolver), read rather than copied."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build

    def collect(self) -> Iterable[Any]:
        yield self._build()


@dataclass(slots=True)
class _Waiting:
    body: bytes
    received: float
    answer: asyncio.Future[Result]
    loop: asyncio.AbstractEventLoop


class _GroupCommit:
    """Deliveries that arrive while a transaction is being written are applied together in the
    next one, in arrival order, by `Tracker.apply_many`: the outcomes of applying them one by
    one, for one commit. One thread writes, so groups commit in arrival order too, and the
    event loop never waits on the database. The thread takes the next group itself as soon as
    a commit returns, rather than waiting for the event loop to hand it one: under load it is
    the busiest part of the server, and it must not sit idle while the loop answers.

    A group is not a unit of failure: when one fails for anything but the database being out
    of reach (see `_fails_every_part`), it is split in halves, and each half in halves again,
    so that only the delivery the database refused is answered 503 and each of the others gets
    the outcome, and the commit, it would have had alone. Halves keep arrival order: the first
    is committed before the second is tried."""

    def __init__(self, tracker: Tracker, max_group: int, max_queue: int, metrics: _Metrics) -> None:
        self.tracker = tracker
        self.max_group = max_group
        self.max_queue = max_queue
        self.metrics = metrics
        self._queue: deque[_Waiting] = deque()
        self._writing = 0
        metrics.queued.set_function(lambda: len(self._queue))
        metrics.writing.set_function(lambda: self._writing)
        self._changed = threading.Condition()
        self._closing = False
        # A daemon: a host that never runs the ASGI lifespan must still be able to exit. A
        # group cut off by the exit was never answered, so no `204` promised it.
        self._writer = threading.Thread(target=self._write, name="tracker-writer", daemon=True)
        self._writer.start()

    async def apply(self, body: bytes) -> Result:
        """The delivery's result once it is committed. `StorageError` or another error when
        applying it failed; `_QueueFullError` at once when `max_queue` deliveries are waiting."""
        loop = asyncio.get_running_loop()
        waiting = _Waiting(body, time.perf_counter(), loop.create_future(), loop)
        with self._changed:
            if self._closing:  # the writer is gone or going: nobody would answer
                raise StorageError("the endpoint is shutting down; nothing was written")
            if len(self._queue) >= self.max_queue:
                self.metrics.queue_full.inc()
                raise _QueueFullError(self.max_queue)
            self._queue.append(waiting)
            self._changed.notify()
        return await waiting.answer

    def _write(self) -> None:
        while True:
            with self._changed:
                while not self._queue and not self._closing:
                    self._changed.wait()
                if not self._queue:
                    return
                size = min(len(self._queue), self.max_group)
                group = [self._queue.popleft() for _ in range(size)]
                self._writing = size
            try:
                self._commit(group)
            finally:
                self._writing = 0

    def _commit(self, group: list[_Waiting]) -> None:
        """Apply `group` and answer each of its requests; split it when it fails (see above)."""
        try:
            results = self.tracker.apply_many([waiting.body for waiting in group])
        except Exception as error:
            if len(group) > 1 and not _fails_every_part(error):
                middle = len(group) // 2
                self._commit(group[:middle])
                self._commit(group[middle:])
                return
            if isinstance(error, StorageError | SchemaError):
                self.metrics.storage_errors.inc()
            else:
                self.metrics.unexpected_errors.inc()
                _log.error("applying a delivery failed unexpectedly", exc_info=error)
            self._answer(group, [error] * len(group))
            return
        self._record(group, results)
        self._answer(group, results)

    def _record(self, group: list[_Waiting], results: list[Result]) -> None:
        committed = time.perf_counter()
        self.metrics.group_size.observe(len(group))
        for waiting, result in zip(group, results, strict=True):
            self.metrics.deliveries.labels(result.outcome, result.reason or "").inc()
            self.metrics.apply_seconds.observe(committed - waiting.received)
            if result.outcome is Outcome.APPLIED and _is_terminal(waiting.body):
                self.metrics.callback_ends += 1

    @staticmethod
    def _answer(group: list[_Waiting], answers: Sequence[Result | Exception]) -> None:
        """Hand each request its answer in its own event loop: one wake-up per loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Waiting, Result | Exception]]] = {}
        for waiting, answer in zip(group, answers, strict=True):
            by_loop.setdefault(waiting.loop, []).append((waiting, answer))
        for loop, pairs in by_loop.items():
            with suppress(RuntimeError):  # that loop is closed: nobody is waiting any more
                loop.call_soon_threadsafe(_settle, pairs)

    @property
    def closing(self) -> bool:
        return self._closing

    async def close(self) -> None:
        """Finish the deliveries already received, then stop the writing thread."""
        with self._changed:
            self._closing = True
            self._changed.notify()
        await asyncio.to_thread(self._writer.join)


def _is_terminal(body: bytes) -> bool:
    """Whether `body` is a terminal callback (`disconnect`, `transferDisconnect`). Asked of
    applied deliveries only; the substring test spares the parse for every other event type."""
    if b"isconnect" not in body:
        return False
    try:
        document = json.loads(body)
    except ValueError:
        return False
    return isinstance(document, dict) and document.get("eventType") in parsing.TERMINAL_EVENT_TYPES


def _fails_every_part(error: Exception) -> bool:
    """Whether `error` would fail any part of the group it failed, so that splitting the group
    only repeats it: the schema is not current, or the database is out of reach or did not
    answer in time (each part would wait as long again)."""
    return isinstance(error, SchemaError) or (isinstance(error, StorageError) and error.unavailable)


class _QueueFullError(Exception):
    """`max_queue` deliveries are waiting for a group already: answer 503, try again later."""

    def __init__(self, bound: int) -> None:
        super().__init__(f"{bound} deliveries are waiting to be written already")


def _settle(pairs: list[tuple[_Waiting, Result | Exception]]) -> None:
    for waiting, answer in pairs:
        if waiting.answer.done():  # the client went away; its delivery stays committed
            continue
        if isinstance(answer, Exception):
            waiting.answer.set_exception(answer)
        else:
            waiting.answer.set_result(answer)


class _BodyTooLargeError(Exception):
    """The body passed the limit; what is left of it stays unread."""


class _ClientGoneError(Exception):
    """The client closed the connection before its body was complete."""


class _App:
    """The ASGI callable `create_app` returns."""

    def __init__(
        self,
        tracker: Tracker,
        credentials: BasicCredentials,
        *,
        max_body_bytes: int,
        body_timeout: float,
        group_commit: _GroupCommit,
        retry_after: int,
        sweep: BackgroundSweep | None,
        ui: Callable[[Scope, Receive, Send], Awaitable[None]] | None = None,
    ) -> None:
        self.tracker = tracker
        self.credentials = credentials
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.group_commit = group_commit
        self.metrics = group_commit.metrics
        self.retry_after = str(retry_after).encode()
        self.sweep = sweep
        self.ui = ui

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        # Other scopes (websocket) are not ours: returning closes them.

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.sweep is not None:
                    self.sweep.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                # The sweep is told first: it ends its transaction while the last deliveries
                # are written, and gives up its lease.
                if self.sweep is not None:
                    self.sweep.request_stop()
                await self.group_commit.close()
                if self.sweep is not None:
                    await asyncio.to_thread(self.sweep.stop)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = _own_path(scope)
        method = scope["method"]
        if self.ui is not None and _is_ui_path(path):
            await self.ui(scope, receive, send)
            return
        if path in (HEALTH_PATH, METRICS_PATH):
            if method not in ("GET", "HEAD"):
                await _answer(send, 405, [(b"allow", b"GET, HEAD")])
            elif path == HEALTH_PATH:
                await self._health(send)
            else:
                await self._metrics(send)
            return
        if method != "POST":
            await _answer(send, 405, [(b"allow", b"POST")])
            return
        headers = _headers(scope["headers"])
        if self.credentials.required and not self.credentials.accept(headers.get(b"authorization")):
            await _answer(send, 401, [(b"www-authenticate", REALM)], b"credentials required\n")
            return
        await self._callback(headers, receive, send)

    async def _callback(self, headers: dict[bytes, bytes], receive: Receive, send: Send) -> None:
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await _answer(send, 413, [CLOSE], self._too_large_text())
            return
        try:
            async with asyncio.timeout(self.body_timeout):
                body = await _read_body(receive, self.max_body_bytes)
        except _BodyTooLargeError:
            await _answer(send, 413, [CLOSE], self._too_large_text())
            return
        except TimeoutError:
            text = f"the body did not arrive within {self.body_timeout:g} s\n".encode()
            await _answer(send, 408, [CLOSE], text)
            return
        except _ClientGoneError:
            return
        try:
            result = await self.group_commit.apply(body)
        except _QueueFullError as error:
            text = f"{error}; the delivery was not stored; send it again later\n".encode()
            await _answer(send, 503, [(b"retry-after", self.retry_after)], text)
            return
        except Exception as error:
            # The database's own words go to the operator's log, not to whoever called. Any
            # error is a 503 with Retry-After (an unexpected one was logged and counted where
            # it was caught): Bandwidth's answer to a bare 500 is the same, without the hint.
            if isinstance(error, StorageError | SchemaError):
                _log.warning("a delivery was answered 503: %s", error)
            text = b"the delivery was not stored; send it again later\n"
            if self.group_commit.closing:
                text = b"the endpoint is shutting down; the delivery was not stored\n"
            await _answer(send, 503, [(b"retry-after", self.retry_after)], text)
            return
        outcome = [(b"x-tracker-outcome", result.outcome.encode())]
        if result.reason is not None:
            outcome.append((b"x-tracker-reason", result.reason.encode()))
        await _answer(send, 204, outcome)

    def _too_large_text(self) -> bytes:
        return f"a callback body is at most {self.max_body_bytes} bytes\n".encode()

    async def _health(self, send: Send) -> None:
        try:
            await asyncio.to_thread(self.tracker.check)
        except (StorageError, SchemaError) as error:
            await _answer(send, 503, [], f"{error}\n".encode())
            return
        await _answer(send, 200, [], b"ok\n")

    async def _metrics(self, send: Send) -> None:
        try:
            live = await asyncio.to_thread(self.tracker.count_calls, state=LIVE_STATES)
        except (StorageError, SchemaError):
            live = None  # the rest of the metrics are still worth a scrape
        self.metrics.live_calls.set(float("nan") if live is None else live)
        exposition = self.metrics.exposition()
        await _answer(send, 200, [(b"content-type", self.metrics.content_type)], exposition)


def _is_ui_path(path: str) -> bool:
    from tracker.ui import is_ui_path

    return is_ui_path(path)


def _own_path(scope: Scope) -> str:
    """The request's path below where the host mounted the app. Servers disagree on whether a
    mounted app's `path` still holds its `root_path`; both spellings are taken."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path.rstrip("/") or "/"


def _headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """The request's headers by lower-case name (ASGI servers already lower-case them)."""
    return {name.lower(): value for name, value in raw}


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The whole body, read chunk by chunk; past `limit` bytes the rest is left unread, so a
    large body never sits in memory whatever its declared length (or none, when chunked)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGoneError
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLargeError
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _answer(send: Send, status: int, headers: Headers, body: bytes = b"") -> None:
    if status != 204:  # a 204 carries neither a body nor its length
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        if body and not any(name == b"content-type" for name, _ in headers):
            headers.append((b"content-type", b"text/plain; charset=utf-8"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
