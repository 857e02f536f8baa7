"""What the database refuses is told apart from bugs; lost races are retried and applied once."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import event
from sqlalchemy.exc import DataError, InvalidRequestError

from tests.faults_support import (
    LOSSES,
    QUICKLY,
    SQLITE_VALUE_LIMIT,
    TABLES,
    _limit_sqlite_values,
    faults,
    losing,
    narrow_tag,
    refuse_tag,
    table_rows,
)
from tracker import Outcome, StorageError, Tracker
from tracker.testing import disconnect

# --- what the database refuses: a bug to report, not a failing server ----------------------------


def test_a_value_the_database_refuses_is_reported_as_refused_data_and_nothing_is_written(
    backend: str, database_url: str
) -> None:
    """A value too long for its column, refused by the database itself: PostgreSQL and MariaDB
    (strict mode) for a `tag` column narrowed by the test, SQLite for a body over a length limit
    set on its connections. The message tells a bug to report from a failing server."""
    with Tracker(database_url) as tracker:
        if backend == "sqlite":
            event.listen(tracker.engine, "connect", _limit_sqlite_values)
        tracker.upgrade()
        narrow_tag(tracker.engine, backend)
        short = disconnect(tag="short")
        assert tracker.apply(short).outcome is Outcome.APPLIED
        before = table_rows(tracker.engine)
        too_long = disconnect(tag="x" * (SQLITE_VALUE_LIMIT + 1000))

        for batch in ([too_long], [disconnect(), too_long]):
            with pytest.raises(StorageError) as raised:
                tracker.apply_many(batch)

            message = str(raised.value)
            assert "the database refused this data" in message
            assert "a bug in the tracker" in message
            assert "nothing of it was written" in message
            assert ("these deliveries" if len(batch) > 1 else "this delivery") in message
            assert "the database failed" not in message
            assert isinstance(raised.value.__cause__, DataError)
            assert table_rows(tracker.engine) == before


def test_a_constraint_the_tracker_breaks_is_reported_as_a_bug_apart_from_refused_data(
    backend: str, database_url: str
) -> None:
    """A CHECK constraint the test adds (a trigger on SQLite, which cannot add one to a table):
    an `IntegrityError` that is no race is not retried, and says so."""
    with Tracker(database_url) as tracker:
        tracker.upgrade()
        refuse_tag(tracker.engine, backend, "refused")
        with pytest.raises(StorageError) as raised:
            tracker.apply(disconnect(tag="refused"))

        message = str(raised.value)
        assert "a database constraint refused this delivery" in message
        assert "a bug in the tracker" in message
        assert "the database refused this data" not in message
        assert table_rows(tracker.engine) == {table: [] for table in TABLES}
        assert tracker.apply(disconnect(tag="accepted")).outcome is Outcome.APPLIED


@pytest.mark.parametrize("batch", [1, 3], ids=["apply", "apply_many"])
def test_an_error_of_sqlalchemy_itself_is_a_storage_error_and_writes_nothing(
    backend: str, tracker: Tracker, batch: int
) -> None:
    """Not the database's answer but SQLAlchemy's own refusal (as a dialect without INSERT ...
    RETURNING for many rows gave): never a raw SQLAlchemy error out of `apply`."""
    refusal = losing(InvalidRequestError("this dialect cannot run the statement"))
    bodies = [json.dumps(disconnect()) for _ in range(batch)]

    with faults(tracker.engine, "INSERT INTO tracker_calls", refusal, refusal) as struck:
        with pytest.raises(StorageError) as raised:
            tracker.apply_many(bodies)
        assert len(struck) == 1
        with (
            tracker.engine.connect() as connection,
            connection.begin(),
            pytest.raises(StorageError) as in_host_transaction,
        ):
            tracker.apply_many(bodies, connection=connection)
        assert len(struck) == 2

    assert "a bug in the tracker" in str(raised.value)
    assert "a bug in the tracker" in str(in_host_transaction.value)
    assert table_rows(tracker.engine) == {table: [] for table in TABLES}
    assert [result.outcome for result in tracker.apply_many(bodies)] == [Outcome.APPLIED] * batch


# --- races lost to deadlocks and serialization failures ----------------------------------------


def test_delivery_losing_to_deadlocks_and_serialization_failures_is_retried_and_applied_once(
    backend: str, tracker: Tracker
) -> None:
    """The database picks a transaction as the loser (PostgreSQL 40P01/40001, MariaDB 1213,
    SQLite SQLITE_BUSY_SNAPSHOT): the tracker rolls back and tries again, invisibly."""
    body = disconnect()
    losses = LOSSES[backend] * 2

    with faults(tracker.engine, "INSERT INTO tracker_calls", *losses) as struck:
        result = tracker.apply(body)

    assert result.outcome is Outcome.APPLIED
    assert len(struck) == len(losses) + 1  # every loss, then the attempt that went through
    assert [entry.outcome for entry in tracker.events()] == [Outcome.APPLIED]
    call = tracker.get_call(body["callId"])
    assert call is not None
    assert [(step.source, step.target) for step in call.history] == [
        ("initiated", "answered"),
        ("answered", "disconnected"),
    ]


def test_delivery_that_keeps_losing_gives_up_after_max_attempts_and_writes_nothing(
    backend: str, database_url: str
) -> None:
    attempts = 6
    with Tracker(database_url, max_attempts=attempts) as tracker:
        tracker.upgrade()
        always_losing = LOSSES[backend] * attempts * 2

        with faults(tracker.engine, "INSERT INTO tracker_calls", *always_losing) as struck:
            started = time.monotonic()
            with pytest.raises(StorageError):
                tracker.apply(disconnect())
            seconds = time.monotonic() - started

        assert len(struck) == attempts
        assert seconds < QUICKLY
        assert table_rows(tracker.engine) == {table: [] for table in TABLES}


def test_retries_pause_with_a_bounded_jittered_growing_backoff(
    sqlite_tracker: Tracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers that collided must not collide again in lockstep: each pause is random, pauses
    grow from one attempt to the next, and none is long enough to stall a webhook."""
    pauses: list[float] = []
    monkeypatch.setattr(time, "sleep", pauses.append)
    sequences: list[list[float]] = []
    for _ in range(2):
        pauses.clear()
        with faults(sqlite_tracker.engine, "INSERT INTO tracker_calls", *LOSSES["sqlite"] * 5):
            assert sqlite_tracker.apply(disconnect()).outcome is Outcome.APPLIED
        sequences.append(list(pauses))

    for sequence in sequences:
        assert len(sequence) == 5
        assert all(0 < pause <= 1.0 for pause in sequence)
        assert sequence[-1] > sequence[0]
    assert sequences[0] != sequences[1], "the pauses must be jittered, not a fixed schedule"
