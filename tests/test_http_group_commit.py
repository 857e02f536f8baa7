"""A storage error is 503 to its group only, a refused body fails alone, the queue is bounded."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from tests.http_server import (
    Server,
    migrate,
)
from tests.http_support import (
    NEW,
    OLD,
    OUTCOME,
    SQLITE_AND_POSTGRESQL,
    _admin,
    _deliver_as_one_group,
    _metric_values,
    _metrics_text,
    _outcomes_alone,
    _refuse_tag,
    _samples,
    _send_one_by_one,
    _write_lock,
    dumps,
    facts,
    outcome_of,
)
from tracker import Event, StorageError, Tracker
from tracker.testing import (
    answer,
    disconnect,
    initiate,
    new_call_id,
    transfer_disconnect,
)

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
