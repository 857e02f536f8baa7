"""Retention: `prune` deletes old log entries in short batches, and nothing else.

Calls, their history and their transfer attempts stay exactly as they were; entries received at
or after the instant stay; workers applying meanwhile lose nothing and never fail.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from click.testing import CliRunner
from sqlalchemy import event, text

from tests.workers import Crew, apply_rounds, record_figure, snapshot
from tracker import Call, Outcome, Tracker
from tracker.cli import cli
from tracker.schema import alembic_config
from tracker.storage import VERSION_TABLE
from tracker.testing import realistic_bodies


def apply_in_two_ages(
    tracker: Tracker, old: list[bytes], new: list[bytes]
) -> tuple[datetime, list[int]]:
    """Apply `old`, then `new`; the instant between the two, and the ids of the new entries."""
    tracker.apply_many(old)
    time.sleep(0.002)  # the two ages never share a microsecond
    cutoff = datetime.now(UTC)
    time.sleep(0.002)
    results = tracker.apply_many(new)
    assert all(result.outcome is Outcome.APPLIED for result in results)
    return cutoff, [entry.id for entry in tracker.events()][len(old) :]


def every_call(tracker: Tracker) -> dict[str, Call | None]:
    return {call.call_id: tracker.get_call(call.call_id) for call in tracker.calls()}


@pytest.fixture
def deletes(tracker: Tracker) -> Iterator[list[int]]:
    """The row count of each DELETE the tracker sends, in order."""
    counts: list[int] = []

    def count(_connection: Any, cursor: Any, statement: str, *_rest: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            counts.append(cursor.rowcount)

    event.listen(tracker.engine, "after_cursor_execute", count)
    yield counts
    event.remove(tracker.engine, "after_cursor_execute", count)


def test_prune_deletes_entries_received_before_the_instant_in_batches(
    tracker: Tracker, deletes: list[int]
) -> None:
    bodies = realistic_bodies(180)
    cutoff, kept_ids = apply_in_two_ages(tracker, bodies[:120], bodies[120:])

    assert tracker.prune(cutoff, batch_size=7) == 120

    assert [entry.id for entry in tracker.events()] == kept_ids
    assert all(entry.received_at >= cutoff for entry in tracker.events())
    assert sum(deletes) == 120 and max(deletes) <= 7 and len(deletes) >= 120 // 7


def test_prune_keeps_calls_history_and_transfer_attempts(tracker: Tracker) -> None:
    bodies = realistic_bodies(180)
    cutoff, _kept = apply_in_two_ages(tracker, bodies[:120], bodies[120:])
    before = every_call(tracker)
    assert any(call and call.transfers for call in before.values())

    tracker.prune(cutoff, batch_size=50)

    assert every_call(tracker) == before  # history steps keep the ids of the pruned entries


def test_prune_again_and_prune_of_nothing_old_delete_nothing(tracker: Tracker) -> None:
    assert tracker.prune(datetime.now(UTC)) == 0  # an empty log
    bodies = realistic_bodies(30)
    cutoff, kept_ids = apply_in_two_ages(tracker, bodies[:10], bodies[10:])
    assert tracker.prune(cutoff - timedelta(days=1)) == 0
    assert tracker.prune(cutoff) == 10
    assert tracker.prune(cutoff) == 0
    assert [entry.id for entry in tracker.events()] == kept_ids


def test_ids_of_pruned_entries_are_never_given_again(tracker: Tracker) -> None:
    """A prune that empties the log leaves the next entries no id it freed: a follower's cursor
    past those ids would skip the new entries, and a history step naming a pruned entry would
    name an unrelated one (revision 0008 for SQLite)."""
    bodies = realistic_bodies(40)
    _cutoff, first_ids = apply_in_two_ages(tracker, bodies[:10], bodies[10:25])
    followed = tracker.changes()
    assert [change.id for change in followed.changes] == [e.id for e in tracker.events()]
    time.sleep(0.002)
    assert tracker.prune(datetime.now(UTC)) == 25  # the log is empty: its newest entry went too

    results = tracker.apply_many(bodies[25:])

    assert {result.outcome for result in results} == {Outcome.APPLIED}
    new_ids = [entry.id for entry in tracker.events()]
    assert len(new_ids) == 15 and min(new_ids) > max(first_ids)
    assert [change.id for change in tracker.changes(after=followed.cursor).changes] == new_ids


def test_a_late_retry_of_a_pruned_delivery_changes_nothing_but_a_second_transfer_attempt(
    tracker: Tracker,
) -> None:
    """What docs/housekeeping.md promises of a pruned log: a terminal event is still a duplicate
    (its call says so), any other event is applied again, to the same facts and history, except
    that a `transferComplete` records its attempt a second time."""
    bodies = realistic_bodies(150)
    tracker.apply_many(bodies)
    before = every_call(tracker)
    tracker.prune(datetime.now(UTC) + timedelta(seconds=1))

    again = tracker.apply_many(bodies)

    outcomes = {
        (json.loads(body)["eventType"], result.outcome)
        for body, result in zip(bodies, again, strict=True)
    }
    terminal = {"disconnect", "transferDisconnect"}
    assert {kind for kind, _outcome in outcomes} >= terminal | {"answer", "transferComplete"}
    assert outcomes == {
        (kind, Outcome.DUPLICATE if kind in terminal else Outcome.APPLIED) for kind, _ in outcomes
    }
    after = every_call(tracker)
    assert after.keys() == before.keys()
    for call_id, call in before.items():
        assert call is not None
        retold = after[call_id]
        assert retold is not None
        assert Counter(retold.transfers) == Counter(call.transfers * 2)
        assert {**vars_of(retold), "transfers": ()} == {**vars_of(call), "transfers": ()}


def vars_of(call: Call) -> dict[str, object]:
    return {name: getattr(call, name) for name in call.__dataclass_fields__}


def test_prune_refuses_a_time_without_a_zone(sqlite_tracker: Tracker) -> None:
    with pytest.raises(ValueError, match=r"no time zone.*tzinfo=UTC"):
        sqlite_tracker.prune(datetime(2026, 3, 1))
    with pytest.raises(ValueError, match="batch_size"):
        sqlite_tracker.prune(datetime(2026, 3, 1, tzinfo=UTC), batch_size=0)


def test_downgrade_is_refused_while_an_attempt_names_a_pruned_entry(tracker: Tracker) -> None:
    tracker.apply_many(realistic_bodies(150))
    tracker.prune(datetime.now(UTC) + timedelta(seconds=1))
    with tracker.engine.begin() as connection:
        command.downgrade(alembic_config(connection), "0006")
    with tracker.engine.begin() as connection, pytest.raises(RuntimeError, match="pruned"):
        command.downgrade(alembic_config(connection), "0005")
    with tracker.engine.connect() as connection:
        revision = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))
        assert revision.scalar_one() == "0006"
    tracker.upgrade()
    tracker.check()


def test_command_line_prunes_and_reports_the_count(tracker: Tracker) -> None:
    url = tracker.engine.url.render_as_string(hide_password=False)
    bodies = realistic_bodies(40)
    cutoff, kept_ids = apply_in_two_ages(tracker, bodies[:25], bodies[25:])
    # A zone-less time is UTC, as `calls --since` reads it.
    given = cutoff.replace(tzinfo=None).isoformat()

    done = CliRunner().invoke(
        cli, ["--db", url, "prune", "--before", given, "--batch-size", "10", "--json"]
    )
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == {
        "deleted": 25,
        "before": cutoff.isoformat().replace("+00:00", "Z"),
    }
    again = CliRunner().invoke(cli, ["--db", url, "prune", "--before", given])
    assert again.exit_code == 0 and again.stdout.startswith("Deleted 0 log entries received")
    assert [entry.id for entry in tracker.events()] == kept_ids

    refused = CliRunner().invoke(cli, ["--db", url, "prune", "--before", "last tuesday"])
    assert refused.exit_code == 2 and "ISO 8601" in refused.output


# --- while workers apply ------------------------------------------------------------------------

WORKERS = 3
OLD = 1500  # entries to prune
NEW = 90  # deliveries per worker, applied one by one while the prune runs


@pytest.mark.slow
def test_workers_applying_while_prune_runs_lose_nothing(
    backend: str, tracker: Tracker, database_url: str, tmp_path: Path
) -> None:
    bodies = realistic_bodies(OLD + WORKERS * NEW, seed=7)
    old, new = bodies[:OLD], bodies[OLD:]
    for start in range(0, OLD, 500):
        tracker.apply_many(old[start : start + 500])
    time.sleep(0.002)
    cutoff = datetime.now(UTC)
    # Worker w applies every WORKERS-th new body, in order, one by one.
    shares = [[[body.decode() for body in new[worker::WORKERS]]] for worker in range(WORKERS)]

    with Crew(apply_rounds, [(database_url, share) for share in shares]) as crew:
        crew.wait_for_start()
        started = datetime.now(UTC)
        deleted = tracker.prune(cutoff, batch_size=25)
        ended = datetime.now(UTC)
        outcomes = Counter(o for worker in crew.collect() for rnd in worker for o in rnd)

    assert deleted == OLD
    assert outcomes == {"applied": len(new)}, outcomes
    log = tracker.events()
    assert sorted(entry.body for entry in log) == sorted(new)
    during = sum(started <= entry.received_at <= ended for entry in log)
    assert during > 0, "the workers applied nothing while the prune ran: the test proved nothing"
    record_figure(
        f"[prune {backend}] {deleted} entries pruned in {(ended - started).total_seconds():.2f} s "
        f"while {WORKERS} workers applied {during} of their {len(new)} deliveries"
    )

    with Tracker(f"sqlite:///{tmp_path / 'reference.db'}") as reference:
        reference.upgrade()
        reference.apply_many(bodies)
        assert snapshot(tracker, []) == snapshot(reference, [])
