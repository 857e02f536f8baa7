"""Bad input over HTTP: bodies that are no callback, body size limits, and slow clients."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import httpx

from tests.http_server import (
    Server,
    chunked,
    close_quietly,
    connect,
    push_until_answered,
    read_response,
    readable,
    request_head,
)
from tests.http_support import (
    BODY_TIMEOUT,
    CALLBACK,
    MAX_BODY,
    OLD,
    OUTCOME,
    TEN_MB,
    _basic,
    dumps,
    outcome_of,
)
from tracker import Event
from tracker.testing import (
    disconnect,
)

# --- bad input over HTTP (every backend) ------------------------------------------------------


def test_a_body_that_is_no_callback_is_204_invalid_and_logged_as_received(
    server: Server, client: httpx.Client, log: Callable[[], list[Event]]
) -> None:
    """Empty, not JSON, not UTF-8, not an object: Bandwidth would not redeliver a non-2xx, and
    the log keeps the body exactly as received for a person to look at."""
    cases = [
        (b"", "not_json"),
        (b"not json", "not_json"),
        (b'{"eventType": "disconnect", ', "not_json"),
        (b"\xff\xfe{}", "not_utf8"),
        (b"[]", "not_an_object"),
        (b"null", "not_an_object"),
    ]
    for body, reason in cases:
        response = client.post(server.url(), content=body)
        assert outcome_of(response) == (204, "invalid", reason), body
    assert [(entry.body, entry.outcome, entry.reason) for entry in log()] == [
        (body, "invalid", reason) for body, reason in cases
    ]
    assert "Traceback" not in server.stderr


def test_the_body_is_parsed_whatever_its_content_type(
    server: Server, client: httpx.Client, log: Callable[[], list[Event]]
) -> None:
    bodies = []
    content_types = [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
        "multipart/form-data; boundary=x",
        "garbage;;=",
    ]
    for content_type in content_types:
        body = dumps(disconnect())
        headers = {} if content_type is None else {"Content-Type": content_type}
        response = client.post(server.url(), content=body, headers=headers)
        assert outcome_of(response) == (204, "applied", None), content_type
        bodies.append(body)
    assert [entry.body for entry in log()] == bodies


def test_a_chunked_body_without_length_is_read_and_applied(
    server: Server, client: httpx.Client, log: Callable[[], list[Event]]
) -> None:
    body = dumps(disconnect())
    pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
    response = client.post(server.url(), content=iter(pieces))  # httpx: chunked, no length
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.request.headers
    assert outcome_of(response) == (204, "applied", None)
    assert [entry.body for entry in log()] == [body]


def test_a_body_at_the_limit_is_taken_and_one_byte_more_is_413(
    server: Server, client: httpx.Client, log: Callable[[], list[Event]]
) -> None:
    at_limit = b'{"pad":"' + b"x" * (MAX_BODY - 10) + b'"}'
    assert len(at_limit) == MAX_BODY
    response = client.post(server.url(), content=at_limit)
    assert response.status_code == 204
    assert response.headers[OUTCOME] == "invalid"
    over = at_limit + b" "
    assert client.post(server.url(), content=over).status_code == 413
    assert client.post(server.url(), content=iter([over[:MAX_BODY], b" "])).status_code == 413
    assert [entry.outcome for entry in log()] == ["invalid"]


def test_max_body_bytes_sets_the_limit(
    serve: Callable[..., Server], client: httpx.Client, log: Callable[[], list[Event]]
) -> None:
    server = serve("--max-body-bytes", "2000")
    unpadded = dumps({**disconnect(), "pad": ""})
    at_limit = unpadded.replace(b'"pad":""', b'"pad":"' + b"x" * (2000 - len(unpadded)) + b'"')
    assert len(at_limit) == 2000
    assert outcome_of(client.post(server.url(), content=at_limit)) == (204, "applied", None)
    over = at_limit + b" "
    assert client.post(server.url(), content=over).status_code == 413
    assert client.post(server.url(), content=iter([over[:1000], over[1000:]])).status_code == 413
    assert [entry.body for entry in log()] == [at_limit]


def test_max_body_bytes_is_the_trackers_limit_too(
    serve: Callable[..., Server], client: httpx.Client, log: Callable[[], list[Event]]
) -> None:
    """`--max-body-bytes` over the default 1 MiB: a 1.5 MiB callback is read whole by the
    endpoint and parsed and applied by the tracker, which takes the same limit (not logged
    `invalid`/`too_large` by a tracker left at its default), and its body is logged whole."""
    server = serve("--max-body-bytes", str(2 * MAX_BODY))
    large = dumps({**disconnect(), "pad": "x" * (MAX_BODY // 2 * 3)})
    assert MAX_BODY < len(large) < 2 * MAX_BODY
    assert outcome_of(client.post(server.url(), content=large)) == (204, "applied", None)
    over = dumps({**disconnect(), "pad": "x" * (2 * MAX_BODY)})
    assert client.post(server.url(), content=over).status_code == 413
    assert [entry.body for entry in log()] == [large]


def test_a_declared_length_over_the_limit_is_413_before_the_body_is_sent(
    server: Server, client: httpx.Client, log: Callable[[], list[Event]]
) -> None:
    auth = {"Authorization": _basic(f"{OLD[0]}:{OLD[1]}".encode())}
    sock = connect(server.port)
    try:
        sock.sendall(request_head("POST", CALLBACK, {**auth, "Content-Length": str(TEN_MB)}))
        assert readable(sock, 10.0), "413 must come at once, without waiting for the body"
        response = read_response(sock)
        assert response.status == 413
        assert response.closed
    finally:
        close_quietly(sock)
    assert log() == []
    assert outcome_of(client.post(server.url(), content=b"{}"))[0] == 204


def test_ten_megabyte_bodies_are_413_and_the_server_memory_stays_flat(
    server: Server, client: httpx.Client, log: Callable[[], list[Event]]
) -> None:
    """Ten 10 MB bodies, half with a Content-Length and half chunked (read until the limit),
    sent in full by a client that does not look before it leaps. Had the server buffered one,
    its peak resident memory would have grown by 10 MB at least."""
    for _ in range(3):  # warm up: code paths, pools and arenas of ordinary deliveries
        assert client.post(server.url(), content=dumps(disconnect())).status_code == 204
    before = server.peak_rss()
    big = b'{"eventType":"disconnect","pad":"' + b"x" * TEN_MB + b'"}'

    for _ in range(5):
        assert client.post(server.url(), content=big).status_code == 413
        pieces = (big[i : i + 65536] for i in range(0, len(big), 65536))
        assert client.post(server.url(), content=pieces).status_code == 413

    grown = server.peak_rss() - before
    assert grown < 4 * 1024 * 1024, f"peak RSS grew by {grown / 1e6:.1f} MB"
    assert len(log()) == 3
    assert client.post(server.url(), content=dumps(disconnect())).status_code == 204


def test_a_chunked_body_past_the_limit_is_413_and_the_connection_closed(
    server: Server, log: Callable[[], list[Event]]
) -> None:
    """The server reads a chunked body only until it passes the limit, not to its end."""
    auth = {"Authorization": _basic(f"{OLD[0]}:{OLD[1]}".encode())}
    sock = connect(server.port)
    try:
        sock.sendall(request_head("POST", CALLBACK, {**auth, "Transfer-Encoding": "chunked"}))
        pieces = (b"x" * 65536 for _ in range(TEN_MB // 65536))
        sent, answered = push_until_answered(sock, chunked(pieces), pause=0.01)
        assert answered
        response = read_response(sock)
        assert response.status == 413
        assert response.closed
        assert MAX_BODY < sent < TEN_MB // 2
    finally:
        close_quietly(sock)
    assert log() == []


def test_slow_clients_that_never_finish_their_body_get_408_and_others_are_served(
    server: Server, client: httpx.Client, log: Callable[[], list[Event]]
) -> None:
    """Three clients at once: one sends part of its body and then nothing; one sends a byte
    every 0.3 s, never silent for long but never done; one never sends the last chunk of a
    chunked body. Each is answered 408 about --body-timeout (2 s) after it began, and its
    connection closed; meanwhile ordinary deliveries are answered promptly. Nothing of the
    slow ones is logged."""
    auth = {"Authorization": _basic(f"{OLD[0]}:{OLD[1]}".encode())}
    partial = dumps(disconnect())
    declared = {**auth, "Content-Length": str(len(partial) + 100)}
    slow: dict[str, tuple[socket.socket, float]] = {}
    for style in ("stalled", "dripping", "chunked-unfinished"):
        sock = connect(server.port)
        slow[style] = (sock, time.monotonic())
        if style == "chunked-unfinished":
            sock.sendall(request_head("POST", CALLBACK, {**auth, "Transfer-Encoding": "chunked"}))
            sock.sendall(f"{len(partial):x}\r\n".encode() + partial + b"\r\n")
        else:
            sock.sendall(request_head("POST", CALLBACK, declared) + partial)
    dripping = slow["dripping"][0]

    def drip() -> None:
        while not readable(dripping, 0.3):
            try:
                dripping.sendall(b" ")
            except OSError:
                return

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        others = [dumps(disconnect()) for _ in range(5)]
        for body in others:
            sent_at = time.monotonic()
            assert outcome_of(client.post(server.url(), content=body)) == (204, "applied", None)
            assert time.monotonic() - sent_at < 1.0

        for style, (sock, started) in slow.items():
            response = read_response(sock, timeout=BODY_TIMEOUT + 10.0)
            waited = time.monotonic() - started
            assert response.status == 408, style
            assert response.closed, style
            assert BODY_TIMEOUT * 0.9 <= waited < BODY_TIMEOUT + 5.0, (style, waited)
        dripper.join(5.0)
    finally:
        for sock, _started in slow.values():
            close_quietly(sock)
    assert [entry.body for entry in log()] == others
    assert httpx.get(server.url("/healthz")).status_code == 200
    assert "Traceback" not in server.stderr
