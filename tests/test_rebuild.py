"""Rebuild (SPEC section 9): every call recomputed from the event log equals the live one on a log
that was never pruned; a call changed behind the tracker's back is reported and repaired."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import text

from tests.workers import apply_rounds, run_together
from tracker import CallDifference, Outcome, Tracker, rebuilding
from tracker.cli import cli
from tracker.testing import BASE_TIME, initiate, new_call_id, realistic_bodies

WORKERS = 4


def workload(seed: int, count: int = 400) -> list[bytes]:
    """A realistic stream with transfers, delivered out of order, a fifth of it twice, with
    terminal events that contradict the real ones (rejected, or applied instead of the real
    one when they come first), unreadable bodies and untracked event types."""
    rng = random.Random(seed)
    bodies = realistic_bodies(count, seed)
    extra: list[bytes] = rng.sample(bodies, count // 5)
    for body in rng.sample(bodies, count // 4):
        fields = json.loads(body)
        if fields["eventType"] == "disconnect" and fields.get("cause") != "error":
            extra.append(json.dumps({**fields, "cause": "error"}).encode())
    extra += [b"not json", b'{"eventType": "gather", "callId": "c-1"}', b"[]"]
    stream = bodies + extra
    rng.shuffle(stream)
    return stream


def apply_in_chunks(tracker: Tracker, bodies: list[bytes], seed: int) -> None:
    """Batches of assorted sizes, some bodies alone: both write paths."""
    rng = random.Random(seed)
    start = 0
    while start < len(bodies):
        size = rng.choice((1, 1, 7, 50, 120))
        if size == 1:
            tracker.apply(bodies[start])
        else:
            tracker.apply_many(bodies[start : start + size])
        start += size


@pytest.fixture
def loaded(tracker: Tracker) -> Tracker:
    apply_in_chunks(tracker, workload(seed=7), seed=7)
    return tracker


def execute(tracker: Tracker, statement: str, **values: Any) -> None:
    with tracker.engine.begin() as connection:
        connection.execute(text(statement), values)


def scalars(tracker: Tracker, statement: str) -> list[Any]:
    with tracker.engine.connect() as connection:
        return list(connection.execute(text(statement)).scalars())


def plain_call(tracker: Tracker) -> str:
    """A call with no legs and no transfer attempts, whose own deliveries alone made it."""
    return str(
        scalars(
            tracker,
            "SELECT call_id FROM tracker_calls c WHERE parent_call_id IS NULL AND seen_rank > 0"
            " AND NOT EXISTS (SELECT 1 FROM tracker_calls l WHERE l.parent_call_id = c.call_id)"
            " AND NOT EXISTS (SELECT 1 FROM tracker_transfers t WHERE t.call_id = c.call_id)"
            " ORDER BY call_id",
        )[0]
    )


def transferring_call(tracker: Tracker) -> str:
    return str(scalars(tracker, "SELECT MIN(call_id) FROM tracker_transfers")[0])


# --- the log gives the live records -----------------------------------------------------------


def test_a_generated_workload_rebuilds_to_the_live_records(loaded: Tracker) -> None:
    outcomes = {event.outcome for event in loaded.events()}
    assert {Outcome.APPLIED, Outcome.DUPLICATE, Outcome.REJECTED, Outcome.INVALID} <= outcomes
    assert scalars(loaded, "SELECT COUNT(*) FROM tracker_transfers")[0] > 0

    report = loaded.rebuild()

    assert report.differences == ()
    assert report.not_reapplied == ()
    assert report.calls_checked == loaded.count_calls()
    assert report.deliveries_replayed == len(loaded.events(outcome=Outcome.APPLIED))
    assert (report.applied, report.written, report.stopped) == (False, (), None)


def test_a_rebuild_with_apply_on_an_intact_database_writes_nothing(loaded: Tracker) -> None:
    versions = scalars(loaded, "SELECT version FROM tracker_calls ORDER BY call_id")
    report = loaded.rebuild(apply=True)
    assert (report.differences, report.written, report.stopped) == ((), (), None)
    assert scalars(loaded, "SELECT version FROM tracker_calls ORDER BY call_id") == versions


def test_an_empty_database_rebuilds_to_nothing(tracker: Tracker) -> None:
    report = tracker.rebuild(apply=True)
    assert (report.calls_checked, report.deliveries_replayed, report.differences) == (0, 0, ())


@pytest.mark.slow
def test_a_workload_applied_by_concurrent_workers_rebuilds_to_the_live_records(
    database_url: str,
) -> None:
    """Workers racing on the same calls commit in an order the log's ids follow call by call,
    so even the delivery each history step and transfer attempt names is found again."""
    with Tracker(database_url) as tracker:
        tracker.upgrade()
    bodies = [body.decode() for body in workload(seed=11, count=500)]
    shares = [[bodies[worker::WORKERS]] for worker in range(WORKERS)]

    run = run_together(apply_rounds, [(database_url, share) for share in shares], rounds=1)

    assert run.exceptions() == []
    with Tracker(database_url) as tracker:
        report = tracker.rebuild()
        assert report.deliveries_replayed == len(tracker.events(outcome=Outcome.APPLIED))
    assert (report.differences, report.not_reapplied) == ((), ())


# --- a tampered database ----------------------------------------------------------------------


def test_a_tampered_call_is_reported_with_its_fields_and_repaired(loaded: Tracker) -> None:
    facts, steps = plain_call(loaded), transferring_call(loaded)
    before = {call_id: loaded.get_call(call_id) for call_id in (facts, steps)}
    execute(
        loaded,
        "UPDATE tracker_calls SET state = 'initiated', tag = 'tampered', version = version + 1"
        " WHERE call_id = :call_id",
        call_id=facts,
    )
    execute(loaded, "UPDATE tracker_calls SET history = '[]' WHERE call_id = :c", c=steps)
    execute(loaded, "DELETE FROM tracker_transfers WHERE call_id = :c", c=steps)

    found = loaded.rebuild()
    assert sorted(found.differences, key=lambda d: d.call_id) == sorted(
        [
            CallDifference(facts, "differs", ("state", "tag")),
            CallDifference(steps, "differs", ("history", "transfers")),
        ],
        key=lambda d: d.call_id,
    )
    assert loaded.get_call(facts) != before[facts]  # reporting wrote nothing

    repaired = loaded.rebuild(apply=True)
    assert sorted(repaired.written) == sorted([facts, steps])
    assert (repaired.moved, repaired.stopped) == ((), None)
    assert {call_id: loaded.get_call(call_id) for call_id in before} == before
    assert loaded.rebuild().differences == ()


def test_more_differences_than_a_report_lists_are_counted_and_all_written_in_batches(
    loaded: Tracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With room for two calls in each list of the report and two calls per write, five
    tampered calls are all counted, all written (three batches, read back from the scratch
    file), and the next rebuild finds nothing."""
    tampered = scalars(loaded, "SELECT call_id FROM tracker_calls ORDER BY call_id")[:5]
    before = {call_id: loaded.get_call(call_id) for call_id in tampered}
    for call_id in tampered:
        execute(
            loaded,
            "UPDATE tracker_calls SET tag = 'tampered', version = version + 1 WHERE call_id = :c",
            c=call_id,
        )
    monkeypatch.setattr(rebuilding, "REPORTED", 2)
    monkeypatch.setattr(rebuilding, "WRITE_BATCH", 2)
    batches: list[list[str]] = []
    write_batch = rebuilding._write_batch

    def counted(connection: Any, batch: Any, **rest: Any) -> Any:
        batches.append([item.call_id for item in batch])
        return write_batch(connection, batch, **rest)

    monkeypatch.setattr(rebuilding, "_write_batch", counted)

    found = loaded.rebuild()
    assert (found.calls_differing, len(found.differences)) == (5, 2)
    assert {d.call_id for d in found.differences} < set(tampered)
    assert {d.fields for d in found.differences} == {("tag",)}

    repaired = loaded.rebuild(apply=True)
    assert (repaired.calls_written, len(repaired.written), repaired.calls_moved) == (5, 2, 0)
    assert sorted(call_id for batch in batches for call_id in batch) == sorted(tampered)
    assert [len(batch) for batch in batches] == [2, 2, 1]
    assert {call_id: loaded.get_call(call_id) for call_id in tampered} == before
    assert loaded.rebuild().calls_differing == 0


