"""A fake of Bandwidth's Voice API for tests: a real HTTP server on loopback, behind
`tracker.testing.FakeBandwidth`.

It serves the two questions the tracker asks Bandwidth (one call's state, and the calls started
in a window, paged with `Link` headers), checks HTTP Basic credentials and serves an OAuth2
client-credentials token endpoint as Bandwidth does, and fails on demand: a 429 with
`Retry-After`, a 5xx, a slow answer, the whole API down. The real `bandwidth-sdk` talks to it,
so a test proves what the tracker does with real HTTP, not with a mock of the client.

Standard library only: importing the test kit never imports the SDK.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import json
import secrets
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from tracker._bodies import (
    ACCOUNT,
    APPLICATION,
    BASE_TIME,
    CALLED,
    CALLER,
    _finish,
    new_call_id,
    stamp,
)
from tracker.callbacks import read_call_url

# Where Bandwidth serves the Voice API and its token endpoint, below the fake's origin: the same
# paths as `https://voice.bandwidth.com/api/v2` and `https://api.bandwidth.com/api/v1/oauth2/token`.
API_PATH: Final = "/api/v2"
TOKEN_PATH: Final = "/api/v1/oauth2/token"
# Bandwidth's page size when a request names none, and the largest it accepts.
DEFAULT_PAGE_SIZE: Final = 1000
MAX_PAGE_SIZE: Final = 10_000

_TERMINAL_EVENTS: Final = ("disconnect", "transferDisconnect")
# A leg's events give the original call's numbers as `from`/`to`, its own as these.
_LEG_EVENTS: Final = ("transferAnswer", "transferDisconnect")
# What a call state copies from a callback body, under the same name.
_COPIED: Final = (
    "accountId",
    "applicationId",
    "callId",
    "parentCallId",
    "from",
    "to",
    "direction",
    "enqueuedTime",
    "startTime",
    "answerTime",
    "errorMessage",
    "errorId",
)


def call_state(
    call_id: str | None = None,
    *,
    state: str = "disconnected",
    start: datetime = BASE_TIME,
    answered: datetime | None = None,
    end: datetime | None = None,
    cause: str = "hangup",
    **fields: Any,
) -> dict[str, Any]:
    """A call state document as Bandwidth's `GET .../calls/{callId}` answers it: camelCase,
    times in UTC with milliseconds and `Z`. A `disconnected` call ends at `end` (by default a
    minute after it was answered, or after it started) with `disconnectCause` `cause`; any other
    `state` (`initiated`, `answered`) has no end. Keyword arguments override or add fields in
    Bandwidth's spelling, and `...` removes one."""
    call_id = call_id or new_call_id()
    document: dict[str, Any] = {
        "applicationId": APPLICATION,
        "accountId": ACCOUNT,
        "callId": call_id,
        "to": CALLED,
        "from": CALLER,
        "direction": "inbound",
        "state": state,
        "enqueuedTime": stamp(start),
        "startTime": stamp(start),
        "lastUpdate": stamp(start),
    }
    if answered is not None:
        document["answerTime"] = document["lastUpdate"] = stamp(answered)
    if state == "disconnected":
        ended = end or (answered or start) + timedelta(minutes=1)
        document |= {
            "endTime": stamp(ended),
            "disconnectCause": cause,
            "lastUpdate": stamp(ended),
        }
    return _finish(document, None, fields)


