"""The webhook endpoint (issue 8): `tracker serve` as a real process, a real HTTP client.

Every test starts `tracker --db URL serve` on a loopback port of its own (tests/http_server.py)
against a database of its own (tests/conftest.py), and talks to it with httpx, or over a plain
socket where a client must misbehave on purpose (a body that never ends, a body announced but not
sent). What the server did is read back from the database with `Tracker`, never from the
server's own word alone: a `204` promises that the delivery is in the log.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import socket
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url

from tests.http_server import (
    Server,
    chunked,
    close_quietly,
    connect,
    migrate,
    push_until_answered,
    read_response,
    readable,
    request_head,
)
from tracker import Call, Event, StorageError, Tracker
from tracker.schema import alembic_config, head_revision
from tracker.testing import (
    answer,
    disconnect,
    initiate,
    new_call_id,
    realistic_bodies,
    relayed,
    transfer_disconnect,
)

# Two pairs valid at once, as during a rotation: the old one still configured at Bandwidth for
# some applications, the new one for others. The new password holds a colon and non-ASCII text
# (the realm says charset="UTF-8"; only the user name ends at the first colon).
OLD = ("bandwidth-2025", "0ld-s3cret")
NEW = ("bandwidth-2026", "n3w:sécret")
CREDENTIALS = f"{OLD[0]}:{OLD[1]},{NEW[0]}:{NEW[1]}"
REALM = 'Basic realm="tracker", charset="UTF-8"'
OUTCOME = "x-tracker-outcome"
REASON = "x-tracker-reason"
CALLBACK = "/bandwidth/voice/status"
BODY_TIMEOUT = 2.0  # --body-timeout of the servers under test
MAX_BODY = 1_048_576  # the default --max-body-bytes
TEN_MB = 10 * 1024 * 1024

# Status codes and the load tests need a database server's failure modes and its concurrency:
# SQLite and PostgreSQL (MariaDB's lock timeouts are separate settings; see test_faults.py).
SQLITE_AND_POSTGRESQL = pytest.mark.parametrize("backend", ["sqlite", "postgresql"])


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def serve(database_url: str, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start `tracker serve` on the test's migrated database: `serve(*serve options,
    global_options=(...), credentials=...)`. Every server started is stopped afterwards."""
    migrate(database_url)
    started: list[Server] = []

    def start(
        *serve_options: str,
        global_options: Sequence[str] = (),
        credentials: str | None = CREDENTIALS,
    ) -> Server:
        server = Server(
            database_url,
            tmp_path / "server",
            serve_options=("--body-timeout", str(BODY_TIMEOUT), *serve_options),
            global_options=tuple(global_options),
            credentials=credentials,
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.close()


@pytest.fixture
def server(serve: Callable[..., Server]) -> Server:
    return serve()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(auth=OLD, timeout=30.0) as instance:
        yield instance


@pytest.fixture
def log(database_url: str) -> Iterator[Callable[[], list[Event]]]:
    """The event log as the database holds it now, read by a tracker of the test's own."""
    with Tracker(database_url) as reader:
        yield reader.events


def dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def outcome_of(response: httpx.Response) -> tuple[int, str | None, str | None]:
    return response.status_code, response.headers.get(OUTCOME), response.headers.get(REASON)


# --- 204: every outcome ----------------------------------------------------------------------


@SQLITE_AND_POSTGRESQL
def test_every_outcome_is_answered_204_with_its_outcome_and_reason_once_logged(
    server: Server, client: httpx.Client, log: Callable[[], list[Event]]
) -> None:
    ended = disconnect()
    conflicting = disconnect(ended["callId"], cause="busy")
    deliveries = [
        (dumps(ended), ("applied", None)),
        (dumps(ended), ("duplicate", None)),
        (json.dumps(ended, indent=2, sort_keys=True).encode(), ("duplicate", None)),
        (dumps(conflicting), ("rejected", "conflicting_terminal_event")),
        (b"{not json", ("invalid", "not_json")),
        (b'{"eventType":"dtmf","callId":"c-1"}', ("ignored", "untracked_event_type")),
    ]

    for body, (outcome, reason) in deliveries:
        response = client.post(server.url(), content=body)
        assert outcome_of(response) == (204, outcome, reason), body
        assert response.content == b""
        # Each 204 promises the delivery is committed: it is in the log before the next is sent.
        assert log()[-1].body == body

    logged = log()
    assert [(entry.body, (entry.outcome, entry.reason)) for entry in logged] == deliveries


@SQLITE_AND_POSTGRESQL
def test_any_path_but_the_operator_endpoints_takes_callbacks(
    server: Server, client: httpx.Client, log: Callable[[], list[Event]]
) -> None:
    bodies = []
    for path in ["/", "/voice", "/bandwidth/voice/status", "/a/b/c/d?x=1", "/healthz/x"]:
        body = dumps(disconnect())
        response = client.post(server.url(path), content=body)
        assert outcome_of(response) == (204, "applied", None), path
        bodies.append(body)
    assert [entry.body for entry in log()] == bodies


# --- 405 -----------------------------------------------------------------------------------


@SQLITE_AND_POSTGRESQL
def test_other_methods_on_the_callback_path_are_405_allow_post(
    server: Server, client: httpx.Client, log: Callable[[], list[Event]]
) -> None:
    for method in ["GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]:
        response = client.request(method, server.url(), content=dumps(disconnect()))
        assert response.status_code == 405, method
        assert response.headers["allow"] == "POST", method
    assert log() == []


# --- /healthz and /metrics ----------------------------------------------------------------------


@SQLITE_AND_POSTGRESQL
def test_healthz_is_200_ok_without_credentials(server: Server) -> None:
    """No Authorization header: a load balancer's probe carries none."""
    response = httpx.get(server.url("/healthz"))
    assert response.status_code == 200
    assert response.text.strip() == "ok"


@SQLITE_AND_POSTGRESQL
def test_a_path_that_only_ends_like_an_operator_endpoint_is_a_callback_path(
    server: Server, client: httpx.Client, log: Callable[[], list[Event]]
) -> None:
    """The app's own paths are `/healthz` and `/metrics` below where it is mounted (the mount
    test covers a host's prefix); any other path, whatever its last segment, takes callbacks."""
    for path in ("/bandwidth/voice/healthz", "/bandwidth/voice/metrics"):
        answer = client.get(server.url(path))
        assert (answer.status_code, answer.headers["allow"]) == (405, "POST")
        assert client.post(server.url(path), content=b"not json").status_code == 204
    assert [entry.reason for entry in log()] == ["not_json", "not_json"]


@SQLITE_AND_POSTGRESQL
def test_healthz_is_503_while_the_schema_is_not_current(server: Server, database_url: str) -> None:
    """Someone restored an older database under the running server: not healthy until the
    schema is current again."""
    previous = _previous_revision()
    assert httpx.get(server.url("/healthz")).status_code == 200
    with _admin(database_url) as admin:
        admin.execute(text("UPDATE tracker_alembic_version SET version_num = :v"), {"v": previous})
        response = httpx.get(server.url("/healthz"))
        assert response.status_code == 503
        admin.execute(
            text("UPDATE tracker_alembic_version SET version_num = :v"), {"v": head_revision()}
        )
    assert httpx.get(server.url("/healthz")).status_code == 200


@pytest.mark.parametrize("backend", ["postgresql"])
def test_healthz_is_503_while_the_database_does_not_answer_in_time(
    serve: Callable[..., Server], database_url: str
) -> None:
    """The version table locked by another session: the health check's read waits the
    server's --timeout, then the answer is 503 (not a hung probe); 200 once the lock goes."""
    server = serve(global_options=("--timeout", "1"))
    assert httpx.get(server.url("/healthz")).status_code == 200
    engine = create_engine(database_url)
    try:
        with engine.connect() as locker:
            locker.execute(text("LOCK TABLE tracker_alembic_version IN ACCESS EXCLUSIVE MODE"))
            started = time.monotonic()
            response = httpx.get(server.url("/healthz"), timeout=30.0)
            assert response.status_code == 503
            assert time.monotonic() - started < 10.0
            locker.rollback()
        assert httpx.get(server.url("/healthz")).status_code == 200
    finally:
        engine.dispose()


@SQLITE_AND_POSTGRESQL
def test_metrics_count_deliveries_by_outcome_groups_live_calls_and_storage_errors(
    server: Server, client: httpx.Client
) -> None:
    ringing, talking, ended = new_call_id(), new_call_id(), disconnect()
    bodies = [
        dumps(initiate(ringing)),
        dumps(answer(talking)),
        dumps(ended),
        dumps(ended),
        b"",
        b'{"eventType":"gather","callId":"c-2"}',
    ]
    for body in bodies:
        assert client.post(server.url(), content=body).status_code == 204

    response = httpx.get(server.url("/metrics"))  # no credentials needed

    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    samples = _samples(response.text)
    deliveries = {
        (labels["outcome"], labels["reason"]): value
        for name, labels, value in samples
        if name == "tracker_deliveries_total"
    }
    assert deliveries == {
        ("applied", ""): 3,
        ("duplicate", ""): 1,
        ("invalid", "not_json"): 1,
        ("ignored", "untracked_event_type"): 1,
    }
    values = {name: value for name, labels, value in samples if not labels}
    assert values["tracker_apply_seconds_count"] == len(bodies)
    assert values["tracker_group_size_count"] >= 1
    assert values["tracker_group_size_sum"] == len(bodies)
    assert values["tracker_live_calls"] == 2  # one initiated, one answered; the third ended
    assert values["tracker_storage_errors_total"] == 0


# --- 503 on StorageError ----------------------------------------------------------------------


@SQLITE_AND_POSTGRESQL
def test_storage_error_is_503_with_retry_after_to_its_group_only_and_nothing_logged(
    serve: Callable[..., Server],
    backend: str,
    database_url: str,
    client: httpx.Client,
    log: Callable[[], list[Event]],
) -> None:
    """Another session holds the write lock longer than the server's --timeout (2 s): the group
    waiting on it fails with StorageError, and its request is answered 503 with Retry-After.
    A request that arrived while that group was being written belongs to the next group; the
    lock is released the moment the 503 arrives, so the next group commits and its request is
    answered 204: only the failed group hears of the failure. Nothing of the 503 is logged."""
    server = serve(global_options=("--timeout", "2"))
    first, second = dumps(disconnect()), dumps(disconnect())

    with _write_lock(backend, database_url) as release:
        answers: dict[str, httpx.Response] = {}
        failing = threading.Thread(
            target=lambda: answers.setdefault("first", client.post(server.url(), content=first))
        )
        failing.start()
        time.sleep(0.5)  # the first group is now waiting on the lock
        with httpx.Client(auth=NEW, timeout=30.0) as other:
            next_group = threading.Thread(
                target=lambda: answers.setdefault(
                    "second", other.post(server.url(), content=second)
                )
            )
            next_group.start()
            failing.join(30.0)
            release()
            next_group.join(30.0)

    assert answers["first"].status_code == 503
    assert answers["first"].headers["retry-after"] == "5"
    assert outcome_of(answers["second"]) == (204, "applied", None)
    assert [entry.body for entry in log()] == [second]

    # Bandwidth (or the operator) delivers it again, and now it goes in.
    assert outcome_of(client.post(server.url(), content=first)) == (204, "applied", None)
    assert [entry.body for entry in log()] == [second, first]
    metrics = {name: value for name, labels, value in _samples(_metrics_text(server)) if not labels}
    assert metrics["tracker_storage_errors_total"] == 1
    assert httpx.get(server.url("/healthz")).status_code == 200


# --- a group is not a unit of failure -------------------------------------------------------------


REFUSED_TAG = "refuse-me"


@pytest.mark.parametrize("refused_at", [0, 2, 8])
def test_a_body_the_database_refuses_fails_alone_and_the_rest_of_its_group_is_written(
    serve: Callable[..., Server],
    backend: str,
    database_url: str,
    tmp_path: Path,
    log: Callable[[], list[Event]],
    refused_at: int,
) -> None:
    """The database refuses one chosen body (a CHECK constraint the test adds; a trigger on
    SQLite, which cannot add one to a table) in the middle of a group of nine that arrive while
    the group before is held up by a lock: the refused body alone is answered 503 with
    Retry-After and nothing of it is written; each of the other eight is answered 204 with the
    outcome it would have had without the refused one, and is in the log in arrival order."""
    server = serve(global_options=("--timeout", "60"))
    blocker = dumps(disconnect())
    ended = disconnect()
    refused = disconnect(tag=REFUSED_TAG)
    others = [
        dumps(ended),
        dumps(disconnect(ended["callId"], cause="busy")),
        dumps(ended),
        b"{not json",
        b'{"eventType":"dtmf","callId":"c-1"}',
        dumps(disconnect()),
        dumps(transfer_disconnect(refused["callId"])),
        dumps(disconnect()),
    ]
    group = [*others[:refused_at], dumps(refused), *others[refused_at:]]
    _refuse_tag(backend, database_url, REFUSED_TAG)

    answers = _deliver_as_one_group(server, backend, database_url, blocker, group)

    assert answers[0].status_code == 204
    refused_answer = answers[1 + refused_at]
    assert refused_answer.status_code == 503
    assert refused_answer.headers["retry-after"] == "5"
    assert OUTCOME not in refused_answer.headers
    expected = _outcomes_alone([blocker, *others], tmp_path)
    got = [outcome_of(response) for response in answers if response is not refused_answer]
    assert got == [(204, outcome, reason) for outcome, reason in expected]
    assert {outcome for outcome, _reason in expected} >= {"applied", "duplicate", "rejected"}
    assert [entry.body for entry in log()] == [blocker, *others]
    # Not half-written: every call, the refused one's included (its leg made it known), is
    # what the bodies applied without it make.
    with Tracker(database_url) as reader, Tracker(f"sqlite:///{tmp_path / 'alone.db'}") as alone:
        assert facts(reader.calls()) == facts(alone.calls())
    metrics = {name: value for name, labels, value in _samples(_metrics_text(server)) if not labels}
    assert metrics["tracker_storage_errors_total"] == 1
    assert metrics["tracker_unexpected_errors_total"] == 0
    assert metrics["tracker_group_size_sum"] == 1 + len(others)

    # Once the database takes it, its redelivery goes in as if it had never been tried.
    _refuse_tag(backend, database_url, None)
    again = httpx.post(server.url(), content=dumps(refused), auth=OLD, timeout=30.0)
    assert outcome_of(again) == (204, "applied", None)
    assert [entry.body for entry in log()] == [blocker, *others, dumps(refused)]


def test_storage_error_tells_a_database_out_of_reach_from_one_that_refused_the_delivery(
    backend: str, database_url: str, tmp_path: Path
) -> None:
    """The endpoint splits a failed group by this: a refused delivery is `unavailable=False`
    (the others may go in without it); a lock it waited for in vain, or a database it cannot
    reach, is `unavailable=True` (every part of the group would fail the same way, and wait
    as long)."""
    migrate(database_url)
    _refuse_tag(backend, database_url, REFUSED_TAG)
    unreachable = {
        "sqlite": f"sqlite:///{tmp_path / 'no-such-directory' / 'tracker.db'}",
        "postgresql": "postgresql+psycopg://postgres@127.0.0.1:1/tracker",
        "mariadb": "mysql+pymysql://root@127.0.0.1:1/tracker",
    }[backend]
    with Tracker(database_url, timeout=1) as tracker:
        with pytest.raises(StorageError) as refused:
            tracker.apply_many([dumps(disconnect()), dumps(disconnect(tag=REFUSED_TAG))])
        assert refused.value.unavailable is False
        with _write_lock(backend, database_url), pytest.raises(StorageError) as locked:
            tracker.apply_many([dumps(disconnect()), dumps(disconnect())])
        assert locked.value.unavailable is True
        assert tracker.events() == []
    with Tracker(unreachable, timeout=1) as tracker, pytest.raises(StorageError) as out_of_reach:
        tracker.apply_many([dumps(disconnect()), dumps(disconnect())])
    assert out_of_reach.value.unavailable is True


def test_an_unexpected_error_fails_its_own_delivery_alone_counted_and_answered_503(
    serve: Callable[..., Server],
    backend: str,
    database_url: str,
    tmp_path: Path,
    log: Callable[[], list[Event]],
) -> None:
    """A stored call the tracker cannot read (its history edited by hand into text that is
    not JSON) makes applying a delivery to it raise a ValueError, no StorageError: that
    delivery alone is answered 503 with Retry-After (not a bare 500), and counted in
    `tracker_unexpected_errors_total`; the rest of its group is written as if alone."""
    server = serve(global_options=("--timeout", "60"))
    broken = initiate(new_call_id())
    first = httpx.post(server.url(), content=dumps(broken), auth=OLD, timeout=30.0)
    assert outcome_of(first) == (204, "applied", None)
    with _admin(database_url) as admin:
        admin.execute(
            text("UPDATE tracker_calls SET history = '{not json' WHERE call_id = :id"),
            {"id": broken["callId"]},
        )
    blocker = dumps(disconnect())
    others = [dumps(disconnect()), dumps(answer(new_call_id())), b"[]", dumps(disconnect())]
    group = [*others[:2], dumps(disconnect(broken["callId"])), *others[2:]]

    answers = _deliver_as_one_group(server, backend, database_url, blocker, group)

    failed = answers[3]
    assert (failed.status_code, failed.headers["retry-after"]) == (503, "5")
    expected = _outcomes_alone([dumps(broken), blocker, *others], tmp_path)[1:]
    got = [outcome_of(response) for response in answers if response is not failed]
    assert got == [(204, outcome, reason) for outcome, reason in expected]
    assert [entry.body for entry in log()] == [dumps(broken), blocker, *others]
    metrics = {name: value for name, labels, value in _samples(_metrics_text(server)) if not labels}
    assert metrics["tracker_unexpected_errors_total"] == 1
    assert metrics["tracker_storage_errors_total"] == 0
    assert "ValueError" in server.stderr
    assert httpx.get(server.url("/healthz")).status_code == 200


# --- the queue is bounded ----------------------------------------------------------------------


def test_past_max_queue_waiting_deliveries_a_request_is_503_at_once_and_counted(
    serve: Callable[..., Server],
    backend: str,
    database_url: str,
    log: Callable[[], list[Event]],
) -> None:
    """--max-queue 2, and the group being written held up by a lock the test holds: two more
    deliveries wait, and the next is answered 503 with Retry-After while the lock is still
    held (at once, not once the queue drains), counted in `tracker_queue_full_total`, and not
    logged. Once the lock goes, the three held are written; the refused one, sent again, too."""
    server = serve("--max-queue", "2", global_options=("--timeout", "60"))
    held = [dumps(disconnect()) for _ in range(3)]
    turned_away = dumps(disconnect())
    with _write_lock(backend, database_url) as release:
        senders = _send_one_by_one(server, held)
        response = httpx.post(server.url(), content=turned_away, auth=OLD, timeout=30.0)
        assert (response.status_code, response.headers["retry-after"]) == (503, "5")
        assert "waiting" in response.text
        assert _metric_values(server)["tracker_queue_full_total"] == 1
        release()
        answers = senders.join()
    assert [outcome_of(answer) for answer in answers] == [(204, "applied", None)] * 3
    assert [entry.body for entry in log()] == held
    again = httpx.post(server.url(), content=turned_away, auth=OLD, timeout=30.0)
    assert outcome_of(again) == (204, "applied", None)
    assert _metric_values(server)["tracker_queued_deliveries"] == 0


# --- 401: authentication -----------------------------------------------------------------------


def _basic(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode()


BAD_AUTHORIZATION = {
    "wrong user": _basic(b"bandwidth-2024:" + OLD[1].encode()),
    "wrong password": _basic(OLD[0].encode() + b":0ld-s3cret!"),
    "old user, new password": _basic(f"{OLD[0]}:{NEW[1]}".encode()),
    "new user, old password": _basic(f"{NEW[0]}:{OLD[1]}".encode()),
    "password cut at its colon": _basic(f"{NEW[0]}:n3w".encode()),
    "empty password": _basic(OLD[0].encode() + b":"),
    "empty": "",
    "scheme only": "Basic",
    "not base64": "Basic !!!not-base64!!!",
    "no colon": _basic(OLD[0].encode()),
    "other scheme": "Bearer " + base64.b64encode(f"{OLD[0]}:{OLD[1]}".encode()).decode(),
    "no scheme": base64.b64encode(f"{OLD[0]}:{OLD[1]}".encode()).decode(),
    "latin-1 password": _basic(NEW[0].encode() + b":" + NEW[1].encode("latin-1")),
}


@SQLITE_AND_POSTGRESQL
def test_missing_wrong_or_malformed_credentials_are_401_and_nothing_is_logged(
    server: Server, log: Callable[[], list[Event]]
) -> None:
    body = dumps(disconnect())
    cases: dict[str, dict[str, str]] = {"no header": {}}
    cases.update({name: {"Authorization": value} for name, value in BAD_AUTHORIZATION.items()})
    with httpx.Client(timeout=30.0) as anonymous:
        for name, headers in cases.items():
            response = anonymous.post(server.url(), content=body, headers=headers)
            assert response.status_code == 401, name
            assert response.headers["www-authenticate"] == REALM, name
            assert OUTCOME not in response.headers, name
    assert log() == []


@SQLITE_AND_POSTGRESQL
def test_each_of_two_rotated_credential_pairs_is_accepted(
    server: Server, log: Callable[[], list[Event]]
) -> None:
    bodies = {OLD: dumps(disconnect()), NEW: dumps(disconnect())}
    for pair, body in bodies.items():
        with httpx.Client(auth=pair, timeout=30.0) as authorized:
            assert outcome_of(authorized.post(server.url(), content=body)) == (
                204,
                "applied",
                None,
            )
    # The scheme name is case-insensitive (RFC 7617 / 9110).
    lower = "basic " + base64.b64encode(f"{OLD[0]}:{OLD[1]}".encode()).decode()
    third = dumps(disconnect())
    response = httpx.post(server.url(), content=third, headers={"Authorization": lower})
    assert outcome_of(response) == (204, "applied", None)
    assert [entry.body for entry in log()] == [*bodies.values(), third]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_credentials_from_a_file_one_pair_a_line(
    serve: Callable[..., Server], tmp_path: Path, log: Callable[[], list[Event]]
) -> None:
    path = tmp_path / "credentials"
    path.write_text(f"# rotated 2026-01-01\n{OLD[0]}:{OLD[1]}\n\n{NEW[0]}:{NEW[1]}\n", "utf-8")
    server = serve("--credentials-file", str(path), credentials=None)
    for pair in (OLD, NEW):
        assert httpx.post(server.url(), content=b"x", auth=pair).status_code == 204
    assert httpx.post(server.url(), content=b"x", auth=("other", "x")).status_code == 401
    assert httpx.post(server.url(), content=b"x").status_code == 401
    assert len(log()) == 2


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("source", ["environment", "file"])
def test_two_passwords_of_one_user_are_both_accepted_during_a_rotation(
    serve: Callable[..., Server], tmp_path: Path, log: Callable[[], list[Event]], source: str
) -> None:
    """A Bandwidth application has one user name and one password, so a rotation keeps the
    user: both of its entries hold, from $TRACKER_CALLBACK_CREDENTIALS as from a file."""
    user = "bandwidth"
    old, new = (user, "0ld-s3cret"), (user, "n3w:sécret")
    entries = [f"{user}:{password}" for _user, password in (old, new)]
    if source == "environment":
        server = serve(credentials=",".join(entries))
    else:
        path = tmp_path / "credentials"
        path.write_text("\n".join(entries) + "\n", "utf-8")
        server = serve("--credentials-file", str(path), credentials=None)
    bodies = [dumps(disconnect()), dumps(disconnect())]
    for pair, body in zip((old, new), bodies, strict=True):
        response = httpx.post(server.url(), content=body, auth=pair)
        assert outcome_of(response) == (204, "applied", None)
    assert httpx.post(server.url(), content=b"x", auth=(user, "0ld-s3cret!")).status_code == 401
    assert httpx.post(server.url(), content=b"x", auth=("other", old[1])).status_code == 401
    assert [entry.body for entry in log()] == bodies
    assert "1 user (2 passwords)" in server.stderr


@SQLITE_AND_POSTGRESQL
def test_authentication_comes_before_the_body_is_read(server: Server) -> None:
    """A stranger announcing 10 MB is turned away with 401, not 413, and before sending any."""
    sock = connect(server.port)
    try:
        sock.sendall(request_head("POST", CALLBACK, {"Content-Length": str(TEN_MB)}))
        assert readable(sock, 10.0), "no answer to the head alone"
        assert read_response(sock).status == 401
    finally:
        close_quietly(sock)


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


# --- starting and stopping ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("schema", ["missing", "behind"])
def test_serve_refuses_a_database_whose_schema_is_not_current(
    database_url: str, tmp_path: Path, schema: str
) -> None:
    if schema == "behind":
        migrate(database_url)
        _set_revision(database_url, _previous_revision())
    server = Server(database_url, tmp_path / "server", credentials=CREDENTIALS)
    server.launch()
    assert server.wait() == 2
    assert "tracker" in server.stderr and "upgrade" in server.stderr
    assert "serving on" not in server.stderr


@pytest.mark.parametrize("backend", ["sqlite"])
def test_serve_without_credentials_refuses_a_non_loopback_address(
    database_url: str, tmp_path: Path
) -> None:
    migrate(database_url)
    server = Server(database_url, tmp_path / "server", host="0.0.0.0", credentials=None)
    server.launch()
    assert server.wait() == 2
    assert "serving on" not in server.stderr
    assert "credentials" in server.stderr.lower()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_serve_without_credentials_on_loopback_warns_and_takes_anyone(
    serve: Callable[..., Server], log: Callable[[], list[Event]]
) -> None:
    server = serve(credentials=None)
    lowered = server.stderr.lower()
    assert "without authentication" in lowered or "unauthenticated" in lowered
    assert httpx.post(server.url(), content=b"{}").status_code == 204
    assert len(log()) == 1


@SQLITE_AND_POSTGRESQL
def test_sigterm_finishes_and_commits_the_deliveries_in_flight_then_exits_0(
    serve: Callable[..., Server],
    backend: str,
    database_url: str,
    client: httpx.Client,
    log: Callable[[], list[Event]],
) -> None:
    """A delivery is waiting on a lock held elsewhere when SIGTERM comes; the lock is released
    after it: the delivery is committed, answered 204, and only then does the server exit 0."""
    server = serve(global_options=("--timeout", "20"))
    body = dumps(disconnect())
    answers: list[httpx.Response] = []
    with _write_lock(backend, database_url) as release:
        sender = threading.Thread(
            target=lambda: answers.append(client.post(server.url(), content=body))
        )
        sender.start()
        time.sleep(0.5)
        server.sigterm()
        time.sleep(0.5)
        assert server.alive(), "the server must wait for the delivery in flight"
        release()
        sender.join(30.0)
    exit_code = server.wait()
    assert [outcome_of(response) for response in answers] == [(204, "applied", None)]
    assert [entry.body for entry in log()] == [body]
    assert exit_code == 0, f"exit code {exit_code}, stderr:\n{server.stderr}"


# --- load ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int | None
    outcome: str | None = None
    reason: str | None = None
    error: str | None = None


def deliver_concurrently(
    url: str,
    bodies: Sequence[bytes],
    connections: int,
    *,
    kill_after: int | None = None,
    kill: Callable[[], None] | None = None,
) -> list[Answer | None]:
    """Send every body once, over `connections` keep-alive connections at once, each taking the
    next body as soon as its last one is answered. With `kill_after`, `kill()` is called when
    that many were answered 204, and no new request is started afterwards (None: not sent)."""
    answers: list[Answer | None] = [None] * len(bodies)
    pending = iter(range(len(bodies)))
    accepted = 0
    stopped = False

    async def connection() -> None:
        nonlocal accepted, stopped
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(auth=OLD, timeout=120.0, limits=limits) as session:
            for index in pending:
                if stopped:
                    return
                try:
                    response = await session.post(url, content=bodies[index])
                except httpx.HTTPError as error:
                    answers[index] = Answer(None, error=repr(error))
                    continue
                answers[index] = Answer(*outcome_of(response))
                if response.status_code == 204:
                    accepted += 1
                    if kill is not None and accepted == kill_after:
                        kill()
                        stopped = True

    async def run() -> None:
        await asyncio.gather(*(connection() for _ in range(connections)))

    asyncio.run(run())
    return answers


def load_bodies(seed: int, count: int) -> list[bytes]:
    """`count` deliveries: a realistic evening's callbacks (every tracked event type), exact
    repeats, re-serialized copies (other spacing and key order: the same delivery), terminal
    events conflicting with earlier ones, bodies that are no callback and untracked event
    types; shuffled, so legs come before parents and answers before their calls."""
    rng = random.Random(seed)
    distinct = realistic_bodies(count * 64 // 100, seed=seed)
    repeats = [rng.choice(distinct) for _ in range(count * 15 // 100)]
    reserialized = [
        relayed(json.loads(rng.choice(distinct)), seed=rng.getrandbits(32))
        for _ in range(count * 12 // 100)
    ]
    ends = [json.loads(body) for body in distinct if b'"eventType":"disconnect"' in body]
    conflicting = [
        dumps({**end, "cause": "busy" if end["cause"] != "busy" else "timeout"})
        for end in rng.sample(ends, count * 4 // 100)
    ]
    untracked = [
        dumps(
            {"eventType": rng.choice(["dtmf", "gather", "recordingComplete"]), "callId": f"c-{n}"}
        )
        for n in range(count * 2 // 100)
    ]
    junk = [b"", b"not json", b"[]", b"{}", b'{"eventType":"disconnect"}', b"\xff"]
    bodies = [*distinct, *repeats, *reserialized, *conflicting, *untracked]
    bodies += [junk[n % len(junk)] for n in range(count - len(bodies))]
    rng.shuffle(bodies)
    assert len(bodies) == count
    return bodies


def serial_replay(entries: Sequence[Event], tmp_path: Path) -> list[tuple[str, str | None]]:
    """The outcome and reason of each body applied one by one with `Tracker.apply`, in the
    order given, into a fresh SQLite database; and that tracker's calls (see `facts`)."""
    replay = Tracker(f"sqlite:///{tmp_path / 'serial.db'}", durable=False)
    replay.upgrade()
    try:
        return [
            (result.outcome.value, result.reason)
            for result in (replay.apply(entry.body) for entry in entries)
        ]
    finally:
        replay.close()


def facts(calls: Sequence[Call]) -> dict[str, Call]:
    """Calls by id, their history without the event ids (a database numbers its log its own way:
    PostgreSQL's sequences skip numbers)."""
    return {
        call.call_id: replace(
            call, history=tuple(replace(step, event_id=0) for step in call.history)
        )
        for call in calls
    }


@pytest.mark.slow
@SQLITE_AND_POSTGRESQL
def test_load_from_64_connections_every_204_is_logged_once_as_a_serial_run_decides(
    server: Server, database_url: str, tmp_path: Path
) -> None:
    """5,000 deliveries over 64 concurrent connections.

    Arrival order among 64 connections is not the send order, and outcomes do depend on order
    (of two conflicting terminal events the first is applied and the second rejected; of two
    copies of one delivery the first is applied), so the reference is the serial run in the
    order the server applied them: the event log, oldest first (one writer applies groups in
    arrival order, so the log's order is the application order). Checked:
    1. every request was answered 204, none failed or raised;
    2. answers and log agree exactly: the multiset of (body, outcome, reason) answered equals the
       multiset logged, so each body answered 204 is in the log once per delivery, no more;
    3. applying the logged bodies one by one with `Tracker.apply`, in log order, into a fresh
       database gives each the outcome and reason the server gave, and the same calls;
    4. the server is still healthy, and its metrics counted every delivery and no error.
    """
    bodies = load_bodies(seed=8, count=5000)
    started = time.monotonic()
    answers = deliver_concurrently(server.url(), bodies, connections=64)
    seconds = time.monotonic() - started

    failed = [answer for answer in answers if answer is None or answer.status != 204]
    assert failed == [], f"{len(failed)} not answered 204, e.g. {failed[:3]}"
    assert server.alive()
    with Tracker(database_url) as reader:
        logged = reader.events()
        calls = facts(reader.calls())
    answered = Counter(
        (body, answer.outcome, answer.reason)
        for body, answer in zip(bodies, answers, strict=True)
        if answer is not None
    )
    assert Counter((entry.body, entry.outcome.value, entry.reason) for entry in logged) == answered
    assert {outcome for _body, outcome, _reason in answered} == {
        "applied",
        "duplicate",
        "rejected",
        "invalid",
        "ignored",
    }

    serial = serial_replay(logged, tmp_path)
    assert [(entry.outcome.value, entry.reason) for entry in logged] == serial
    with Tracker(f"sqlite:///{tmp_path / 'serial.db'}") as reference:
        assert calls == facts(reference.calls())

    assert httpx.get(server.url("/healthz")).status_code == 200
    samples = _samples(_metrics_text(server))
    total = sum(value for name, _labels, value in samples if name == "tracker_deliveries_total")
    assert total == len(bodies)
    errors = [value for name, _labels, value in samples if name == "tracker_storage_errors_total"]
    assert errors == [0]
    # Concurrent requests did share commits: fewer groups than deliveries.
    groups = [value for name, _labels, value in samples if name == "tracker_group_size_count"]
    assert groups and groups[0] < len(bodies)
    assert "Traceback" not in server.stderr
    print(f"load: {len(bodies)} deliveries, 64 connections, {len(bodies) / seconds:.0f}/s")


@pytest.mark.slow
@SQLITE_AND_POSTGRESQL
def test_kill_9_under_load_loses_no_delivery_answered_204(
    serve: Callable[..., Server], database_url: str
) -> None:
    """SIGKILL while 64 connections deliver: no shutdown, no flush. After a restart on the same
    database, every delivery answered 204 before the kill is in the log (a 204 is sent only
    after the commit); deliveries in flight may or may not be, but none is half there: the
    restarted server is healthy and applies their redelivery."""
    server = serve()
    bodies = load_bodies(seed=9, count=3000)
    answers = deliver_concurrently(
        server.url(), bodies, connections=64, kill_after=1200, kill=server.kill
    )
    assert not server.alive()

    accepted = Counter(
        body
        for body, answer in zip(bodies, answers, strict=True)
        if answer and answer.status == 204
    )
    cut_off = [answer for answer in answers if answer is not None and answer.status is None]
    assert sum(accepted.values()) >= 1200
    assert cut_off, "the kill should have cut requests in flight"

    restarted = serve()
    assert httpx.get(restarted.url("/healthz")).status_code == 200
    with Tracker(database_url) as reader:
        logged = Counter(entry.body for entry in reader.events())
    missing = accepted - logged
    assert missing == Counter(), f"{sum(missing.values())} deliveries answered 204 are lost"
    assert logged - Counter(bodies) == Counter(), "the log holds deliveries never sent"

    unanswered = [
        body
        for body, answer in zip(bodies, answers, strict=True)
        if not answer or answer.status != 204
    ]
    redelivered = deliver_concurrently(restarted.url(), unanswered, connections=16)
    assert all(answer is not None and answer.status == 204 for answer in redelivered)
    with Tracker(database_url) as reader:
        assert len(reader.events()) == sum(logged.values()) + len(unanswered)
    assert "Traceback" not in restarted.stderr


# --- helpers -----------------------------------------------------------------------------------


def _samples(exposition: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    ]


def _metrics_text(server: Server) -> str:
    response = httpx.get(server.url("/metrics"))
    assert response.status_code == 200
    return response.text


def _previous_revision() -> str:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config()).get_revision(head_revision())
    assert script is not None and isinstance(script.down_revision, str)
    return script.down_revision


def _set_revision(database_url: str, revision: str) -> None:
    with _admin(database_url) as admin:
        admin.execute(text("UPDATE tracker_alembic_version SET version_num = :v"), {"v": revision})


@contextmanager
def _admin(database_url: str) -> Iterator[Connection]:
    """An autocommitting session on the database, as an operator's console would be."""
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def _metric_values(server: Server) -> dict[str, float]:
    """The server's metrics without labels, by sample name."""
    return {name: value for name, labels, value in _samples(_metrics_text(server)) if not labels}


def _await_metrics(server: Server, **expected: float) -> None:
    """Wait until the server's metrics say `expected` (the state of its queue, which the
    requests in flight reach in their own time); fail if they never do."""
    deadline = time.monotonic() + 30.0
    while True:
        values = _metric_values(server)
        if all(values.get(name) == value for name, value in expected.items()):
            return
        assert time.monotonic() < deadline, f"the server never reached {expected}: {values}"
        time.sleep(0.02)


class _Senders:
    """Requests in flight, each on a thread of its own, answered in their own time."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[httpx.Response | None] = []
        self.threads: list[threading.Thread] = []

    def send(self, body: bytes) -> None:
        index = len(self.answers)
        self.answers.append(None)

        def post() -> None:
            with httpx.Client(auth=OLD, timeout=120.0) as session:
                self.answers[index] = session.post(self.url, content=body)

        thread = threading.Thread(target=post, daemon=True)
        self.threads.append(thread)
        thread.start()

    def join(self) -> list[httpx.Response]:
        for thread in self.threads:
            thread.join(120.0)
        answers = [answer for answer in self.answers if answer is not None]
        assert len(answers) == len(self.answers), "a request was never answered"
        return answers


def _send_one_by_one(server: Server, bodies: Sequence[bytes]) -> _Senders:
    """Send `bodies` while the group being written is held up (by a lock the test holds): the
    first becomes that group, each of the others is sent once the one before it is queued, so
    the queue holds them in this order and they make the next group together."""
    senders = _Senders(server.url())
    for index, body in enumerate(bodies):
        senders.send(body)
        if index == 0:
            _await_metrics(server, tracker_writing_deliveries=1, tracker_queued_deliveries=0)
        else:
            _await_metrics(server, tracker_queued_deliveries=index)
    return senders


def _deliver_as_one_group(
    server: Server, backend: str, database_url: str, first: bytes, group: Sequence[bytes]
) -> list[httpx.Response]:
    """`first` alone in a group held up by a lock, then every body of `group` in one group of
    their own, in this order, once the lock goes: the answers, in the order sent."""
    with _write_lock(backend, database_url) as release:
        senders = _send_one_by_one(server, [first, *group])
        release()
        return senders.join()


def _outcomes_alone(bodies: Sequence[bytes], tmp_path: Path) -> list[tuple[str, str | None]]:
    """The outcome and reason of each body applied one by one into a fresh database."""
    with Tracker(f"sqlite:///{tmp_path / 'alone.db'}", durable=False) as alone:
        alone.upgrade()
        return [(result.outcome.value, result.reason) for result in map(alone.apply, bodies)]


def _refuse_tag(backend: str, database_url: str, tag: str | None) -> None:
    """Make the database refuse to store a call with `tag` (None: stop refusing): a CHECK
    constraint on the servers, triggers on SQLite, which cannot add a constraint to a table."""
    with _admin(database_url) as admin:
        if backend == "sqlite":
            for verb in ("INSERT", "UPDATE"):
                name = f"test_refuse_{verb.lower()}"
                admin.execute(text(f"DROP TRIGGER IF EXISTS {name}"))
                if tag is not None:
                    admin.execute(
                        text(
                            f"CREATE TRIGGER {name} BEFORE {verb} ON tracker_calls "
                            f"WHEN NEW.tag = '{tag}' "
                            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
                        )
                    )
        elif tag is None:
            admin.execute(text("ALTER TABLE tracker_calls DROP CONSTRAINT test_refuse"))
        else:
            admin.execute(
                text(
                    "ALTER TABLE tracker_calls ADD CONSTRAINT test_refuse "
                    f"CHECK (tag IS NULL OR tag <> '{tag}')"
                )
            )


@contextmanager
def _write_lock(backend: str, database_url: str) -> Iterator[Callable[[], None]]:
    """Another session holding what a delivery needs to write, until `release()` (called by the
    `with` body, or on leaving): SQLite's write lock (BEGIN IMMEDIATE); PostgreSQL's ACCESS
    EXCLUSIVE lock on the event log; MariaDB's table lock on it (LOCK TABLES ... WRITE)."""
    released = False
    if backend == "sqlite":
        path = make_url(database_url).database
        assert path is not None
        sqlite = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        sqlite.execute("BEGIN IMMEDIATE")

        def unlock() -> None:
            sqlite.execute("ROLLBACK")
            sqlite.close()

    elif backend == "mariadb":
        engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
        connection = engine.connect()
        connection.execute(text("LOCK TABLES tracker_events WRITE"))

        def unlock() -> None:
            connection.execute(text("UNLOCK TABLES"))
            connection.close()
            engine.dispose()

    else:
        engine = create_engine(database_url)
        connection = engine.connect()
        connection.execute(text("LOCK TABLE tracker_events IN ACCESS EXCLUSIVE MODE"))

        def unlock() -> None:
            connection.rollback()
            connection.close()
            engine.dispose()

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            unlock()

    try:
        yield release
    finally:
        release()
