"""Races where a decision reads more than the call and its parent (SPEC section 4).

The cycle rule reads the parent's whole ancestry, and a tree that learns its account is filled
from a walk of the whole tree. Two workers released by a barrier at the same instant each make a
change the other's decision read; whatever the interleaving, the result must be one a serial run
can give. Before the ancestry and the tree walk were compare-and-set, both races were lost on
PostgreSQL and MariaDB (a call became its own ancestor; a grandchild kept no account).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults_support import faults
from tests.test_concurrency import leg_body, migrate, to_json
from tests.workers import apply_rounds, run_together
from tracker import Outcome, Reason, Tracker
from tracker.testing import ACCOUNT, machine_detection_complete, new_call_id

ROUNDS = 12


@pytest.fixture
def migrated_url(database_url: str) -> str:
    migrate(database_url)
    return database_url


def apply_serially(url: str, bodies: list[dict[str, object]]) -> None:
    with Tracker(url) as tracker:
        outcomes = [tracker.apply(to_json(body)).outcome for body in bodies]
    assert outcomes == [Outcome.APPLIED] * len(bodies)


def ancestors(tracker: Tracker, call_id: str) -> list[str]:
    """The ids above `call_id`, nearest first, stopping (and including it) at a repeat."""
    chain: list[str] = []
    call = tracker.get_call(call_id)
    while call is not None and call.parent_call_id is not None:
        chain.append(call.parent_call_id)
        if call.parent_call_id in chain[:-1] or call.parent_call_id == call_id:
            break
        call = tracker.get_call(call.parent_call_id)
    return chain


@pytest.mark.slow
def test_two_legs_that_would_close_a_cycle_at_once_never_make_a_call_its_own_ancestor(
    migrated_url: str,
) -> None:
    # Each round: B is a leg of placeholder A, L a leg of placeholder C. Then, at once, C reports
    # as a leg of B and A as a leg of L: together A -> L -> C -> B -> A. Each alone is fine.
    rng = random.Random(8)
    rounds: list[list[str]] = []
    setup: list[dict[str, object]] = []
    for _ in range(ROUNDS):
        a, b, c, leg = (new_call_id() for _ in range(4))
        setup += [leg_body(a, rng, 0, call_id=b), leg_body(c, rng, 0, call_id=leg)]
        rounds.append(
            [to_json(leg_body(b, rng, 1, call_id=c)), to_json(leg_body(leg, rng, 1, call_id=a))]
        )
    apply_serially(migrated_url, setup)
    jobs = [(migrated_url, [[bodies[worker]] for bodies in rounds]) for worker in range(2)]

    run = run_together(apply_rounds, jobs, rounds=ROUNDS)

    assert not [outcome for outcome in run.flat() if outcome.startswith("raised")]
    with Tracker(migrated_url) as tracker:
        for bodies in rounds:
            outcomes = sorted(
                outcome
                for body in bodies
                for outcome in [
                    event.outcome
                    for event in tracker.events(call_id=json.loads(body)["callId"])
                    if event.body == body.encode()
                ]
            )
            assert outcomes == [Outcome.APPLIED, Outcome.REJECTED]
        rejected = tracker.events(outcome="rejected")
        assert [event.reason for event in rejected] == [Reason.ANCESTRY_CYCLE] * ROUNDS
        for call in tracker.calls():
            assert call.call_id not in ancestors(tracker, call.call_id)


@pytest.mark.slow
def test_a_grandchild_added_while_its_tree_learns_its_account_gets_the_account(
    migrated_url: str,
) -> None:
    # Each round: L1 is a leg of placeholder R, and neither knows its account. Then, at once,
    # L2 reports as a leg of R with the account, and G as a leg of L1 without one.
    rng = random.Random(9)
    rounds: list[list[str]] = []
    setup: list[dict[str, object]] = []
    grandchildren: list[str] = []
    for _ in range(ROUNDS):
        root, first_leg = new_call_id(), new_call_id()
        setup.append(leg_body(root, rng, 0, call_id=first_leg, with_call_url=False))
        grandchild = leg_body(first_leg, rng, 2, with_call_url=False)
        grandchildren.append(str(grandchild["callId"]))
        rounds.append([to_json(leg_body(root, rng, 1)), to_json(grandchild)])
    apply_serially(migrated_url, setup)
    jobs = [(migrated_url, [[bodies[worker]] for bodies in rounds]) for worker in range(2)]

    run = run_together(apply_rounds, jobs, rounds=ROUNDS)

    assert run.flat() == ["applied"] * (2 * ROUNDS)
    with Tracker(migrated_url) as tracker:
        for call in tracker.calls():
            assert call.account_id == ACCOUNT, call.call_id
        assert all(tracker.get_call(call_id) is not None for call_id in grandchildren)


def test_the_grandchild_race_gives_the_account_in_a_serial_run_in_either_order(
    tmp_path: Path,
) -> None:
    """The expectation above is what one worker applying in order gives."""
    rng = random.Random(9)
    for order in (1, -1):
        url = f"sqlite:///{tmp_path / f'order{order}.db'}"
        migrate(url)
        root, first_leg = new_call_id(), new_call_id()
        racing = [leg_body(root, rng, 1), leg_body(first_leg, rng, 2, with_call_url=False)]
        setup = leg_body(root, rng, 0, call_id=first_leg, with_call_url=False)
        apply_serially(url, [setup, *racing[::order]])
        with Tracker(url) as tracker:
            assert {call.account_id for call in tracker.calls()} == {ACCOUNT}


# --- a change committed between a decision and its write, on the servers ---------------------


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_an_ancestor_changed_while_a_tree_learns_its_account_makes_the_delivery_run_again(
    backend: str, migrated_url: str
) -> None:
    """G (a placeholder) reports as a leg of L1, with the account its tree lacks: the decision
    reads L1's ancestry (R), and the account is then filled through the whole tree. Another
    worker commits a change to R alone between that read and the write. The ancestry is
    compare-and-set on the version the decision read, as on every other path, so the delivery
    runs again on what R is now. (SQLite has one writer at a time: nothing can commit in
    between there.)"""
    rng = random.Random(10)
    root, first_leg, placeholder = (new_call_id() for _ in range(3))
    apply_serially(
        migrated_url,
        [
            leg_body(root, rng, 0, call_id=first_leg, with_call_url=False),
            leg_body(placeholder, rng, 0, with_call_url=False),
        ],
    )
    closing = to_json(leg_body(first_leg, rng, 1, call_id=placeholder))

    with Tracker(migrated_url) as tracker, Tracker(migrated_url) as other:
        other.get_call("warm-up")

        def commit_meanwhile(_dbapi_connection: object) -> None:
            result = other.apply(machine_detection_complete(root, accountId=..., callUrl=...))
            assert result.outcome is Outcome.APPLIED

        with faults(tracker.engine, "INSERT INTO tracker_events", commit_meanwhile) as struck:
            result = tracker.apply(closing)

        assert len(struck) == 2, "the delivery must have run again"
        assert result.outcome is Outcome.APPLIED
        found = tracker.get_call(root)
        assert found is not None
        assert found.machine_detection is not None
        assert {call.account_id for call in tracker.calls()} == {ACCOUNT}
        assert ancestors(tracker, placeholder) == [first_leg, root]


def test_a_call_snapshot_is_read_at_one_moment_while_a_leg_is_committed_meanwhile(
    tracker: Tracker, database_url: str
) -> None:
    """A `Call` is read with several statements (the call, its legs, its transfers): a leg
    committed by another worker between them must not show in a snapshot whose record predates
    it (on the servers, the statements run in one REPEATABLE READ transaction)."""
    rng = random.Random(11)
    parent_id = new_call_id()
    first, second, third = (leg_body(parent_id, rng, number) for number in range(3))
    assert tracker.apply(to_json(first)).outcome is Outcome.APPLIED
    before = tracker.get_call(parent_id)
    assert before is not None

    with Tracker(database_url) as other:

        def committing(leg: dict[str, object]) -> Callable[[object], None]:
            def commit_meanwhile(_dbapi_connection: object) -> None:
                assert other.apply(to_json(leg)).outcome is Outcome.APPLIED

            return commit_meanwhile

        with faults(tracker.engine, LEGS_LOOKUP, committing(second), committing(third)) as struck:
            during = tracker.get_call(parent_id)
            listed = [call for call in tracker.calls() if call.call_id == parent_id]

    assert len(struck) == 2
    assert during == before
    assert [call.legs for call in listed] == [(first["callId"], second["callId"])]
    after = tracker.get_call(parent_id)
    assert after is not None
    assert after.legs == (first["callId"], second["callId"], third["callId"])


# The statement reading the legs of a snapshot's calls (`tracker.storage.where_legs`).
LEGS_LOOKUP = r"SELECT tracker_calls\.parent_call_id, tracker_calls\.call_id, tracker_calls\.start"
