"""The change feed: every applied delivery at least once, none skipped, whatever the order the
writers commit in (`tracker.feed`)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, func, select, text

from tests.workers import Crew, apply_rounds, record_figure
from tracker import Change, ChangesPage, Outcome, StorageError, Tracker, feed, storage
from tracker.testing import disconnect, new_call_id, realistic_bodies

REPOSITORY = Path(__file__).resolve().parent.parent


def drain(tracker: Tracker, cursor: str | None, *, limit: int = 1000) -> tuple[list[Change], str]:
    """Every change after `cursor`, page after page, until a page brings nothing."""
    seen: list[Change] = []
    while True:
        page = tracker.changes(after=cursor, limit=limit)
        seen.extend(page.changes)
        if not page.changes and not page.more and page.cursor == cursor:
            return seen, page.cursor
        cursor = page.cursor


def applied_ids(tracker: Tracker) -> list[int]:
    return [entry.id for entry in tracker.events(outcome=Outcome.APPLIED)]


# --- paging -----------------------------------------------------------------------------------


def test_pages_hand_out_the_applied_deliveries_in_order_and_resume_from_the_cursor(
    tracker: Tracker,
) -> None:
    bodies = [json.dumps(disconnect(new_call_id())) for _ in range(7)]
    tracker.apply_many(bodies[:4])
    tracker.apply(b"not json")  # invalid: logged, not a change
    tracker.apply(bodies[0])  # duplicate: logged, not a change

    first = tracker.changes(limit=3)
    assert [change.id for change in first.changes] == applied_ids(tracker)[:3]
    assert first.more
    second = tracker.changes(after=first.cursor, limit=3)
    assert [change.id for change in second.changes] == applied_ids(tracker)[3:4]
    assert second.more  # `limit` bounds the log entries read: the invalid and duplicate ones too
    tail = tracker.changes(after=second.cursor, limit=3)
    assert tail.changes == () and not tail.more
    assert tracker.changes(after=tail.cursor) == ChangesPage((), tail.cursor, False)

    tracker.apply_many(bodies[4:])
    third = tracker.changes(after=tail.cursor)
    assert [change.id for change in third.changes] == applied_ids(tracker)[4:]
    everything = [*first.changes, *second.changes, *third.changes]
    assert {change.outcome for change in everything} == {Outcome.APPLIED}
    assert [change.event_type for change in everything] == ["disconnect"] * 7


def test_each_change_resumes_just_after_itself(tracker: Tracker) -> None:
    tracker.apply_many([json.dumps(disconnect(new_call_id())) for _ in range(5)])
    page = tracker.changes()
    for index, change in enumerate(page.changes):
        rest = tracker.changes(after=change.cursor)
        assert [later.id for later in rest.changes] == [c.id for c in page.changes[index + 1 :]]


def test_each_change_carries_its_call_as_get_call_gives_it(tracker: Tracker) -> None:
    tracker.apply_many(realistic_bodies(40))
    changes, _cursor = drain(tracker, None, limit=7)
    assert len(changes) == len(applied_ids(tracker))
    for change in changes:
        assert change.call_id is not None
        assert change.call == tracker.get_call(change.call_id)
        assert change.origin is None


def test_snapshots_are_read_in_a_few_statements_whatever_the_page_size(tracker: Tracker) -> None:
    tracker.apply_many(realistic_bodies(60))
    statements: list[str] = []
    from sqlalchemy import event

    def count(*arguments: Any) -> None:
        statements.append(arguments[2])

    event.listen(tracker.engine, "before_cursor_execute", count)
    try:
        page = tracker.changes()
    finally:
        event.remove(tracker.engine, "before_cursor_execute", count)
    assert len(page.changes) > 30
    assert len(statements) <= 8


def test_a_sweep_entry_is_a_change_with_its_origin(tracker: Tracker) -> None:
    """The housekeeping sweep logs its own entries with origin `sweep`: applied, so in the feed."""
    call_id = new_call_id()
    tracker.apply(json.dumps(disconnect(call_id)))
    with tracker.engine.begin() as connection:
        connection.execute(
            storage.events.insert().values(
                received_at=datetime.now(UTC),
                body=b"{}",
                outcome="applied",
                detail="swept",
                call_id=call_id,
                event_type="disconnect",
                origin="sweep",
            )
        )
    changes, _cursor = drain(tracker, None)
    assert [change.origin for change in changes] == [None, "sweep"]


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage!",
        "",
        "eyJ2IjoyLCJoIjowfQ",  # {"v":2,"h":0}
        "eyJ2IjoxLCJoIjotMX0",  # {"v":1,"h":-1}
        "eyJ2IjoxLCJoIjo1LCJnIjpbW1tdLFtbNyw4XV1dXX0",  # a gap above the mark
        "W10",  # []
    ],
)
def test_a_malformed_cursor_is_refused_with_what_to_pass(tracker: Tracker, cursor: str) -> None:
    with pytest.raises(ValueError, match=r"is not a change-feed cursor.*pass the `cursor`"):
        tracker.changes(after=cursor)


def test_a_limit_out_of_range_is_refused(tracker: Tracker) -> None:
    with pytest.raises(ValueError, match="limit must be between 1 and"):
        tracker.changes(limit=0)


# --- out-of-order commits: the deterministic interleaving -------------------------------------


@contextmanager
def open_transaction_with_a_log_entry(tracker: Tracker, call_id: str) -> Iterator[Connection]:
    """A transaction that has written a log entry (taking its id) and stays open: a worker, or a
    host applying inside its own transaction, that commits later than the next one."""
    with tracker.engine.connect() as connection:
        transaction = connection.begin()
        connection.execute(
            storage.events.insert().values(
                received_at=datetime.now(UTC),
                body=b"{}",
                outcome="applied",
                detail="late",
                call_id=call_id,
                event_type="disconnect",
            )
        )
        try:
            yield connection
        finally:
            if transaction.is_active:
                transaction.rollback()


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])  # SQLite: one writer at a time
def test_a_delivery_committed_after_a_higher_id_is_skipped_by_ids_but_not_by_the_cursor(
    tracker: Tracker, backend: str
) -> None:
    call_id = new_call_id()
    tracker.apply(json.dumps(disconnect(call_id)))
    cursor = tracker.changes().cursor
    naive = max(applied_ids(tracker))
    before = set(applied_ids(tracker))

    with open_transaction_with_a_log_entry(tracker, call_id) as late:
        tracker.apply(json.dumps(disconnect(new_call_id())))  # a higher id, committed first
        page = tracker.changes(after=cursor)
        assert [change.id for change in page.changes] == [max(applied_ids(tracker))]
        naive = max(naive, *(change.id for change in page.changes))
        cursor = page.cursor
        # Still open: nothing more, and the gap is kept.
        assert tracker.changes(after=cursor).changes == ()
        assert feed.decode(tracker.changes(after=cursor).cursor).gaps != ()
        late.commit()

    (late_id,) = set(applied_ids(tracker)) - before - {change.id for change in page.changes}
    assert late_id < naive
    # What `WHERE id > last id seen` reads now: nothing, so the late entry is skipped for ever.
    with tracker.engine.connect() as connection:
        after_naive = connection.execute(
            select(func.count()).where(storage.events.c.id > naive)
        ).scalar_one()
    assert after_naive == 0
    # The cursor kept the gap, and hands the late entry out.
    later = tracker.changes(after=cursor)
    assert [change.id for change in later.changes] == [late_id]
    assert feed.decode(later.cursor).gaps == ()


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])  # SQLite: one writer at a time
def test_a_gap_committed_between_the_read_and_the_lookup_of_writers_is_not_dropped(
    tracker: Tracker, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The late transaction commits after the read that missed its entry and before the feed
    asks who is still writing: it is not among them, yet its entry must still come out."""
    call_id = new_call_id()
    tracker.apply(json.dumps(disconnect(call_id)))
    cursor = tracker.changes().cursor
    before = set(applied_ids(tracker))
    lookup = feed._writers
    with open_transaction_with_a_log_entry(tracker, call_id) as late:
        tracker.apply(json.dumps(disconnect(new_call_id())))

        def commit_first(connection: Connection, dialect: str) -> feed.Token | None:
            if late.in_transaction():
                late.commit()
            return lookup(connection, dialect)

        monkeypatch.setattr(feed, "_writers", commit_first)
        page = tracker.changes(after=cursor)
    assert not late.in_transaction()
    (late_id,) = set(applied_ids(tracker)) - before - {change.id for change in page.changes}
    changes, _cursor = drain(tracker, page.cursor)
    assert [change.id for change in changes] == [late_id]


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])  # SQLite: one writer at a time
def test_an_id_rolled_back_is_a_gap_dropped_once_its_transaction_ended(
    tracker: Tracker, backend: str
) -> None:
    call_id = new_call_id()
    tracker.apply(json.dumps(disconnect(call_id)))
    cursor = tracker.changes().cursor
    with open_transaction_with_a_log_entry(tracker, call_id):
        tracker.apply(json.dumps(disconnect(new_call_id())))
        page = tracker.changes(after=cursor)
        assert len(page.changes) == 1
    assert feed.decode(page.cursor).gaps != ()
    # Rolled back: the id never commits. Dropped once every transaction running when it was
    # found has ended (at the next read or two here; on MariaDB the list is the whole server's,
    # which other clients share), and the cursor is back to a mark alone.
    cursor = page.cursor
    deadline = time.monotonic() + 20
    while feed.decode(cursor).gaps and time.monotonic() < deadline:
        page = tracker.changes(after=cursor)
        assert page.changes == ()
        cursor = page.cursor
        time.sleep(0.05)
    assert feed.decode(cursor) == feed.decode(drain(tracker, None)[1])


