"""The host's transaction: `apply(..., connection=...)` writes inside a
transaction the host holds, on a Connection or an ORM Session. The host's rows and the tracker's
commit or roll back together; the tracker neither commits nor retries; a lost race raises
`ConflictError` and leaves the host's transaction usable (where the database keeps it), for the
host to roll back and run again.

The host's own table is made here with plain DDL: it is the host's schema, not the tracker's,
whose tables come only from the migrations. A race is made deterministic with a
`before_cursor_execute` listener on the losing connection, which commits the winner between the
loser's read and its first write.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    String,
    Table,
    create_engine,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from tests.conftest import fresh_database
from tracker import Call, ConflictError, Outcome, SchemaError, StorageError, Tracker
from tracker.testing import answer, disconnect, initiate, new_call_id, transfer_disconnect


class _Base(DeclarativeBase):
    pass


class Order(_Base):
    """The host application's own row, written in the same transaction as the delivery."""

    __tablename__ = "host_orders"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(String(100))


orders: Table = Order.__table__  # type: ignore[assignment]


@pytest.fixture
def host_engine(database_url: str) -> Iterator[Engine]:
    """The host application's engine, with the host's own table in it."""
    engine = create_engine(database_url)
    _Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def tracker(host_engine: Engine) -> Iterator[Tracker]:
    """A tracker sharing the host's engine, the setup docs/databases.md recommends."""
    with Tracker(host_engine) as instance:
        instance.upgrade()
        yield instance


def order_ids(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.scalars(select(orders.c.call_id).order_by(orders.c.id)))


def place_order(connection: Connection, call_id: str) -> None:
    connection.execute(insert(orders).values(call_id=call_id))


# --- commit and roll back together ---------------------------------------------------------------


def test_the_hosts_row_and_the_trackers_commit_together(
    tracker: Tracker, host_engine: Engine
) -> None:
    call_id = new_call_id()
    with host_engine.connect() as connection:
        with connection.begin():
            place_order(connection, call_id)
            result = tracker.apply(disconnect(call_id, direction="inbound"), connection=connection)
            assert result.outcome is Outcome.APPLIED
            # Not committed by the tracker: other connections see nothing yet.
            assert tracker.get_call(call_id) is None
            assert tracker.events(call_id=call_id) == []
            assert order_ids(host_engine) == []
        assert not connection.closed  # the host's connection stays the host's

    call = tracker.get_call(call_id)
    assert call is not None and call.state == "disconnected"
    assert [event.outcome for event in tracker.events(call_id=call_id)] == [Outcome.APPLIED]
    assert order_ids(host_engine) == [call_id]


def test_a_host_rollback_leaves_no_trace_of_either(tracker: Tracker, host_engine: Engine) -> None:
    parent_id, leg_id = new_call_id(), new_call_id()
    bodies = [disconnect(parent_id), transfer_disconnect(parent_id, leg_id)]
    with host_engine.connect() as connection:
        transaction = connection.begin()
        place_order(connection, parent_id)
        results = [tracker.apply(body, connection=connection) for body in bodies]
        assert [result.outcome for result in results] == [Outcome.APPLIED] * 2
        transaction.rollback()

    assert tracker.get_call(parent_id) is None and tracker.get_call(leg_id) is None
    assert tracker.events() == []
    assert order_ids(host_engine) == []
    # Nothing remembered either: the same bodies apply afresh, not as duplicates.
    assert [result.outcome for result in tracker.apply_many(bodies)] == [Outcome.APPLIED] * 2


def test_a_session_commits_its_objects_with_the_trackers_rows(
    tracker: Tracker, host_engine: Engine
) -> None:
    call_id = new_call_id()
    with Session(host_engine) as session:
        session.add(Order(call_id=call_id))  # pending, not flushed: the Session writes it later
        result = tracker.apply(disconnect(call_id, direction="inbound"), connection=session)
        assert result.outcome is Outcome.APPLIED
        assert tracker.get_call(call_id) is None
        session.commit()

    call = tracker.get_call(call_id)
    assert call is not None and call.state == "disconnected"
    assert order_ids(host_engine) == [call_id]


