"""Many workers, one database: real processes (and threads) applying at the same instant.

The promise under test (SPEC section 4): `apply` is safe from many threads, processes and hosts
at once. Every distinct delivery is `applied` exactly once and every repeat is `duplicate`,
whichever worker gets it; no exception leaks from a race (unique keys, lost compare-and-set,
deadlocks, serialization failures, SQLite's "database is locked" are all retried inside); and
the final records are those of one worker applying everything in order.

Each test runs on SQLite, PostgreSQL and MariaDB, and prints its figures (run pytest with -s).
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from tests.conftest import fresh_database
from tests.workers import (
    START_TIMEOUT,
    Crew,
    apply_many_rounds,
    apply_rounds,
    print_figures,
    run_together,
    snapshot,
)
from tracker import Outcome, Tracker
from tracker.testing import (
    ACCOUNT,
    BASE_TIME,
    disconnect,
    initiate,
    live_events_of,
    new_call_id,
    relayed,
    transfer_answer,
    transfer_disconnect,
)

WORKERS = 4
ROUNDS = 8  # for the classic races: each is run this many times, on new calls every time
BATCH = 8  # bodies per apply_many call in the batch variant
TREES = 150  # for the big shuffle: about 3 bodies per tree, about 1.6 deliveries per body

# Documented causes, and one no document lists (kept verbatim, disposition `failed`).
CAUSES = ("hangup", "busy", "timeout", "cancel", "rejected", "error", "carrier-outage-7")


@pytest.fixture
def reference_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A second empty database on the same backend, for the serial run to compare with."""
    directory = tmp_path / "reference"
    directory.mkdir()
    yield from fresh_database(backend, directory)


# --- the big shuffle ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, BATCH], ids=["apply", f"apply_many-{BATCH}"])
def test_shuffled_repeated_deliveries_from_many_workers_match_a_serial_run(
    backend: str, database_url: str, reference_url: str, batch: int
) -> None:
    """Each worker applies its share in order: one body at a time with `apply`, or in batches
    with `apply_many` (a whole batch commits or retries together)."""
    rng = random.Random(20260610)
    bodies = transfer_tree_bodies(rng, trees=TREES)
    deliveries = repeated_and_shuffled(bodies, rng)
    shares = [deliveries[worker::WORKERS] for worker in range(WORKERS)]
    migrate(database_url)

    jobs: list[tuple[object, ...]]
    if batch == 1:
        jobs = [(database_url, [[body for _, body in share]]) for share in shares]
        run = run_together(apply_rounds, jobs, rounds=1)
    else:
        jobs = [(database_url, [batches([body for _, body in share], batch)]) for share in shares]
        run = run_together(apply_many_rounds, jobs, rounds=1)
    print_figures(
        f"{backend} shuffle, {'apply' if batch == 1 else f'apply_many of {batch}'}",
        workers=WORKERS,
        deliveries=len(deliveries),
        seconds=run.seconds,
    )

    assert run.exceptions() == []
    outcomes_by_content: defaultdict[int, list[str]] = defaultdict(list)
    for share, reported in zip(shares, run.outcomes, strict=True):
        for (content, _body), outcome in zip(share, reported[0], strict=True):
            outcomes_by_content[content].append(outcome)
    not_once = {
        content: outcomes
        for content, outcomes in outcomes_by_content.items()
        if sorted(outcomes) != ["applied"] + ["duplicate"] * (len(outcomes) - 1)
    }
    assert not_once == {}, "each distinct delivery must be applied once, its repeats duplicate"
    with Tracker(database_url) as tracker:
        assert Counter(event.outcome for event in tracker.events()) == {
            Outcome.APPLIED: len(bodies),
            Outcome.DUPLICATE: len(deliveries) - len(bodies),
        }
    assert_records_match_a_serial_run(database_url, reference_url, bodies)


# --- the classic races, each released by a barrier at the same instant, round after round ------