def test_an_event_id_in_a_history_step_is_compared(loaded: Tracker) -> None:
    call_id = plain_call(loaded)
    call = loaded.get_call(call_id)
    assert call is not None and call.history
    step = call.history[-1]
    wrong = [[s.source, s.target, s.at.isoformat(), s.event, s.event_id] for s in call.history]
    wrong[-1][4] = step.event_id + 1
    execute(
        loaded,
        "UPDATE tracker_calls SET history = :h WHERE call_id = :c",
        h=json.dumps(wrong),
        c=call_id,
    )
    assert loaded.rebuild().differences == (CallDifference(call_id, "differs", ("history",)),)
    loaded.rebuild(apply=True)
    assert loaded.get_call(call_id) == call


def test_a_deleted_call_is_reported_not_live_and_written_back(loaded: Tracker) -> None:
    call_id = plain_call(loaded)
    before = loaded.get_call(call_id)
    execute(loaded, "DELETE FROM tracker_calls WHERE call_id = :c", c=call_id)

    assert loaded.rebuild().differences == (CallDifference(call_id, "not_live"),)
    assert loaded.rebuild(apply=True).written == (call_id,)
    assert loaded.get_call(call_id) == before
    assert loaded.rebuild().differences == ()


def test_a_call_the_log_no_longer_tells_is_reported_and_kept(loaded: Tracker) -> None:
    call_id = plain_call(loaded)
    before = loaded.get_call(call_id)
    execute(loaded, "DELETE FROM tracker_events WHERE call_id = :c", c=call_id)  # as pruning would

    report = loaded.rebuild(apply=True)
    assert report.differences == (CallDifference(call_id, "not_in_log"),)
    assert report.written == ()
    assert loaded.get_call(call_id) == before