def test_a_session_rollback_leaves_no_trace_of_either(
    tracker: Tracker, host_engine: Engine
) -> None:
    call_id = new_call_id()
    with Session(host_engine) as session:
        session.add(Order(call_id=call_id))
        session.flush()
        tracker.apply_many([initiate(call_id), answer(call_id)], connection=session)
        session.rollback()

    assert tracker.get_call(call_id) is None
    assert tracker.events() == []
    assert order_ids(host_engine) == []


def test_apply_many_in_the_hosts_transaction_gives_the_outcomes_of_the_normal_path(
    tracker: Tracker, host_engine: Engine, tmp_path: Path
) -> None:
    parent_id, leg_id, other_id = new_call_id(), new_call_id(), new_call_id()
    bodies: list[Any] = [
        initiate(parent_id),
        transfer_disconnect(parent_id, leg_id),
        disconnect(parent_id, direction="inbound"),
        disconnect(parent_id, direction="inbound"),  # duplicate
        answer(parent_id),  # rejected: an outbound answer for an inbound call
        b"{not json",  # invalid
        {"eventType": "gather", "callId": other_id},  # ignored
        disconnect(other_id, cause="busy", ring=None),
    ]
    with host_engine.begin() as connection:
        hosted = tracker.apply_many(bodies, connection=connection)
    with Tracker(f"sqlite:///{tmp_path / 'normal.db'}") as normal:
        normal.upgrade()
        expected = normal.apply_many(bodies)
        expected_calls = [normal.get_call(call_id) for call_id in (parent_id, leg_id, other_id)]

    assert hosted == expected
    assert {result.outcome for result in hosted} == set(Outcome)
    calls = [tracker.get_call(call_id) for call_id in (parent_id, leg_id, other_id)]
    assert [_facts(call) for call in calls] == [_facts(call) for call in expected_calls]


def test_bad_input_in_the_hosts_transaction_is_logged_in_it(
    tracker: Tracker, host_engine: Engine
) -> None:
    bodies: list[Any] = [b"\xff\xfe not utf-8", "[]", {"eventType": "disconnect"}]
    with host_engine.connect() as connection:
        with connection.begin() as transaction:
            results = [tracker.apply(body, connection=connection) for body in bodies]
            assert tracker.events() == []  # not before the host commits
            transaction.rollback()
        assert tracker.events() == []  # nor after it rolls back

        with connection.begin():
            again = [tracker.apply(body, connection=connection) for body in bodies]

    assert [result.outcome for result in results] == [Outcome.INVALID] * 3
    assert again == results
    logged = tracker.events()
    assert [(event.outcome, event.reason) for event in logged] == [
        (result.outcome, result.reason) for result in results
    ]
    assert logged[0].body == bodies[0]


# --- the host's transaction, checked ---------------------------------------------------------


def test_a_connection_outside_a_transaction_is_refused(
    tracker: Tracker, host_engine: Engine
) -> None:
    with host_engine.connect() as connection:
        with pytest.raises(ValueError, match=r"inside `with connection\.begin\(\):`"):
            tracker.apply(disconnect(), connection=connection)
        assert not connection.in_transaction()  # the tracker began none
    assert tracker.events() == []


def test_an_autocommit_connection_is_refused(tracker: Tracker, host_engine: Engine) -> None:
    with host_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.begin()
        with pytest.raises(ValueError, match="AUTOCOMMIT"):
            tracker.apply_many([disconnect()], connection=connection)
    assert tracker.events() == []


def test_an_engine_instead_of_a_connection_is_refused(
    tracker: Tracker, host_engine: Engine
) -> None:
    with pytest.raises(TypeError, match="Connection or ORM Session, not Engine"):
        tracker.apply(disconnect(), connection=host_engine)  # type: ignore[arg-type]


