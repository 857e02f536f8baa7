"""A lost connection or an unreachable database writes nothing, raises StorageError, recovers."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, inspect
from sqlalchemy.engine import make_url

from tests.conftest import fresh_database
from tests.faults_support import (
    COMMIT,
    QUICKLY,
    TABLES,
    Relay,
    default_port,
    faults,
    kill_other_sessions,
    killer,
    migrate,
    table_rows,
    unused_port,
)
from tracker import Outcome, StorageError, Tracker
from tracker.schema import current_revision, head_revision
from tracker.testing import disconnect, transfer_disconnect


@pytest.fixture(params=("postgresql", "mariadb"))
def server_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of its own on each database server (faults of a network connection)."""
    yield from fresh_database(str(request.param), tmp_path)


@pytest.fixture
def admin(database_url: str) -> Iterator[Engine]:
    """Another session on the same database, as an operator's console would be."""
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


# --- a connection killed in the middle of `apply` ----------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO tracker_events",
        "INSERT INTO tracker_calls",
        "UPDATE tracker_calls",
    ],
)
def test_connection_killed_in_the_middle_of_apply_writes_nothing_and_raises_storage_error(
    backend: str, tracker: Tracker, admin: Engine, statement: str
) -> None:
    """PostgreSQL: pg_terminate_backend; MariaDB: KILL; SQLite (no server to kill it): the driver
    fails with a disk I/O error. Each time just before `statement` of the delivery runs."""
    parent = disconnect()
    assert tracker.apply(parent).outcome is Outcome.APPLIED
    leg = json.dumps(transfer_disconnect(parent["callId"]))
    before = table_rows(tracker.engine)

    with (
        faults(tracker.engine, statement, killer(backend, admin)) as struck,
        pytest.raises(StorageError, match=r"^the database failed and nothing of this delivery was"),
    ):
        tracker.apply(leg)
    assert len(struck) == 1, "the fault must strike inside this very delivery, once"

    assert table_rows(tracker.engine) == before
    assert tracker.apply(leg).outcome is Outcome.APPLIED
    assert tracker.apply(leg).outcome is Outcome.DUPLICATE
    found = tracker.get_call(parent["callId"])
    assert found is not None
    assert found.legs == (json.loads(leg)["callId"],)
    assert [entry.outcome for entry in tracker.events()] == [
        Outcome.APPLIED,
        Outcome.APPLIED,
        Outcome.DUPLICATE,
    ]


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_connection_lost_during_commit_says_the_outcome_is_unknown_and_redelivery_is_safe(
    backend: str, tracker: Tracker, admin: Engine
) -> None:
    """The connection dies as the COMMIT goes out: the tracker cannot know whether the server
    committed, so it says so, and asks for the delivery again (never "nothing was written").
    Delivered again, it is applied (the commit was lost) or `duplicate` (it was not): the log
    holds it applied exactly once."""
    body = json.dumps(disconnect())

    with (
        faults(tracker.engine, COMMIT, killer(backend, admin)) as struck,
        pytest.raises(StorageError) as raised,
    ):
        tracker.apply(body)
    assert len(struck) == 1

    message = str(raised.value)
    assert "lost during the commit" in message
    assert "whether it was written is unknown" in message
    assert "deliver it again" in message
    assert "nothing of this delivery was written" not in message
    assert tracker.apply(body).outcome in (Outcome.APPLIED, Outcome.DUPLICATE)
    assert tracker.apply(body).outcome is Outcome.DUPLICATE
    assert [entry.outcome for entry in tracker.events()].count(Outcome.APPLIED) == 1


# --- a database that cannot be reached ---------------------------------------------------------


def test_apply_on_an_unreachable_database_raises_storage_error_quickly(
    backend: str, database_url: str, tmp_path: Path
) -> None:
    """A tracker started while its database is down: the first delivery fails with the documented
    error (the caller answers non-2xx), not with a driver's exception."""
    if backend == "sqlite":
        unreachable = f"sqlite:///{tmp_path / 'no-such-directory' / 'tracker.db'}"
    else:
        unreachable = make_url(database_url).set(port=unused_port()).render_as_string(False)

    with Tracker(unreachable) as tracker:
        started = time.monotonic()
        with pytest.raises(StorageError):
            tracker.apply(disconnect())
    assert time.monotonic() - started < QUICKLY


