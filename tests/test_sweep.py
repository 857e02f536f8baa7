"""The sweep ends calls whose terminal event was lost, and a real end replaces it entirely."""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_order_independence import ids_of, snapshot, workloads
from tests.workers import Crew, apply_rounds, record_figure
from tests.workers import snapshot as full_snapshot
from tracker import Outcome, Tracker
from tracker.cli import cli
from tracker.testing import (
    BASE_TIME,
    answer,
    disconnect,
    initiate,
    new_call_id,
    realistic_bodies,
    stamp,
    transfer_complete,
    transfer_disconnect,
)

NOW = BASE_TIME + timedelta(hours=5)
FOUR_HOURS = timedelta(hours=4)
TERMINAL_TYPES = ("disconnect", "transferDisconnect")


def applied(tracker: Tracker, *bodies: dict[str, Any]) -> None:
    for body in bodies:
        result = tracker.apply(json.dumps(body))
        assert result.outcome is Outcome.APPLIED, result


def sweep_entries(tracker: Tracker, call_id: str) -> list[Any]:
    return [entry for entry in tracker.events(call_id=call_id) if entry.origin == "sweep"]


# --- which calls, and what becomes of them --------------------------------------------------------


def test_live_calls_heard_of_before_the_limit_are_expired(tracker: Tracker) -> None:
    ringing, talking, placeholder_leg = new_call_id(), new_call_id(), new_call_id()
    placeholder = new_call_id()
    applied(
        tracker,
        initiate(ringing, start=BASE_TIME),
        answer(talking, start=BASE_TIME, ring=5.0),
        transfer_disconnect(placeholder, placeholder_leg, start=BASE_TIME + timedelta(seconds=9)),
    )

    report = tracker.sweep(FOUR_HOURS, now=NOW)

    assert sorted(report.expired) == sorted([ringing, talking, placeholder])
    assert report.checked == 3 and report.resolved == () and report.kept == ()
    for call_id, state_before in ((ringing, "initiated"), (talking, "answered")):
        call = tracker.get_call(call_id)
        assert call is not None
        assert (call.state, call.disposition, call.cause) == ("disconnected", "expired", None)
        assert (call.end_time, call.duration, call.swept_at, call.swept) == (None, None, NOW, True)
        last = call.history[-1]
        assert (last.source, last.target, last.at, last.event) == (
            state_before,
            "disconnected",
            NOW,
            "sweep",
        )
        (entry,) = sweep_entries(tracker, call_id)
        assert (entry.outcome, entry.event_type, entry.id) == ("applied", "sweep", last.event_id)
        assert json.loads(entry.body)["sweptAt"] == "2026-06-11T00:15:00Z"
    swept_placeholder = tracker.get_call(placeholder)
    assert swept_placeholder is not None and swept_placeholder.disposition == "expired"


def test_recent_calls_and_ended_calls_are_left_alone(tracker: Tracker) -> None:
    recent, answered_lately, ended = new_call_id(), new_call_id(), new_call_id()
    applied(
        tracker,
        initiate(recent, start=NOW - timedelta(hours=1)),
        # Started long ago, but answered within the limit: last heard of then.
        answer(answered_lately, start=BASE_TIME, ring=(4 * 3600 - 60) + 3600.0),
        disconnect(ended, start=BASE_TIME),
    )
    ended_before = tracker.get_call(ended)

    report = tracker.sweep(FOUR_HOURS, now=NOW)

    assert report.expired == () and report.checked == 1  # the answered call started long ago
    for call_id in (recent, answered_lately):
        call = tracker.get_call(call_id)
        assert call is not None and call.live and not call.swept
    assert tracker.get_call(ended) == ended_before
    assert sweep_entries(tracker, ended) == []