def test_a_connection_to_another_database_is_refused(
    tracker: Tracker, backend: str, tmp_path: Path
) -> None:
    other_folder = tmp_path / "other"
    other_folder.mkdir()
    for other_url in fresh_database(backend, other_folder):
        other = create_engine(other_url)
        with Tracker(other) as elsewhere:
            elsewhere.upgrade()  # a tracker schema is there too: only the database differs
        with other.begin() as connection, pytest.raises(ValueError, match="not the tracker's"):
            tracker.apply(disconnect(), connection=connection)
        with Tracker(other) as elsewhere:
            assert elsewhere.events() == []
        other.dispose()
    assert tracker.events() == []


def test_a_database_without_the_trackers_schema_is_refused(
    database_url: str, host_engine: Engine
) -> None:
    never_upgraded = Tracker(host_engine)
    with never_upgraded, host_engine.connect() as connection, connection.begin():
        place_order(connection, "kept")
        with pytest.raises(SchemaError, match="upgrade"):
            never_upgraded.apply(disconnect(), connection=connection)
        place_order(connection, "kept too")  # the host's transaction goes on
    assert order_ids(host_engine) == ["kept", "kept too"]


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])  # SQLite: see the next test
def test_an_engine_of_the_same_url_serves_as_well(
    tracker: Tracker, database_url: str, backend: str
) -> None:
    own = Tracker(database_url)
    host = create_engine(database_url)
    call_id = new_call_id()
    with own, host.begin() as connection:
        place_order(connection, call_id)
        assert own.apply(disconnect(call_id), connection=connection).outcome is Outcome.APPLIED
    host.dispose()
    assert tracker.get_call(call_id) is not None


def test_a_sqlite_engine_without_the_trackers_setup_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tracker.db'}"
    host = create_engine(url)
    with Tracker(url) as tracker:
        tracker.upgrade()
        with host.begin() as connection, pytest.raises(ValueError, match="Tracker\\(engine\\)"):
            tracker.apply(disconnect(), connection=connection)
        assert tracker.events() == []
    host.dispose()


# --- races: the host owns the retry ------------------------------------------------------------


def commit_first(connection: Connection, winner: Callable[[], None]) -> None:
    """Run `winner` (a whole transaction of another connection) just before the first write
    `connection` sends: after the loser read the call, before it writes."""
    done = threading.Event()

    def before_write(*arguments: Any) -> None:
        statement: str = arguments[2]
        if not done.is_set() and statement.lstrip().upper().startswith(("INSERT", "UPDATE")):
            done.set()
            winner()

    event.listen(connection, "before_cursor_execute", before_write)


@pytest.mark.parametrize("race", ["the call changed", "the call was created"])
def test_a_lost_race_raises_conflict_and_the_host_retries(
    tracker: Tracker, host_engine: Engine, backend: str, race: str
) -> None:
    call_id = new_call_id()
    if race == "the call changed":
        tracker.apply(initiate(call_id))

    def winner() -> None:
        with host_engine.begin() as other:
            place_order(other, "winner")
            assert (
                tracker.apply(answer(call_id, direction="inbound"), connection=other).outcome
                is Outcome.APPLIED
            )

    loser_body = disconnect(call_id, direction="inbound")
    with host_engine.connect() as connection:
        transaction = connection.begin()
        assert order_ids_in(connection) == []  # the host reads before it applies
        commit_first(connection, winner)
        with pytest.raises(ConflictError, match="still open: roll it back and run it again"):
            tracker.apply(loser_body, connection=connection)
        # Still the host's, still open: it can go on (here: read), then roll back. What it
        # reads is its isolation level's business: its snapshot (SQLite, MariaDB's REPEATABLE
        # READ) or the latest commit (PostgreSQL's READ COMMITTED).
        assert connection.in_transaction()
        assert order_ids_in(connection) == (["winner"] if backend == "postgresql" else [])
        transaction.rollback()

        # The host's retry: its whole transaction again.
        with connection.begin():
            place_order(connection, "loser")
            assert tracker.apply(loser_body, connection=connection).outcome is Outcome.APPLIED

    assert order_ids(host_engine) == ["winner", "loser"]
    assert [event.event_type for event in tracker.events(call_id=call_id)] == [
        *(["initiate"] if race == "the call changed" else []),
        "answer",
        "disconnect",
    ]
    call = tracker.get_call(call_id)
    assert call is not None and call.state == "disconnected" and call.answered


