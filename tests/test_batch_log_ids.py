"""A batch's log entries: each delivery of an `apply_many` gets its own entry, in the batch's
order, and every history step names the entry of the delivery that made it. Pinned on every
backend, since each numbers a batch's entries its own way."""

from __future__ import annotations

from tracker import Tracker
from tracker.testing import realistic_bodies


def test_each_step_of_a_batch_names_the_entry_of_the_delivery_that_made_it(
    tracker: Tracker,
) -> None:
    """Steps name entries whose body is the delivery of the step's event for that call."""
    bodies = realistic_bodies(120, 5)
    results = tracker.apply_many(bodies[:60])
    results += tracker.apply_many(bodies[60:])

    entries = tracker.events()
    assert [entry.body for entry in entries] == bodies
    assert [entry.outcome for entry in entries] == [result.outcome for result in results]
    assert [entry.id for entry in entries] == sorted(entry.id for entry in entries)
    by_id = {entry.id: entry for entry in entries}
    steps = 0
    for call_id in {entry.call_id for entry in entries if entry.call_id is not None}:
        call = tracker.get_call(call_id)
        assert call is not None
        for step in call.history:
            entry = by_id[step.event_id]
            assert entry.outcome == "applied"
            assert (entry.call_id, entry.event_type) == (call_id, step.event)
            steps += 1
    assert steps > 60  # the stream's calls have taken many steps, across both batches