@pytest.mark.parametrize("backend", ["mariadb"])  # the only one that needs a privilege
def test_on_mariadb_a_user_without_the_process_privilege_is_told_to_get_it(
    tracker: Tracker, backend: str
) -> None:
    url = tracker.engine.url
    user = f"feed_{uuid.uuid4().hex[:8]}"
    with tracker.engine.begin() as connection:
        connection.execute(text(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'secret'"))
        connection.execute(text(f"GRANT ALL ON `{url.database}`.* TO '{user}'@'%'"))
    try:
        with Tracker(url.set(username=user, password="secret")) as unprivileged:
            call_id = new_call_id()
            tracker.apply(json.dumps(disconnect(call_id)))
            with open_transaction_with_a_log_entry(tracker, call_id):
                tracker.apply(json.dumps(disconnect(new_call_id())))
                with pytest.raises(StorageError, match=r"needs the PROCESS privilege: GRANT"):
                    unprivileged.changes()
    finally:
        with tracker.engine.begin() as connection:
            connection.execute(text(f"DROP USER '{user}'@'%'"))


# --- many writers at once -----------------------------------------------------------------------

WRITERS = 4


def follow(url: str, stop: threading.Event, report: dict[str, Any]) -> None:
    """Poll the feed with a cursor while the writers run, and a naive `id > last id` follower
    beside it; once `stop` is set, drain."""
    seen: list[int] = []
    naive_seen: list[int] = []
    naive_high = 0
    cursor: str | None = None
    with Tracker(url) as tracker:
        quiet_rounds = 0
        longest = 0
        give_up = float("inf")
        while quiet_rounds < 3:
            stopping = stop.is_set()
            if stopping and give_up == float("inf"):
                give_up = time.monotonic() + 20
            page = tracker.changes(after=cursor, limit=50)
            seen.extend(change.id for change in page.changes)
            cursor = page.cursor
            longest = max(longest, len(cursor))
            with tracker.engine.connect() as connection:
                rows = connection.execute(
                    select(storage.events.c.id, storage.events.c.outcome)
                    .where(storage.events.c.id > naive_high)
                    .order_by(storage.events.c.id)
                ).all()
            naive_seen.extend(row.id for row in rows if row.outcome == Outcome.APPLIED)
            naive_high = max([naive_high, *(row.id for row in rows)])
            if stopping and not page.changes and not page.more:
                # Caught up after the writers ended; the gaps left (ids burned by lost races)
                # go once the transactions running when they were found have ended: on MariaDB
                # that is every transaction of the server, other clients' included.
                if not feed.decode(cursor).gaps or time.monotonic() > give_up:
                    quiet_rounds += 1
                time.sleep(0.15)
            else:
                time.sleep(0.005)
        report.update(seen=seen, naive=naive_seen, cursor=cursor, longest=longest)


def test_a_follower_sees_every_delivery_of_four_writers_committing_out_of_order(
    backend: str, database_url: str
) -> None:
    with Tracker(database_url) as setup:
        setup.upgrade()
    bodies = [body.decode() for body in realistic_bodies(150, seed=9)]
    shares = []
    for worker in range(WRITERS):
        share = list(bodies)
        random.Random(worker).shuffle(share)  # the same deliveries: races, and ids burned
        shares.append(share)
    stop = threading.Event()
    report: dict[str, Any] = {}
    follower = threading.Thread(target=follow, args=(database_url, stop, report))
    with Crew(apply_rounds, [(database_url, [share]) for share in shares]) as crew:
        follower.start()
        crew.wait_for_start()
        outcomes = crew.collect()
    stop.set()
    follower.join(timeout=120)
    assert not follower.is_alive()

    assert not [o for worker in outcomes for o in worker[0] if o.startswith("raised")]
    with Tracker(database_url) as tracker:
        expected = applied_ids(tracker)
        last_id = tracker.events(limit=1)[0].id
    seen = Counter(report["seen"])
    missed = sorted(set(expected) - set(seen))
    naive_missed = sorted(set(expected) - set(report["naive"]))
    record_figure(
        f"[{backend} feed] writers={WRITERS} applied={len(expected)} log ids={last_id} "
        f"seen={len(seen)} duplicates={sum(seen.values()) - len(seen)} missed={len(missed)} "
        f"naive follower missed={len(naive_missed)} longest cursor={report['longest']} chars"
    )
    assert len(expected) == len(bodies)
    assert missed == []
    assert set(seen) == set(expected)  # nothing that is not an applied delivery
    assert feed.decode(report["cursor"]).gaps == ()


# --- tracker follow --------------------------------------------------------------------------


def start_follow(url: str, *options: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tracker.cli", "--db", url, "follow", "--poll", "0.1", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPOSITORY)},
    )


def read_lines(process: subprocess.Popen[str], count: int) -> list[dict[str, Any]]:
    assert process.stdout is not None
    lines: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while len(lines) < count and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(json.loads(line))
    return lines


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["int", "term"])
def test_follow_prints_each_applied_delivery_as_a_json_line_and_stops_on_a_signal(
    tracker: Tracker, stop_signal: signal.Signals
) -> None:
    url = tracker.engine.url.render_as_string(hide_password=False)
    first = json.dumps(disconnect(new_call_id()))
    tracker.apply(first)
    process = start_follow(url)
    try:
        lines = read_lines(process, 1)
        tracker.apply(b"not json")
        tracker.apply_many([json.dumps(disconnect(new_call_id())) for _ in range(2)])
        lines += read_lines(process, 2)
        process.send_signal(stop_signal)
        _out, errors = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, errors
    assert [line["id"] for line in lines] == applied_ids(tracker)
    for line in lines:
        assert line["outcome"] == "applied"
        assert line["event_type"] == "disconnect"
        assert line["call"]["call_id"] == line["call_id"]
        assert line["call"]["state"] == "disconnected"
        assert datetime.fromisoformat(line["received_at"]).tzinfo is not None
    # Resuming from a line's cursor prints what came after it.
    resumed = start_follow(url, "--after", lines[0]["cursor"])
    try:
        again = read_lines(resumed, 2)
        resumed.send_signal(signal.SIGINT)
        resumed.communicate(timeout=30)
    finally:
        if resumed.poll() is None:
            resumed.kill()
            resumed.wait()
    assert [line["id"] for line in again] == [line["id"] for line in lines[1:]]
    assert resumed.returncode == 0


def test_follow_refuses_a_malformed_cursor(sqlite_tracker: Tracker) -> None:
    url = sqlite_tracker.engine.url.render_as_string(hide_password=False)
    process = start_follow(url, "--after", "garbage!")
    _out, errors = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "is not a change-feed cursor" in errors