@pytest.mark.slow
def test_database_unreachable_for_a_while_loses_nothing_and_is_used_again(
    server_url: str,
) -> None:
    """A network outage between a running tracker and its server: deliveries during the outage
    fail with StorageError and leave nothing behind; after it, the same tracker carries on."""
    with Tracker(server_url) as direct:
        direct.upgrade()
    target = make_url(server_url)
    assert target.host is not None
    relay = Relay(target.host, target.port or default_port(server_url))
    before_outage, during_outage = disconnect(), json.dumps(disconnect())
    try:
        through = make_url(server_url).set(host="127.0.0.1", port=relay.port)
        with Tracker(through.render_as_string(False)) as tracker:
            assert tracker.apply(before_outage).outcome is Outcome.APPLIED

            relay.cut()
            started = time.monotonic()
            with pytest.raises(StorageError):
                tracker.apply(during_outage)
            assert time.monotonic() - started < QUICKLY
            with Tracker(server_url) as direct:
                assert [entry.call_id for entry in direct.events()] == [before_outage["callId"]]
                assert direct.get_call(json.loads(during_outage)["callId"]) is None

            relay.restore()
            assert tracker.apply(during_outage).outcome is Outcome.APPLIED
            assert tracker.apply(before_outage).outcome is Outcome.DUPLICATE
    finally:
        relay.cut()


def test_idle_pooled_connections_dropped_by_the_server_are_replaced(
    server_url: str,
) -> None:
    """A server restart or an idle timeout kills the pool's connections; the next delivery must
    not fail for it (its first statement finds the kept connection dead, and the delivery runs
    again on a fresh one)."""
    with Tracker(server_url) as tracker:
        tracker.upgrade()
        assert tracker.apply(disconnect()).outcome is Outcome.APPLIED

        killed = kill_other_sessions(server_url)

        assert killed >= 1, "the tracker's pooled connection should have been killed"
        assert tracker.apply(disconnect()).outcome is Outcome.APPLIED


def test_deliveries_send_no_ping(server_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A round trip per delivery to ask whether the connection is alive would cost as much as a
    statement: the kept connection's first statement tells."""
    with Tracker(server_url) as tracker:
        tracker.upgrade()
        assert tracker.apply(disconnect()).outcome is Outcome.APPLIED
        pings: list[object] = []
        ping = type(tracker.engine.dialect).do_ping
        monkeypatch.setattr(
            type(tracker.engine.dialect),
            "do_ping",
            lambda dialect, connection: pings.append(connection) or ping(dialect, connection),
        )
        for _ in range(5):
            assert tracker.apply(disconnect()).outcome is Outcome.APPLIED
        assert pings == []


def test_sqlite_locked_for_a_while_by_another_writer_makes_apply_wait_not_fail(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tracker.db"
    with Tracker(f"sqlite:///{path}") as tracker:
        tracker.upgrade()
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN EXCLUSIVE")
        release = threading.Timer(1.5, other.execute, args=("COMMIT",))
        release.start()
        try:
            started = time.monotonic()
            assert tracker.apply(disconnect()).outcome is Outcome.APPLIED
            assert time.monotonic() - started >= 1.0, "apply should have waited for the lock"
        finally:
            release.join()
            other.close()


def test_apply_waiting_in_vain_for_a_free_connection_raises_storage_error(
    database_url: str,
) -> None:
    """More deliveries in flight than connections, and none freed in time (a stalled server):
    the delivery fails with the documented error, so the webhook answers non-2xx."""
    migrate(database_url)
    engine = create_engine(database_url, pool_size=1, max_overflow=0, pool_timeout=0.5)
    body = json.dumps(disconnect())
    with Tracker(engine) as tracker:
        tracker.get_call("warm-up")
        with engine.connect(), pytest.raises(StorageError):  # the pool's only connection
            tracker.apply(body)

        assert tracker.apply(body).outcome is Outcome.APPLIED


# --- an upgrade interrupted --------------------------------------------------------------------


def test_upgrade_interrupted_by_a_lost_connection_raises_storage_error_and_can_be_run_again(
    backend: str, database_url: str, admin: Engine
) -> None:
    """A worker's start-up `upgrade()` loses its connection half-way through the first
    migration. It fails with the documented error, and the next `upgrade()` completes the schema
    (MariaDB cannot roll DDL back, so whatever the first one built must not block the second)."""
    with Tracker(database_url) as tracker:
        with (
            # Every engine: on a server the upgrade runs on an engine of its own, one without
            # the delivery timeout.
            faults(Engine, "CREATE TABLE .*tracker_transfers", killer(backend, admin)),
            pytest.raises(StorageError),
        ):
            tracker.upgrade()

        tracker.upgrade()

        assert set(TABLES) <= set(inspect(tracker.engine).get_table_names())
        with tracker.engine.connect() as connection:
            assert current_revision(connection) == head_revision()
        assert tracker.apply(disconnect()).outcome is Outcome.APPLIED