@pytest.mark.slow
def test_legs_creating_the_same_placeholder_parent_at_once_all_apply(
    database_url: str, reference_url: str
) -> None:
    rng = random.Random(1)
    rounds: list[list[str]] = []  # [round][worker]
    for _ in range(ROUNDS):
        parent_id = new_call_id()
        rounds.append([to_json(leg_body(parent_id, rng, number)) for number in range(WORKERS)])
    migrate(database_url)

    run = run_together(apply_rounds, jobs_by_worker(database_url, rounds), rounds=ROUNDS)

    assert run.flat() == ["applied"] * (WORKERS * ROUNDS)
    with Tracker(database_url) as tracker:
        for legs in rounds:
            parent_id = json.loads(legs[0])["parentCallId"]
            parent = tracker.get_call(parent_id)
            assert parent is not None
            assert parent.state == "initiated"
            assert sorted(parent.legs) == sorted(json.loads(leg)["callId"] for leg in legs)
    assert_records_match_a_serial_run(database_url, reference_url, flatten(rounds))


@pytest.mark.slow
def test_a_parent_and_its_legs_arriving_together_all_apply(
    database_url: str, reference_url: str
) -> None:
    rng = random.Random(2)
    rounds: list[list[str]] = []
    for number in range(ROUNDS):
        parent = parent_body(rng, start=BASE_TIME + timedelta(hours=number))
        # Every other round, the legs carry no callUrl: their account comes from the parent.
        legs = [
            leg_body(parent["callId"], rng, leg, with_call_url=number % 2 == 0)
            for leg in range(WORKERS - 1)
        ]
        rounds.append([to_json(body) for body in (parent, *legs)])
    migrate(database_url)

    run = run_together(apply_rounds, jobs_by_worker(database_url, rounds), rounds=ROUNDS)

    assert run.flat() == ["applied"] * (WORKERS * ROUNDS)
    with Tracker(database_url) as tracker:
        for bodies in rounds:
            parent_id = json.loads(bodies[0])["callId"]
            call = tracker.get_call(parent_id)
            assert call is not None
            assert call.state == "disconnected"
            assert len(call.legs) == WORKERS - 1
            for leg_id in call.legs:
                leg = tracker.get_call(leg_id)
                assert leg is not None
                assert (leg.parent_call_id, leg.account_id) == (parent_id, ACCOUNT)
    assert_records_match_a_serial_run(database_url, reference_url, flatten(rounds))


@pytest.mark.slow
def test_the_same_body_delivered_to_several_workers_at_once_is_applied_once(
    database_url: str, reference_url: str
) -> None:
    rng = random.Random(3)
    rounds: list[list[str]] = []
    originals: list[str] = []
    for number in range(ROUNDS):
        body = to_json(
            parent_body(rng) if number % 2 == 0 else leg_body(new_call_id(), rng, number)
        )
        originals.append(body)
        # Half the workers get the bytes as sent, half a relay's re-serialization of them.
        rounds.append(
            [body if worker % 2 == 0 else reserialized(body, rng) for worker in range(WORKERS)]
        )
    migrate(database_url)

    run = run_together(apply_rounds, jobs_by_worker(database_url, rounds), rounds=ROUNDS)

    for number in range(ROUNDS):
        outcomes = sorted(worker[number][0] for worker in run.outcomes)
        assert outcomes == ["applied"] + ["duplicate"] * (WORKERS - 1)
    with Tracker(database_url) as tracker:
        assert Counter(event.outcome for event in tracker.events()) == {
            Outcome.APPLIED: ROUNDS,
            Outcome.DUPLICATE: ROUNDS * (WORKERS - 1),
        }
    assert_records_match_a_serial_run(database_url, reference_url, originals)


# --- threads and processes together ------------------------------------------------------------


