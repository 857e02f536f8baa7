"""Batches that share calls, written by several processes at once, take turns on those calls:
none loses a race and runs again whole, and the records are a serial run's.

Each worker's Tracker runs a transaction once (`max_attempts=1`), so a batch that lost a race
would raise: before batches locked the calls they name, two batches creating the same parent
through two of its legs, or logging the same delivery, lost about every other time.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import pytest

from tests.http_server import migrate
from tests.test_concurrency import (
    assert_records_match_a_serial_run,
    reference_url,
    transfer_tree_bodies,
)
from tests.workers import apply_many_once_rounds, print_figures, run_together
from tracker import Outcome, Tracker
from tracker.testing import disconnect, initiate, new_call_id

__all__ = ["reference_url"]  # the fixture, used here

PROCESSES = 4
BATCH = 25


def batches(bodies: Sequence[str], size: int) -> list[list[str]]:
    return [list(bodies[start : start + size]) for start in range(0, len(bodies), size)]


@pytest.mark.slow
def test_batches_sharing_calls_from_four_processes_take_turns_and_never_run_again(
    backend: str, database_url: str, reference_url: str
) -> None:
    """Every fourth body of the same transfer trees to each process (a parent's live callbacks,
    its legs' and its end in four processes at once), and one body in ten to a second process
    too (Bandwidth retrying a callback another worker is still applying)."""
    rng = random.Random(24)
    bodies = transfer_tree_bodies(rng, trees=60, grandchildren=0.0)
    shares = [list(bodies[worker::PROCESSES]) for worker in range(PROCESSES)]
    repeated = [index for index in range(len(bodies)) if rng.random() < 0.1]
    for index in repeated:
        other = (index % PROCESSES + rng.randrange(1, PROCESSES)) % PROCESSES
        shares[other].insert(min(index // PROCESSES, len(shares[other])), bodies[index])
    migrate(database_url)

    jobs = [(database_url, [batches(share, BATCH)]) for share in shares]
    run = run_together(apply_many_once_rounds, jobs, rounds=1)
    print_figures(
        f"{backend} {PROCESSES} processes, apply_many of {BATCH}, shared calls, no retry",
        workers=PROCESSES,
        deliveries=sum(map(len, shares)),
        seconds=run.seconds,
    )

    assert run.exceptions() == []
    assert Counter(run.flat()) == {"applied": len(bodies), "duplicate": len(repeated)}
    assert_records_match_a_serial_run(database_url, reference_url, bodies)


def test_a_batch_after_another_trackers_batch_on_the_same_calls_does_not_wait(
    database_url: str,
) -> None:
    """The calls a batch locked are free again once it committed, even on MySQL/MariaDB, whose
    named locks belong to the session: the first tracker keeps its connection open between
    deliveries, and the second, whose lock wait is bounded to a second, still gets the calls."""
    migrate(database_url)
    call_id = new_call_id()
    with Tracker(database_url) as first, Tracker(database_url, timeout=1.0) as second:
        answered = first.apply_many([initiate(call_id), initiate(new_call_id())])
        assert [result.outcome for result in answered] == [Outcome.APPLIED] * 2
        ended = second.apply_many(
            [disconnect(call_id, direction="inbound"), initiate(new_call_id())]
        )
        assert [result.outcome for result in ended] == [Outcome.APPLIED] * 2
        call = first.get_call(call_id)
        assert call is not None and call.state == "disconnected"