def test_sweeping_twice_sweeps_once(tracker: Tracker) -> None:
    call_id = new_call_id()
    applied(tracker, initiate(call_id, start=BASE_TIME))
    assert tracker.sweep(FOUR_HOURS, now=NOW).expired == (call_id,)
    assert tracker.sweep(FOUR_HOURS, now=NOW + timedelta(hours=1)).expired == ()
    assert len(sweep_entries(tracker, call_id)) == 1


def test_a_call_no_fact_dates_is_swept(sqlite_tracker: Tracker) -> None:
    call_id = new_call_id()
    body = transfer_complete(call_id)
    del body["startTime"]
    applied(sqlite_tracker, body)
    assert sqlite_tracker.sweep(FOUR_HOURS, now=NOW).expired == (call_id,)


def test_batches_smaller_than_the_live_calls_sweep_them_all(tracker: Tracker) -> None:
    call_ids = [new_call_id() for _ in range(7)]
    tracker.apply_many([json.dumps(initiate(call_id)) for call_id in call_ids])
    report = tracker.sweep(FOUR_HOURS, now=NOW, batch_size=2)
    assert sorted(report.expired) == sorted(call_ids) and report.checked == 7


def test_the_sweep_body_handed_to_apply_is_ignored(sqlite_tracker: Tracker) -> None:
    call_id = new_call_id()
    applied(sqlite_tracker, initiate(call_id))
    sqlite_tracker.sweep(FOUR_HOURS, now=NOW)
    (entry,) = sweep_entries(sqlite_tracker, call_id)
    assert sqlite_tracker.apply(entry.body).outcome is Outcome.IGNORED


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"older_than": timedelta(0)}, "positive timedelta"),
        ({"older_than": 3600}, "positive timedelta"),
        ({"older_than": FOUR_HOURS, "now": datetime(2026, 6, 1)}, "no time zone"),
        ({"older_than": FOUR_HOURS, "batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_are_refused_with_the_fix(
    tracker: Tracker, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        tracker.sweep(**arguments)


# --- a real end replaces the sweep ----------------------------------------------------------------


def test_a_disconnect_after_the_sweep_gives_the_record_it_would_have_had(
    sqlite_tracker: Tracker, tmp_path: Path
) -> None:
    call_id = new_call_id()
    bodies = [answer(call_id, ring=4.0), disconnect(call_id, ring=4.0, talk=90.0)]
    applied(sqlite_tracker, bodies[0])
    sqlite_tracker.sweep(FOUR_HOURS, now=NOW)

    result = sqlite_tracker.apply(json.dumps(bodies[1]))

    assert result.outcome is Outcome.APPLIED
    with Tracker(f"sqlite:///{tmp_path / 'never-swept.db'}") as never_swept:
        never_swept.upgrade()
        applied(never_swept, *bodies)
        assert snapshot(sqlite_tracker, {call_id}) == snapshot(never_swept, {call_id})
    call = sqlite_tracker.get_call(call_id)
    assert call is not None and call.disposition == "completed" and not call.swept
    assert sqlite_tracker.apply(json.dumps(bodies[1])).outcome is Outcome.DUPLICATE


def test_a_late_answer_after_the_sweep_is_merged_and_the_call_stays_ended(
    sqlite_tracker: Tracker,
) -> None:
    call_id = new_call_id()
    applied(sqlite_tracker, initiate(call_id, start=BASE_TIME))
    sqlite_tracker.sweep(FOUR_HOURS, now=NOW)
    late = answer(call_id, start=BASE_TIME, ring=6.0, direction="inbound")
    applied(sqlite_tracker, late)
    call = sqlite_tracker.get_call(call_id)
    assert call is not None
    assert (call.state, call.disposition, call.answered) == ("disconnected", "expired", True)
    assert [(step.source, step.target, step.event) for step in call.history] == [
        ("initiated", "answered", "answer"),
        ("answered", "disconnected", "sweep"),
    ]


def swept_version(record: dict[str, Any]) -> dict[str, Any]:
    """What the sweep makes of a live call's record (as `snapshot` gives it), at `swept_at`
    left open: the caller checks it against the sweep instants."""
    return {
        **record,
        "state": "disconnected",
        "disposition": "expired",
        "end_source": "sweep",
        "swept_at": "any sweep",
        "history": [
            *record["history"],
            {"source": record["state"], "target": "disconnected", "at": "any sweep"},
        ],
    }


def with_sweep_instants_named(record: dict[str, Any], instants: set[datetime]) -> dict[str, Any]:
    assert record["swept_at"] in instants
    *steps, last = record["history"]
    assert last["at"] == record["swept_at"] and last["event"] == "sweep"
    return {
        **record,
        "swept_at": "any sweep",
        "history": [
            *steps,
            {"source": last["source"], "target": last["target"], "at": "any sweep"},
        ],
    }


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(trees=workloads(), seed=st.integers(0, 2**32 - 1))
def test_a_real_terminal_event_after_a_sweep_replaces_it_entirely(
    two_trackers: tuple[Tracker, Tracker], trees: list[dict[str, Any]], seed: int
) -> None:
    never_swept, swept = two_trackers
    rng = random.Random(seed)
    for body in trees:
        applied(never_swept, body)
    deliveries = [json.dumps(body) for body in trees]
    deliveries += [json.dumps(rng.choice(trees)) for _ in range(rng.randint(0, len(trees)))]
    rng.shuffle(deliveries)
    # Sweep at one or two random points (every live call is old by then), and at the end.
    instants = [BASE_TIME + timedelta(days=30 + day) for day in range(3)]
    points = sorted(rng.sample(range(len(deliveries) + 1), rng.randint(1, 2)))
    sweeps = dict(zip(points, instants, strict=False))
    for index, body in enumerate(deliveries):
        if index in sweeps:
            swept.sweep(timedelta(hours=1), now=sweeps[index])
        assert swept.apply(body).outcome in (Outcome.APPLIED, Outcome.DUPLICATE)
    if len(deliveries) in sweeps:
        swept.sweep(timedelta(hours=1), now=sweeps[len(deliveries)])
    swept.sweep(timedelta(hours=1), now=instants[-1])

    ended = {body["callId"] for body in trees if body["eventType"] in TERMINAL_TYPES}
    ids = ids_of(trees)
    expected, found = snapshot(never_swept, ids), snapshot(swept, ids)
    for call_id in sorted(ids):
        if call_id in ended:
            assert found[call_id] == expected[call_id], call_id
        else:  # its end never came: the last sweep, at the latest, ended it
            assert with_sweep_instants_named(found[call_id], set(instants)) == swept_version(
                expected[call_id]
            ), call_id


# --- rebuild knows the sweep ----------------------------------------------------------------------


def test_a_rebuild_replays_the_sweeps_and_finds_no_difference(tracker: Tracker) -> None:
    bodies = realistic_bodies(600, seed=11)
    ended = {
        json.loads(body)["callId"]
        for body in bodies[200:]
        if json.loads(body)["eventType"] in TERMINAL_TYPES
    }
    # Some calls swept before their end arrives, the last ones for good.
    far = datetime.now(UTC) + timedelta(days=3650)
    tracker.apply_many(bodies[:200])
    tracker.sweep(timedelta(hours=1), now=far)
    tracker.apply_many(bodies[200:])
    tracker.sweep(timedelta(hours=1), now=far + timedelta(days=1))
    assert any(call.swept for call in tracker.calls())
    assert any(entry.origin == "sweep" and entry.call_id in ended for entry in tracker.events())

    report = tracker.rebuild()

    assert report.differences == () and report.not_reapplied == ()
    assert report.deliveries_replayed == len(tracker.events(outcome="applied"))


# --- command line ---------------------------------------------------------------------------------


def test_the_command_sweeps_and_reports(sqlite_tracker: Tracker) -> None:
    url = sqlite_tracker.engine.url.render_as_string(hide_password=False)
    old, recent = new_call_id(), new_call_id()
    applied(sqlite_tracker, initiate(old, start=BASE_TIME), initiate(recent, start=NOW))
    now = stamp(NOW + timedelta(minutes=30))

    done = CliRunner().invoke(
        cli, ["--db", url, "sweep", "--older-than", "4h", "--now", now, "--json"]
    )

    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == {
        "checked": 1,
        "expired": [old],
        "resolved": [],
        "kept": [],
        "failed": [],
        "older_than": 14400.0,
    }
    again = CliRunner().invoke(cli, ["--db", url, "sweep", "--older-than", "1h30m", "--now", now])
    assert again.exit_code == 0 and again.stdout.startswith("Expired 0 calls of 0 live calls")
    shown = CliRunner().invoke(cli, ["--db", url, "show", old, "--json"])
    assert json.loads(shown.stdout)["swept_at"] == "2026-06-11T00:45:00Z"


@pytest.mark.parametrize("given", ["soon", "-4h", "0", "4x", ""])
def test_the_command_refuses_a_duration_it_cannot_read(sqlite_tracker: Tracker, given: str) -> None:
    url = sqlite_tracker.engine.url.render_as_string(hide_password=False)
    done = CliRunner().invoke(cli, ["--db", url, "sweep", "--older-than", given])
    assert done.exit_code == 2 and "is not a positive duration" in done.output


# --- while workers apply --------------------------------------------------------------------------

WORKERS = 3


@pytest.mark.slow
def test_sweeping_while_workers_apply_loses_no_real_end(
    backend: str, tracker: Tracker, database_url: str, tmp_path: Path
) -> None:
    bodies = realistic_bodies(600, seed=5)
    # Every live call is old to a sweep dated ten years on: each is expired the moment it is
    # seen, so the sweep races every terminal event the workers apply. The calls live after the
    # first 150 deliveries are swept before the workers start, so some real ends surely come
    # after a sweep, however the threads are scheduled.
    far = datetime.now(UTC) + timedelta(days=3650)
    first, rest = bodies[:150], bodies[150:]
    tracker.apply_many(first)
    expired = list(tracker.sweep(timedelta(hours=1), now=far).expired)
    shares = [[[body.decode() for body in rest[worker::WORKERS]]] for worker in range(WORKERS)]
    stop = threading.Event()
    failures: list[BaseException] = []

    def sweep_until_stopped() -> None:
        try:
            while not stop.is_set():
                expired.extend(tracker.sweep(timedelta(hours=1), now=far, batch_size=5).expired)
        except BaseException as error:
            failures.append(error)

    with Crew(apply_rounds, [(database_url, share) for share in shares]) as crew:
        sweeper = threading.Thread(target=sweep_until_stopped)
        crew.wait_for_start()
        sweeper.start()
        try:
            outcomes = Counter(o for worker in crew.collect() for rnd in worker for o in rnd)
        finally:
            stop.set()
            sweeper.join()
    expired.extend(tracker.sweep(timedelta(hours=1), now=far).expired)

    assert failures == []
    assert outcomes == {"applied": len(rest)}, outcomes
    with Tracker(f"sqlite:///{tmp_path / 'never-swept.db'}") as never_swept:
        never_swept.upgrade()
        never_swept.apply_many(bodies)
        expected = full_snapshot(never_swept, [])
    found = full_snapshot(tracker, [])
    assert found.keys() == expected.keys()
    replaced = 0
    for call_id, record in found.items():
        assert record is not None and expected[call_id] is not None
        if expected[call_id]["state"] == "disconnected":
            assert record == expected[call_id], call_id
            replaced += call_id in expired
        else:
            assert (record["state"], record["disposition"]) == ("disconnected", "expired")
    assert replaced > 0, "no real end came after a sweep: the test proved nothing"
    record_figure(
        f"[sweep {backend}] {len(expired)} expiries while {WORKERS} workers applied "
        f"{len(rest)} deliveries; {replaced} replaced by the call's real end"
    )