@pytest.mark.slow
def test_threads_and_processes_sharing_one_database_apply_everything_without_errors(
    backend: str, database_url: str
) -> None:
    """On SQLite this is one file, written by 8 threads of one Tracker and 4 processes: with
    WAL and a busy timeout, 'database is locked' must never leak from `apply`."""
    threads = 8
    rng = random.Random(4)
    bodies = transfer_tree_bodies(rng, trees=60)
    rng.shuffle(bodies)
    shares = [bodies[part :: threads + WORKERS] for part in range(threads + WORKERS)]
    thread_shares, process_shares = shares[:threads], shares[threads:]
    migrate(database_url)

    with Tracker(database_url) as shared:
        shared.get_call("warm-up")

        released: list[float] = []

        def in_thread(share: Sequence[str]) -> list[str]:
            crew.start.wait(timeout=START_TIMEOUT)
            released.append(time.perf_counter())
            return [outcome_or_exception(shared, body) for body in share]

        jobs = [(database_url, [share]) for share in process_shares]
        with (
            Crew(apply_rounds, jobs, extra_parties=threads) as crew,
            ThreadPoolExecutor(threads) as pool,
        ):
            futures = [pool.submit(in_thread, share) for share in thread_shares]
            process_outcomes = [outcome for worker in crew.collect() for outcome in worker[0]]
            thread_outcomes = [outcome for future in futures for outcome in future.result()]
            seconds = time.perf_counter() - min(released)
        print_figures(
            f"{backend} {threads} threads + {WORKERS} processes",
            workers=threads + WORKERS,
            deliveries=len(bodies),
            seconds=seconds,
        )

        assert thread_outcomes + process_outcomes == ["applied"] * len(bodies)
        assert len(shared.events(outcome="applied")) == len(bodies)


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    with Tracker(f"sqlite:///{tmp_path / 'tracker.db'}") as tracker:
        tracker.upgrade()
        with tracker.engine.connect() as connection:
            journal_mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
            busy_timeout = connection.exec_driver_sql("PRAGMA busy_timeout").scalar()
    assert journal_mode == "wal"
    assert isinstance(busy_timeout, int)
    assert busy_timeout >= 5000


# --- the order in which a batch locks its calls ---------------------------------------------


def test_a_batch_locks_the_calls_that_exist_first_then_the_new_ones_each_in_call_id_order(
    backend: str, tracker: Tracker
) -> None:
    """Whatever order a batch's deliveries come in and whatever columns each changes, its row
    locks follow one order: the stored calls by id, then the new ones by id. Two batches
    sharing calls then never wait for each other in a cycle. Seen in the statements that write
    the calls: the first one naming each call is the one that locks it."""
    ids = [new_call_id() for _ in range(9)]  # new ids sort as they are made
    stored, created = ids[1::2], ids[0::2]
    for call_id in stored:
        assert tracker.apply(initiate(call_id)).outcome is Outcome.APPLIED
    # Answered and unanswered ends alternate, so the UPDATEs change two sets of columns, in
    # four runs: more statements in call-id order than the rows are locked by one first.
    ends = [
        disconnect(call_id, direction="inbound", ring=None if number % 2 else 3.0)
        for number, call_id in enumerate(stored)
    ]
    batch = [initiate(created[2]), ends[2], initiate(created[0]), ends[0], ends[3], ends[1]]
    batch += [initiate(created[3]), initiate(created[4]), initiate(created[1])]

    with locks_taken(tracker, ids) as locked:
        results = tracker.apply_many([json.dumps(body) for body in batch])

    assert [result.outcome for result in results] == [Outcome.APPLIED] * len(batch)
    if backend == "sqlite":
        # One writer at a time: BEGIN IMMEDIATE locked the whole database before any row.
        assert sorted(locked[: len(stored)]) == sorted(stored)
    else:
        assert locked == sorted(stored) + sorted(created)


def test_a_stored_leg_learning_a_new_parent_is_locked_before_the_parent_is_inserted(
    backend: str, tracker: Tracker
) -> None:
    """The leg's UPDATE must wait for its new parent's INSERT (a foreign key), so the stored
    calls are locked first by a statement of their own, still in call-id order."""
    parent_id, leg_id, other_id = (new_call_id() for _ in range(3))
    assert tracker.apply(transfer_answer(None, leg_id)).outcome is Outcome.APPLIED
    assert tracker.apply(initiate(other_id)).outcome is Outcome.APPLIED
    batch = [
        disconnect(other_id, direction="inbound"),
        transfer_disconnect(parent_id, leg_id),
    ]

    with locks_taken(tracker, [parent_id, leg_id, other_id]) as locked:
        results = tracker.apply_many([json.dumps(body) for body in batch])

    assert [result.outcome for result in results] == [Outcome.APPLIED] * len(batch)
    leg = tracker.get_call(leg_id)
    assert leg is not None and leg.parent_call_id == parent_id
    if backend != "sqlite":  # one writer at a time there
        assert locked == [leg_id, other_id, parent_id]


