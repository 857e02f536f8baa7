"""Every callback is answered 204 with its outcome; other methods 405; /healthz and /metrics."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import create_engine, text

from tests.http_server import (
    Server,
)
from tests.http_support import (
    SQLITE_AND_POSTGRESQL,
    _admin,
    _previous_revision,
    _samples,
    dumps,
    outcome_of,
)
from tracker import Event
from tracker.schema import head_revision
from tracker.testing import (
    answer,
    disconnect,
    initiate,
    new_call_id,
)

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