def order_ids_in(connection: Connection) -> list[str]:
    return list(connection.scalars(select(orders.c.call_id).order_by(orders.c.id)))


def test_a_conflict_in_a_session_leaves_the_session_usable(
    tracker: Tracker, host_engine: Engine
) -> None:
    call_id = new_call_id()
    tracker.apply(initiate(call_id))

    def winner() -> None:
        with Session(host_engine) as other:
            tracker.apply(answer(call_id, direction="inbound"), connection=other)
            other.commit()

    with Session(host_engine) as session:
        session.scalars(select(Order)).all()
        commit_first(session.connection(), winner)
        with pytest.raises(ConflictError):
            tracker.apply(disconnect(call_id, direction="inbound"), connection=session)
        assert session.scalar(select(func.count()).select_from(Order)) == 0
        session.rollback()
        session.add(Order(call_id=call_id))
        assert (
            tracker.apply(disconnect(call_id, direction="inbound"), connection=session).outcome
            is Outcome.APPLIED
        )
        session.commit()

    call = tracker.get_call(call_id)
    assert call is not None and call.state == "disconnected"
    assert order_ids(host_engine) == [call_id]


def test_on_sqlite_host_transactions_begun_immediate_wait_instead_of_conflicting(
    tmp_path: Path,
) -> None:
    """`tracker_write=True` makes the host's transaction begin as the tracker's own do (BEGIN
    IMMEDIATE): the second writer waits for the first to commit instead of losing the race."""
    host_engine = create_engine(f"sqlite:///{tmp_path / 'tracker.db'}")
    _Base.metadata.create_all(host_engine)
    call_id = new_call_id()
    outcomes: list[Outcome] = []

    def second_writer() -> None:
        immediate = host_engine.connect().execution_options(tracker_write=True)
        # BEGIN IMMEDIATE waits here while the first writer holds the lock.
        with immediate as connection, connection.begin():
            assert order_ids_in(connection) == ["first"]
            place_order(connection, "second")
            result = tracker.apply(disconnect(call_id, direction="inbound"), connection=connection)
            outcomes.append(result.outcome)

    with Tracker(host_engine) as tracker:
        tracker.upgrade()
        tracker.apply(initiate(call_id))
        second = threading.Thread(target=second_writer)
        immediate = host_engine.connect().execution_options(tracker_write=True)
        with immediate as connection, connection.begin():
            place_order(connection, "first")
            tracker.apply(answer(call_id, direction="inbound"), connection=connection)
            second.start()
            time.sleep(0.3)  # the second writer is waiting for the lock by now
        second.join()
        call = tracker.get_call(call_id)
    host_engine.dispose()
    assert outcomes == [Outcome.APPLIED]
    assert order_ids(host_engine) == ["first", "second"]
    assert call is not None and call.state == "disconnected" and call.answered


# --- database failures ---------------------------------------------------------------------------

