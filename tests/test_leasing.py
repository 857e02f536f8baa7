"""A named lease in the database (`tracker.leasing`): one holder at a time, taken over once
expired, renewed and given up by its holder only; on every backend, under real concurrency."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from tracker import Tracker, storage
from tracker.leasing import Lease, new_holder

MINUTE = timedelta(minutes=1)


def row(tracker: Tracker, name: str = "sweep") -> storage.LeaseHolding | None:
    with tracker.engine.connect() as connection:
        return storage.find_lease(connection, name)


def expire(tracker: Tracker, name: str = "sweep") -> None:
    """Move the lease's end a second into the past, as its term running out would: the tests
    need not sleep a term, and a slow machine cannot end a term while a test still counts on
    it."""
    with tracker.engine.begin() as connection:
        past = storage.database_now(connection) - timedelta(seconds=1)
        connection.execute(
            storage.leases.update().where(storage.leases.c.name == name).values(expires_at=past)
        )


def test_the_first_taker_holds_the_lease_and_another_is_refused(tracker: Tracker) -> None:
    first = Lease(tracker.engine, "sweep", term=MINUTE, holder="a")
    second = Lease(tracker.engine, "sweep", term=MINUTE, holder="b")

    assert first.acquire() and first.held
    assert not second.acquire() and not second.held
    assert Lease(tracker.engine, "reconcile", term=MINUTE, holder="b").acquire(), "another name"

    holding = row(tracker)
    assert holding is not None and holding.holder == "a"
    with tracker.engine.connect() as connection:
        now = storage.database_now(connection)
    assert now + MINUTE - timedelta(seconds=5) < holding.expires_at <= now + MINUTE


def test_of_concurrent_takers_exactly_one_wins(tracker: Tracker) -> None:
    """Eight threads, each with a connection of its own, take a lease nobody holds, then (in a
    second race) one that expired: the INSERT's primary key decides the first race, the
    compare-and-set UPDATE the second."""
    takers = [Lease(tracker.engine, "sweep", term=MINUTE, holder=f"t{n}") for n in range(8)]

    def race() -> list[str]:
        # A connection for each taker made beforehand, so that none is still connecting when
        # the others ask: on a cold pool the first one alone reaches the database in time.
        connections = [tracker.engine.connect() for _ in takers]
        for connection in connections:
            connection.close()
        start = threading.Barrier(len(takers))
        won: list[str] = []

        def take(lease: Lease) -> None:
            start.wait()
            if lease.acquire():
                won.append(lease.holder)

        threads = [threading.Thread(target=take, args=(lease,)) for lease in takers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return won

    (first,) = race()
    holding = row(tracker)
    assert holding is not None and holding.holder == first
    expire(tracker)  # the holder is among the takers again
    (second,) = race()
    holding = row(tracker)
    assert holding is not None and holding.holder == second


def test_an_expired_lease_is_taken_over_and_its_old_holder_cannot_renew(tracker: Tracker) -> None:
    old = Lease(tracker.engine, "sweep", term=MINUTE, holder="old")
    new = Lease(tracker.engine, "sweep", term=MINUTE, holder="new")
    assert old.acquire()
    assert not new.acquire()

    expire(tracker)

    assert new.acquire()
    assert not old.renew() and not old.held
    assert not old.acquire()
    holding = row(tracker)
    assert holding is not None and holding.holder == "new"


def test_the_holder_renews_for_a_term_from_now_and_nobody_else_can(tracker: Tracker) -> None:
    holder = Lease(tracker.engine, "sweep", term=MINUTE, holder="a")
    other = Lease(tracker.engine, "sweep", term=MINUTE, holder="b")
    assert holder.acquire()
    before = row(tracker)
    assert before is not None

    assert not other.renew()
    assert row(tracker) == before
    time.sleep(0.01)
    assert holder.renew() and holder.held
    after = row(tracker)
    assert after is not None and after.holder == "a" and after.expires_at > before.expires_at


def test_an_expired_lease_nobody_took_is_still_its_holders_to_renew(tracker: Tracker) -> None:
    holder = Lease(tracker.engine, "sweep", term=MINUTE, holder="a")
    assert holder.acquire()
    expire(tracker)
    assert holder.renew()
    holding = row(tracker)
    assert holding is not None and holding.holder == "a"
    with tracker.engine.connect() as connection:
        assert holding.expires_at > storage.database_now(connection)


def test_a_holder_counts_its_term_by_its_own_clock_too(sqlite_tracker: Tracker) -> None:
    """Without asking the database: it stops working once its term is over, whatever the
    database would say."""
    lease = Lease(sqlite_tracker.engine, "sweep", term=timedelta(milliseconds=200), holder="a")
    assert not lease.held and lease.remaining() == 0
    assert lease.acquire() and lease.held and 0 < lease.remaining() <= 0.2
    time.sleep(0.25)
    assert not lease.held and lease.remaining() == 0


def test_giving_up_frees_the_lease_at_once_and_only_the_holder_can(tracker: Tracker) -> None:
    holder = Lease(tracker.engine, "sweep", term=MINUTE, holder="a")
    other = Lease(tracker.engine, "sweep", term=MINUTE, holder="b")
    assert holder.acquire()

    assert not other.release()
    assert row(tracker) is not None
    assert holder.release() and not holder.held
    assert row(tracker) is None
    assert not holder.renew(), "a lease given up is not renewed into being again"
    assert row(tracker) is None
    assert other.acquire()


def test_the_database_clock_is_read_in_utc(tracker: Tracker) -> None:
    with tracker.engine.connect() as connection:
        now = storage.database_now(connection)
    assert now.tzinfo is not None and now.utcoffset() == timedelta(0)
    assert abs(now - datetime.now(UTC)) < timedelta(seconds=30)


def test_holder_names_differ_and_name_the_host_and_process() -> None:
    first, second = new_holder(), new_holder()
    assert first != second
    host, pid, _random = first.split(":")
    assert host and pid.isdigit()


@pytest.mark.parametrize(
    ("name", "term", "holder", "problem"),
    [
        ("", MINUTE, "a", "1 to 64 characters"),
        ("x" * 65, MINUTE, "a", "1 to 64 characters"),
        ("sweep", MINUTE, "h" * 129, "1 to 128 characters"),
        ("sweep", timedelta(0), "a", "positive timedelta"),
        ("sweep", 60, "a", "positive timedelta"),
    ],
)
def test_a_bad_lease_is_refused_before_asking_the_database(
    sqlite_tracker: Tracker, name: str, term: object, holder: str, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        Lease(sqlite_tracker.engine, name, term=term, holder=holder)  # type: ignore[arg-type]