# --- writing while others write -----------------------------------------------------------


@pytest.fixture
def tampered(loaded: Tracker) -> tuple[Tracker, str]:
    call_id = plain_call(loaded)
    execute(loaded, "UPDATE tracker_calls SET tag = 'tampered' WHERE call_id = :c", c=call_id)
    return loaded, call_id


def _between_comparison_and_writing(monkeypatch: pytest.MonkeyPatch, action: Any) -> None:
    """Run `action` once the comparison is done and before anything is written: in the real
    database, at the one moment a concurrent writer matters most."""
    compare_not_live = rebuilding._not_live

    def then_act(live: Any, scratch: Any) -> Iterator[str]:
        yield from compare_not_live(live, scratch)
        action()

    monkeypatch.setattr(rebuilding, "_not_live", then_act)


def test_a_delivery_applied_meanwhile_stops_the_writing(
    tampered: tuple[Tracker, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker, call_id = tampered
    fresh = new_call_id()
    _between_comparison_and_writing(
        monkeypatch, lambda: tracker.apply(json.dumps(initiate(fresh, start=BASE_TIME)))
    )

    report = tracker.rebuild(apply=True)

    assert report.differences == (CallDifference(call_id, "differs", ("tag",)),)
    assert report.written == ()
    assert report.stopped is not None and "while no worker applies" in report.stopped
    found = tracker.get_call(call_id)
    assert found is not None and found.tag == "tampered"
    assert tracker.get_call(fresh) is not None


def test_a_call_changed_meanwhile_is_left_alone(
    tampered: tuple[Tracker, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker, call_id = tampered
    _between_comparison_and_writing(
        monkeypatch,
        lambda: execute(
            tracker,
            "UPDATE tracker_calls SET tag = 'later', version = version + 1 WHERE call_id = :c",
            c=call_id,
        ),
    )

    report = tracker.rebuild(apply=True)

    assert (report.written, report.moved, report.stopped) == ((), (call_id,), None)
    found = tracker.get_call(call_id)
    assert found is not None and found.tag == "later"


# --- the command line -------------------------------------------------------------------------


def run(*args: str) -> Result:
    isolated = {"COLUMNS": None, "FORCE_TERMINAL": None, "TTY_COMPATIBLE": None}
    return CliRunner().invoke(cli, list(args), env=isolated)


def test_the_command_reports_and_repairs(loaded: Tracker) -> None:
    url = loaded.engine.url.render_as_string(hide_password=False)
    call_id = plain_call(loaded)
    before = loaded.get_call(call_id)
    execute(loaded, "UPDATE tracker_calls SET cause = 'x' WHERE call_id = :c", c=call_id)

    shown = run("--db", url, "rebuild")
    assert shown.exit_code == 0, shown.output
    assert call_id in shown.stdout and "cause" in shown.stdout
    assert "1 differ" in shown.stdout

    as_json = run("--db", url, "rebuild", "--json")
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)
    assert report["differences"] == [{"call_id": call_id, "kind": "differs", "fields": ["cause"]}]
    assert report["calls_checked"] == loaded.count_calls()
    assert loaded.get_call(call_id) != before

    applied = run("--db", url, "rebuild", "--apply", "--json")
    assert applied.exit_code == 0, applied.output
    assert json.loads(applied.stdout)["written"] == [call_id]
    assert loaded.get_call(call_id) == before
    assert "0 differ" in run("--db", url, "rebuild").stdout