LOCK_BOUNDS = {
    "postgresql": "SET LOCAL lock_timeout = '300ms'",
    "mariadb": "SET SESSION innodb_lock_wait_timeout = 1",
}


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])  # SQLite: a conflict, see the races
def test_a_lock_wait_that_timed_out_is_a_storage_error_and_the_transaction_goes_on(
    tracker: Tracker, host_engine: Engine, backend: str
) -> None:
    call_id = new_call_id()
    tracker.apply(initiate(call_id))
    with host_engine.connect() as holder, holder.begin():
        tracker.apply(
            answer(call_id, direction="inbound"), connection=holder
        )  # holds the call's row lock
        with host_engine.connect() as connection, connection.begin():
            connection.exec_driver_sql(LOCK_BOUNDS[backend])
            place_order(connection, "kept")
            with pytest.raises(StorageError, match="your transaction is open") as raised:
                tracker.apply(disconnect(call_id, direction="inbound"), connection=connection)
            assert not isinstance(raised.value, ConflictError)
            # Told as `Tracker.apply` tells it: the database did not answer in time.
            assert raised.value.unavailable
            place_order(connection, "kept too")
    assert order_ids(host_engine) == ["kept", "kept too"]
    assert [event.event_type for event in tracker.events(call_id=call_id)] == [
        "initiate",
        "answer",
    ]


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])  # SQLite: one writer, no deadlock
def test_a_deadlock_is_a_conflict_and_says_whether_the_transaction_survived(
    tracker: Tracker, host_engine: Engine, backend: str
) -> None:
    """The victim's tracker statement closes a cycle with a host statement of another
    transaction. PostgreSQL rolls back the victim's savepoint alone; InnoDB rolls back the
    victim's whole transaction, and then the tracker makes the Connection say so."""
    call_id = new_call_id()
    tracker.apply(initiate(call_id))
    with host_engine.begin() as connection:
        shared = connection.execute(insert(orders).values(call_id="shared")).inserted_primary_key
    the_shared_row = update(orders).where(orders.c.id == shared[0])
    victim, survivor = host_engine.connect(), host_engine.connect()
    blocked = threading.Thread(
        target=lambda: survivor.execute(the_shared_row.values(call_id="survivor's")), daemon=True
    )
    try:
        if backend == "postgresql":  # the victim's wait is the one that finds the cycle
            for connection, bound in ((victim, "50ms"), (survivor, "10s")):
                connection.exec_driver_sql(f"SET deadlock_timeout = '{bound}'")
                connection.commit()
        victim.begin()
        victim.execute(the_shared_row.values(call_id="victim's"))
        survivor.begin()
        # InnoDB picks the smaller transaction as the victim: the survivor writes more.
        survivor.execute(insert(orders), [{"call_id": f"survivor's {n}"} for n in range(20)])
        # The survivor keeps the call's row locked, then waits for the victim's row.
        tracker.apply(answer(call_id, direction="inbound"), connection=survivor)
        blocked.start()
        wait_until_blocked(host_engine, backend)

        with pytest.raises(ConflictError) as raised:
            tracker.apply(disconnect(call_id, direction="inbound"), connection=victim)
        if backend == "mariadb":
            assert "ended your whole transaction" in str(raised.value)
            assert not victim.in_transaction()  # a commit cannot pretend to keep the host's row
        else:
            assert "your transaction is still open" in str(raised.value)
            assert victim.in_transaction()
            victim.execute(select(orders.c.id))  # usable, until the host rolls it back
    finally:
        victim.close()
        if blocked.ident is not None:
            blocked.join()
        survivor.commit()
        survivor.close()
    assert [event.event_type for event in tracker.events(call_id=call_id)] == [
        "initiate",
        "answer",
    ]
    assert order_ids(host_engine) == ["survivor's", *(f"survivor's {n}" for n in range(20))]


def wait_until_blocked(engine: Engine, backend: str) -> None:
    """Until a connection of this database waits for a lock."""
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND datname = current_database()"
        if backend == "postgresql"
        else "SELECT count(*) FROM information_schema.INNODB_TRX AS t "
        "JOIN information_schema.PROCESSLIST AS p ON p.ID = t.trx_mysql_thread_id "
        "WHERE t.trx_state = 'LOCK WAIT' AND p.DB = DATABASE()"
    )
    deadline = time.monotonic() + 10
    with engine.connect() as connection:
        while connection.execute(text(query)).scalar() == 0:
            assert time.monotonic() < deadline, "the survivor never waited for the lock"
            time.sleep(0.02)
            connection.rollback()


def _facts(call: Call | None) -> Any:
    """A call without the log ids its history steps name (two databases number apart)."""
    assert call is not None
    return replace(call, history=tuple(replace(step, event_id=0) for step in call.history))