@pytest.mark.slow
def test_two_processes_applying_batches_of_interleaved_shared_calls_match_a_serial_run(
    backend: str, database_url: str, reference_url: str
) -> None:
    """Two workers, each given every other body of the same transfer trees, in batches: their
    batches keep touching the same calls, existing and new, in other orders. No error (a
    deadlock given up on included) may leave `apply_many`, and the records are a serial run's."""
    rng = random.Random(12)
    bodies = transfer_tree_bodies(rng, trees=40)
    shares = [bodies[worker::2] for worker in range(2)]
    migrate(database_url)

    jobs = [(database_url, [batches(share, BATCH)]) for share in shares]
    run = run_together(apply_many_rounds, jobs, rounds=1)
    print_figures(
        f"{backend} 2 processes, apply_many of {BATCH}, interleaved",
        workers=2,
        deliveries=len(bodies),
        seconds=run.seconds,
    )

    assert run.exceptions() == []
    assert run.flat() == ["applied"] * len(bodies)
    assert_records_match_a_serial_run(database_url, reference_url, bodies)


@contextmanager
def locks_taken(tracker: Tracker, call_ids: Sequence[str]) -> Iterator[list[str]]:
    """The calls among `call_ids` in the order the statements writing or locking the calls'
    rows first name them (every value of their parameters that is one of the ids)."""
    wanted = set(call_ids)
    locked: list[str] = []

    def before_cursor_execute(
        _conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, many: bool
    ) -> None:
        words = " ".join(statement.split()).upper()
        if not (
            words.startswith(("INSERT INTO TRACKER_CALLS", "UPDATE TRACKER_CALLS"))
            or (words.startswith("SELECT") and words.endswith("FOR UPDATE"))
        ):
            return
        for row in parameters if many else [parameters]:
            values = row.values() if isinstance(row, dict) else row
            for value in values:
                if value in wanted and value not in locked:
                    locked.append(value)

    event.listen(tracker.engine, "before_cursor_execute", before_cursor_execute)
    try:
        yield locked
    finally:
        event.remove(tracker.engine, "before_cursor_execute", before_cursor_execute)


# --- data and helpers --------------------------------------------------------------------------


def parent_body(rng: random.Random, *, start: Any = BASE_TIME) -> dict[str, Any]:
    """A `disconnect` of an original call, inbound or outbound, answered or not, with one of
    several causes."""
    return disconnect(
        new_call_id(),
        start=start + timedelta(milliseconds=rng.randrange(1000)),
        ring=rng.choice([None, 2.5, 4.125]),
        talk=rng.randrange(10_000, 600_000) / 1000,
        cause=rng.choice(CAUSES),
        direction=rng.choice(["inbound", "outbound"]),
        **{"from": phone_number(rng), "to": phone_number(rng)},
    )


def leg_body(
    parent_id: str,
    rng: random.Random,
    number: int,
    *,
    start: Any = BASE_TIME,
    with_call_url: bool = True,
    call_id: str | None = None,
) -> dict[str, Any]:
    """The `transferDisconnect` of leg `number` of `parent_id`: legs start seconds apart, and each
    leg's from/to differ, so which leg a placeholder parent takes its numbers from shows."""
    extra: dict[str, Any] = {"from": phone_number(rng), "to": phone_number(rng)}
    if not with_call_url:
        extra["callUrl"] = ...
    return transfer_disconnect(
        parent_id,
        call_id,
        start=start + timedelta(seconds=5 + 7 * number, milliseconds=rng.randrange(1000)),
        ring=rng.choice([None, 1.5, 3.25]),
        talk=rng.randrange(1_000, 300_000) / 1000,
        cause=rng.choice(CAUSES),
        transferTo=phone_number(rng),
        **extra,
    )