def call_state_from(body: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    """What Bandwidth's call state says of a call once it sent `body`, the last callback of that
    call: `disconnected` with the body's `cause` and `endTime` after a `disconnect` or
    `transferDisconnect`, `answered` after a body with an `answerTime`, else `initiated`. A
    leg's own numbers are its `transferCallerId`/`transferTo`, and a body without `accountId`
    (a `transferDisconnect`) has the account of its `callUrl`, else `ACCOUNT`. A test that
    withholds a terminal callback stores this in the fake (or hands it to
    `Tracker.apply_call_states`), so Bandwidth still knows how the call ended. Keyword
    arguments override or add fields as for `call_state`."""
    document = {key: body[key] for key in _COPIED if body.get(key) is not None}
    document.setdefault("accountId", _account_of(body))
    if body.get("eventType") in _LEG_EVENTS:
        for own, key in (("transferCallerId", "from"), ("transferTo", "to")):
            document.pop(key, None)
            if body.get(own) is not None:
                document[key] = body[own]
    document["lastUpdate"] = body.get("eventTime") or body.get("startTime")
    if body.get("eventType") in _TERMINAL_EVENTS:
        document |= {
            "state": "disconnected",
            "endTime": body["endTime"],
            "disconnectCause": body["cause"],
            "lastUpdate": body["endTime"],
        }
    else:
        document["state"] = "answered" if body.get("answerTime") else "initiated"
    return _finish(document, None, fields)


def _account_of(body: Mapping[str, Any]) -> str:
    url = read_call_url(body.get("callUrl"))
    return url.account_id if url is not None else ACCOUNT


@dataclass(frozen=True, slots=True)
class FakeRequest:
    """One request the fake answered: its method, path and query, the status it answered,
    and when (`time.monotonic()` when it arrived, and how long the answer took)."""

    method: str
    path: str
    query: Mapping[str, str]
    status: int
    at: float
    duration: float

    @property
    def call_id(self) -> str | None:
        """The call a call state request asked for; None for any other request."""
        parts = self.path.split("/")
        if len(parts) == 7 and parts[3:4] == ["accounts"] and parts[5] == "calls":
            return unquote(parts[6])
        return None


@dataclass
class _Fault:
    call_id: str | None
    status: int | None
    retry_after: float | str | None
    delay: float
    times: int | None

    def matches(self, call_id: str | None) -> bool:
        return self.call_id is None or self.call_id == call_id


@dataclass(frozen=True, slots=True)
class _Stored:
    call_id: str
    account_id: str | None
    start: datetime | None
    body: bytes

    @property
    def order(self) -> tuple[datetime, str]:
        return (self.start or datetime.min.replace(tzinfo=UTC), self.call_id)


@dataclass
class _State:
    """Everything the handler threads share, under one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    calls: dict[str, _Stored] = field(default_factory=dict)
    ordered: list[tuple[tuple[datetime, str], _Stored]] | None = None
    faults: list[_Fault] = field(default_factory=list)
    down_status: int | None = None
    tokens: set[str] = field(default_factory=set)
    log: list[FakeRequest] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0


class FakeBandwidth:
    """Bandwidth's Voice API, faked by a real HTTP server on 127.0.0.1 for tests: point the
    tracker at it with `environment()` (or set `TRACKER_BANDWIDTH_API_URL` to `url` and the
    credentials it checks), store call states with `put`, and make it fail with `fail`, `slow`
    and `down`.

        with FakeBandwidth() as fake:
            fake.put(call_state(call_id, state="disconnected", cause="busy"))
            fake.fail(call_id, status=429, retry_after=0.1)
            os.environ.update(fake.environment())
            ...
            assert [r.status for r in fake.requests] == [429, 200]

    Serves `GET /accounts/{accountId}/calls/{callId}` (the stored state, or 404), `GET
    /accounts/{accountId}/calls` (the states whose `startTime` is in `minStartTime` ..
    `maxStartTime`, both included, in start order, `pageSize` a page, a `Link: <...>;
    rel="next"` header while more remain) and the OAuth2 token endpoint (`POST
    /api/v1/oauth2/token`, client credentials in HTTP Basic). Every Voice API request must carry
    the Basic credentials `username`/`password` or a bearer token the endpoint issued: 401
    otherwise. A call is found under its own `accountId` only (under any account when it has
    none). Thread-safe; `requests` logs what it answered and `max_in_flight` how many requests it
    was answering at once at most."""

    def __init__(
        self,
        *,
        account_id: str = ACCOUNT,
        username: str = "tracker",
        password: str | None = None,
        client_id: str = "tracker-client",
        client_secret: str | None = None,
        token_lifetime: int = 3600,
    ) -> None:
        self.account_id = account_id
        self.username = username
        self.password = password or secrets.token_urlsafe(12)
        self.client_id = client_id
        self.client_secret = client_secret or secrets.token_urlsafe(12)
        self.token_lifetime = token_lifetime
        self._state = _State()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self._start()

    # --- the server -------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        """`http://127.0.0.1:PORT`, where the fake listens."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def url(self) -> str:
        """The Voice API's base URL on the fake, for `TRACKER_BANDWIDTH_API_URL`."""
        return self.origin + API_PATH

    @property
    def token_url(self) -> str:
        """The OAuth2 token endpoint on the fake: the one `tracker.bandwidth` derives from
        `url`."""
        return self.origin + TOKEN_PATH

    def environment(self, *, oauth: bool = False) -> dict[str, str]:
        """The environment that points `tracker.bandwidth` at this fake with its credentials:
        HTTP Basic (`BANDWIDTH_USERNAME`, `BANDWIDTH_PASSWORD`), or with `oauth` OAuth2 client
        credentials (`BANDWIDTH_CLIENT_ID`, `BANDWIDTH_CLIENT_SECRET`); `BANDWIDTH_ACCOUNT_ID`
        and `TRACKER_BANDWIDTH_API_URL` either way."""
        credentials = (
            {"BANDWIDTH_CLIENT_ID": self.client_id, "BANDWIDTH_CLIENT_SECRET": self.client_secret}
            if oauth
            else {"BANDWIDTH_USERNAME": self.username, "BANDWIDTH_PASSWORD": self.password}
        )
        return {
            "TRACKER_BANDWIDTH_API_URL": self.url,
            "BANDWIDTH_ACCOUNT_ID": self.account_id,
            **credentials,
        }

    def _start(self) -> None:
        server = _Server(("127.0.0.1", self._port), _Handler)
        server.fake = self
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def _stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        server.shutdown()
        server.server_close()
        server.drop_connections()
        thread.join()

    def close(self) -> None:
        """Stop serving and close every connection. Idempotent."""
        self._stop()

    def __enter__(self) -> FakeBandwidth:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- the data ---------------------------------------------------------------------------

    def put(self, document: Mapping[str, Any]) -> None:
        """Store (or replace) one call's state document, as `call_state` builds it: the fake
        answers it as it is, found by its `callId` under its `accountId`."""
        self.put_many([document])

    def put_many(self, documents: Iterable[Mapping[str, Any]]) -> None:
        """Store many call state documents at once (the cheap way to store thousands)."""
        stored = {}
        for document in documents:
            call_id = document.get("callId")
            if not isinstance(call_id, str) or not call_id:
                raise ValueError(f"a call state needs a callId; got {dict(document)!r}")
            account = document.get("accountId")
            stored[call_id] = _Stored(
                call_id=call_id,
                account_id=account if isinstance(account, str) else None,
                start=_instant(document.get("startTime")),
                body=json.dumps(document, separators=(",", ":")).encode(),
            )
        with self._state.lock:
            self._state.calls.update(stored)
            self._state.ordered = None

    def remove(self, call_id: str) -> None:
        """Forget a call: Bandwidth answers 404 for it from now on (as after its 7 days)."""
        with self._state.lock:
            self._state.calls.pop(call_id, None)
            self._state.ordered = None

    def get(self, call_id: str) -> dict[str, Any] | None:
        """The state document stored for `call_id`, or None."""
        with self._state.lock:
            stored = self._state.calls.get(call_id)
        return None if stored is None else json.loads(stored.body)

    def __len__(self) -> int:
        with self._state.lock:
            return len(self._state.calls)

    # --- faults -----------------------------------------------------------------------------

    def fail(
        self,
        call_id: str | None = None,
        *,
        status: int | None = 500,
        retry_after: float | str | None = None,
        delay: float = 0.0,
        times: int | None = 1,
    ) -> None:
        """Answer the next `times` requests (None: every one from now on) for `call_id` (None:
        any Voice API request, the call list included) with `status` and a JSON error body, as
        Bandwidth does; `retry_after` (seconds, or an HTTP date as text) sends a `Retry-After`
        header; `delay` waits that many seconds first. With `status` None the request is
        answered as usual after the delay. Faults apply in the order they were added."""
        if status is None and delay <= 0:
            raise ValueError("a fault needs a status, a delay, or both")
        if times is not None and times < 1:
            raise ValueError(f"times must be at least 1, or None for every request; got {times}")
        with self._state.lock:
            self._state.faults.append(_Fault(call_id, status, retry_after, delay, times))

    def slow(self, call_id: str | None = None, *, delay: float, times: int | None = 1) -> None:
        """Answer the next `times` requests for `call_id` (None: any) as usual, but only after
        `delay` seconds: past a client's timeout, a slow answer is a failed one."""
        self.fail(call_id, status=None, delay=delay, times=times)

    def down(self, *, status: int | None = 503) -> None:
        """The whole API fails until `up()`: every Voice API request is answered `status` (the
        token endpoint still answers), or with `status` None, the port refuses every connection
        (and every open one is closed)."""
        if status is None:
            self._stop()
        else:
            with self._state.lock:
                self._state.down_status = status

    def up(self) -> None:
        """Undo `down()` and every pending fault: the API answers again on the same port."""
        with self._state.lock:
            self._state.down_status = None
            self._state.faults.clear()
        if self._server is None:
            self._start()

    def revoke_tokens(self) -> None:
        """Forget every bearer token issued: a request with one is answered 401 until the
        client asks the token endpoint again."""
        with self._state.lock:
            self._state.tokens.clear()

    # --- what it saw ------------------------------------------------------------------------

    @property
    def requests(self) -> list[FakeRequest]:
        """Every request answered so far, in the order the answers were sent."""
        with self._state.lock:
            return list(self._state.log)

    @property
    def max_in_flight(self) -> int:
        """The most requests the fake was answering at once (token requests included)."""
        with self._state.lock:
            return self._state.max_in_flight

    def reset_requests(self) -> None:
        """Forget the requests seen so far, and the most in flight at once."""
        with self._state.lock:
            self._state.log.clear()
            self._state.max_in_flight = self._state.in_flight

    # --- answering (called by the handler threads) -----------------------------------------

    def _enter(self) -> None:
        with self._state.lock:
            self._state.in_flight += 1
            self._state.max_in_flight = max(self._state.max_in_flight, self._state.in_flight)

    def _leave(self, request: FakeRequest) -> None:
        with self._state.lock:
            self._state.in_flight -= 1
            self._state.log.append(request)

    def _fault_for(self, call_id: str | None) -> tuple[int | None, _Fault | None]:
        """The status the whole API is down with, and the fault this request meets, if any."""
        with self._state.lock:
            if self._state.down_status is not None:
                return self._state.down_status, None
            for fault in self._state.faults:
                if fault.matches(call_id):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times == 0:
                            self._state.faults.remove(fault)
                    return None, fault
        return None, None

    def _authorized(self, header: str | None) -> bool:
        if header is None:
            return False
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            with self._state.lock:
                return value.strip() in self._state.tokens
        return scheme.lower() == "basic" and _basic_matches(value, self.username, self.password)

    def _issue_token(self, header: str | None) -> str | None:
        scheme, _, value = (header or "").partition(" ")
        if scheme.lower() != "basic" or not _basic_matches(
            value, self.client_id, self.client_secret
        ):
            return None
        token = secrets.token_urlsafe(24)
        with self._state.lock:
            self._state.tokens.add(token)
        return token

    def _find(self, account_id: str, call_id: str) -> bytes | None:
        with self._state.lock:
            stored = self._state.calls.get(call_id)
        if stored is None or stored.account_id not in (None, account_id):
            return None
        return stored.body

    def _page(
        self,
        account_id: str,
        since: datetime | None,
        until: datetime | None,
        after: tuple[datetime, str] | None,
        size: int,
    ) -> tuple[list[_Stored], tuple[datetime, str] | None]:
        """A page of the calls of `account_id` started in the window, after the keyset position
        `after`, and the position to go on from (None: this is the last page)."""
        with self._state.lock:
            if self._state.ordered is None:
                self._state.ordered = sorted(
                    ((stored.order, stored) for stored in self._state.calls.values()),
                    key=lambda pair: pair[0],
                )
            ordered = self._state.ordered
        page: list[_Stored] = []
        for _order, stored in _from(ordered, after):
            if stored.account_id not in (None, account_id) or stored.start is None:
                continue
            if (since is not None and stored.start < since) or (
                until is not None and stored.start > until
            ):
                continue
            if len(page) == size:
                return page, page[-1].order
            page.append(stored)
        return page, None


def _from(
    ordered: list[tuple[tuple[datetime, str], _Stored]], after: tuple[datetime, str] | None
) -> Iterator[tuple[tuple[datetime, str], _Stored]]:
    """The items of `ordered` after the position `after` (all of them when None)."""
    low, high = 0, len(ordered)
    if after is not None:
        while low < high:
            middle = (low + high) // 2
            if ordered[middle][0] <= after:
                low = middle + 1
            else:
                high = middle
    return iter(ordered[low:])


def _basic_matches(value: str, username: str, password: str) -> bool:
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return False
    given_user, _, given_password = decoded.partition(":")
    return hmac.compare_digest(given_user, username) & hmac.compare_digest(given_password, password)


def _instant(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _token(position: tuple[datetime, str]) -> str:
    text = json.dumps([position[0].isoformat(), position[1]])
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _position(token: str) -> tuple[datetime, str] | None:
    try:
        padded = token + "=" * (-len(token) % 4)
        start, call_id = json.loads(base64.urlsafe_b64decode(padded))
        return datetime.fromisoformat(start), str(call_id)
    except (ValueError, TypeError, binascii.Error):
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    fake: FakeBandwidth

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: a client that gave up on a slow answer closed its connection, as it may."""

    def drop_connections(self) -> None:
        """Close every open connection: a down API answers nothing on them."""
        with self.connections_lock:
            connections, self.connections = self.connections, set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    # An idle kept-alive connection's thread ends after this long.
    timeout = 30

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without this, Nagle's algorithm holds the
        # body back for the client's delayed acknowledgement, 40 ms an answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a test reads `FakeBandwidth.requests` instead."""

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def _answer(self, method: str) -> None:
        fake = self.server.fake
        started = time.monotonic()
        parts = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        fake._enter()
        self._pending: tuple[FakeBandwidth, str, str, dict[str, str], float] | None = (
            fake,
            method,
            parts.path,
            query,
            started,
        )
        try:
            self._route(fake, method, parts.path, query, body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            self._logged(500)

    def _logged(self, status: int) -> None:
        """Log the request with the status it is answered, before the answer leaves: a client
        that read the answer finds the request in `FakeBandwidth.requests`."""
        if self._pending is None:
            return
        fake, method, path, query, started = self._pending
        self._pending = None
        fake._leave(FakeRequest(method, path, query, status, started, time.monotonic() - started))

    def _route(
        self, fake: FakeBandwidth, method: str, path: str, query: dict[str, str], body: bytes
    ) -> int:
        if path == TOKEN_PATH and method == "POST":
            return self._token(fake, body)
        segments = path.removeprefix(API_PATH).split("/")
        is_call = len(segments) == 5 and segments[1] == "accounts" and segments[3] == "calls"
        is_list = len(segments) == 4 and segments[1] == "accounts" and segments[3] == "calls"
        if not path.startswith(API_PATH + "/") or method != "GET" or not (is_call or is_list):
            return self._error(404, "not-found", f"no such resource: {method} {path}")
        call_id = unquote(segments[4]) if is_call else None
        down, fault = fake._fault_for(call_id)
        if down is not None:
            return self._error(down, "service-unavailable", "the Voice API is down")
        if fault is not None:
            if fault.delay > 0:
                time.sleep(fault.delay)
            if fault.status is not None:
                return self._error(fault.status, "fault", "a fault asked for by the test", fault)
        if not fake._authorized(self.headers.get("Authorization")):
            return self._error(401, "authentication-failed", "invalid credentials")
        account_id = unquote(segments[2])
        if call_id is not None:
            found = fake._find(account_id, call_id)
            if found is None:
                return self._error(404, "not-found", f"call {call_id} not found")
            return self._send(200, found)
        return self._list(fake, account_id, path, query)

    def _list(self, fake: FakeBandwidth, account_id: str, path: str, query: dict[str, str]) -> int:
        try:
            size = int(query.get("pageSize", DEFAULT_PAGE_SIZE))
        except ValueError:
            size = 0
        if not 1 <= size <= MAX_PAGE_SIZE:
            return self._error(400, "validation", f"pageSize must be 1 to {MAX_PAGE_SIZE}")
        window = {}
        for name in ("minStartTime", "maxStartTime"):
            window[name] = _instant(query.get(name))
            if name in query and window[name] is None:
                return self._error(400, "validation", f"{name} is not an ISO 8601 time")
        after = None
        if "pageToken" in query:
            after = _position(query["pageToken"])
            if after is None:
                return self._error(400, "validation", "pageToken is not one this API gave")
        page, going_on = fake._page(
            account_id, window["minStartTime"], window["maxStartTime"], after, size
        )
        headers = {}
        if going_on is not None:
            following = {**query, "pageToken": _token(going_on)}
            headers["Link"] = f'<{fake.origin}{path}?{urlencode(following)}>; rel="next"'
        return self._send(200, b"[" + b",".join(stored.body for stored in page) + b"]", headers)

    def _token(self, fake: FakeBandwidth, body: bytes) -> int:
        if parse_qs(body.decode(errors="replace")).get("grant_type") != ["client_credentials"]:
            return self._send(400, b'{"error":"unsupported_grant_type"}')
        token = fake._issue_token(self.headers.get("Authorization"))
        if token is None:
            return self._send(401, b'{"error":"invalid_client"}')
        answer = {"access_token": token, "token_type": "Bearer", "expires_in": fake.token_lifetime}
        return self._send(200, json.dumps(answer).encode())

    def _error(self, status: int, kind: str, description: str, fault: _Fault | None = None) -> int:
        headers = {}
        if fault is not None and fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        if status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="voice"'
        document = {"type": kind, "description": description, "id": secrets.token_hex(8)}
        return self._send(status, json.dumps(document).encode(), headers)

    def _send(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> int:
        self._logged(status)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        return status