def transfer_tree_bodies(
    rng: random.Random, *, trees: int, grandchildren: float = 0.15
) -> list[str]:
    """Bodies of `trees` transfer trees, each parent before its legs: a parent with 1 to 3 legs,
    some legs without a callUrl (their account comes from the tree), and now and then (a
    `grandchildren` share of the legs) a leg that was itself transferred."""
    bodies: list[dict[str, Any]] = []
    for number in range(trees):
        parent = parent_body(rng, start=BASE_TIME + timedelta(minutes=number))
        start = BASE_TIME + timedelta(minutes=number)
        legs: list[dict[str, Any]] = []
        for leg_number in range(rng.randint(1, 3)):
            leg = leg_body(
                parent["callId"],
                rng,
                leg_number,
                start=start,
                with_call_url=rng.random() < 0.7,
            )
            legs.append(leg)
            if rng.random() < grandchildren:
                legs.append(leg_body(leg["callId"], rng, 3, start=start))
        for body in (parent, *legs):
            # Every tracked type: the live callbacks each call had before it ended.
            transfers = len(legs) if body is parent else 0
            bodies += [*live_events_of(body, legs=min(transfers, 2)), body]
    return [to_json(body) for body in bodies]


def repeated_and_shuffled(bodies: Sequence[str], rng: random.Random) -> list[tuple[int, str]]:
    """Deliveries as (index of the distinct body, bytes): every body once, about half of them
    again once or twice (byte for byte, or re-serialized as a relay would), all shuffled."""
    deliveries = [(content, body) for content, body in enumerate(bodies)]
    for content, body in enumerate(bodies):
        if rng.random() < 0.5:
            for _ in range(rng.randint(1, 2)):
                again = body if rng.random() < 0.5 else reserialized(body, rng)
                deliveries.append((content, again))
    rng.shuffle(deliveries)
    return deliveries


def reserialized(body: str, rng: random.Random) -> str:
    """The same content, spelled differently by a relay (the kit's `relayed`, drawn)."""
    return relayed(json.loads(body), seed=rng.getrandbits(32)).decode()


def phone_number(rng: random.Random) -> str:
    return f"+1555{rng.randrange(10**7):07d}"


def to_json(body: dict[str, Any]) -> str:
    return json.dumps(body)


def batches(bodies: Sequence[str], size: int) -> list[list[str]]:
    return [list(bodies[start : start + size]) for start in range(0, len(bodies), size)]


def flatten(rounds: Sequence[Sequence[str]]) -> list[str]:
    return [body for bodies in rounds for body in bodies]


def jobs_by_worker(url: str, rounds: Sequence[Sequence[str]]) -> list[tuple[object, ...]]:
    """Worker w gets, in each round, the w-th body of that round."""
    return [(url, [[bodies[worker]] for bodies in rounds]) for worker in range(WORKERS)]


def migrate(url: str) -> None:
    with Tracker(url) as tracker:
        tracker.upgrade()


def outcome_or_exception(tracker: Tracker, body: str) -> str:
    try:
        return tracker.apply(body).outcome.value
    except Exception as error:
        return f"raised {error!r}"


def call_ids_of(bodies: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for body in bodies:
        content = json.loads(body)
        found.add(content["callId"])
        if "parentCallId" in content:
            found.add(content["parentCallId"])
    return found


def assert_records_match_a_serial_run(url: str, reference_url: str, bodies: Sequence[str]) -> None:
    """The records the workers left equal those of one tracker applying `bodies` in order."""
    migrate(reference_url)
    with Tracker(reference_url) as serial:
        assert [serial.apply(body).outcome for body in bodies] == [Outcome.APPLIED] * len(bodies)
        expected = snapshot(serial, call_ids_of(bodies))
    with Tracker(url) as concurrent:
        found = snapshot(concurrent, call_ids_of(bodies))
    differing = {
        call_id: {
            name: (value, (expected.get(call_id) or {}).get(name))
            for name, value in (record or {"record": None}).items()
            if value != (expected.get(call_id) or {}).get(name)
        }
        for call_id, record in found.items()
        if record != expected.get(call_id)
    }
    assert differing == {}, "call: {attribute: (after the workers, after a serial run)}"
    assert found == expected
