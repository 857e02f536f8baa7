"""The realistic stream the benchmark measures is traffic the tracker accepts in full."""

from __future__ import annotations

import json
from collections import Counter

from tracker import Outcome, Tracker
from tracker.parsing import TRACKED_EVENT_TYPES
from tracker.testing import realistic_bodies


def test_every_body_of_the_realistic_stream_is_applied(sqlite_tracker: Tracker) -> None:
    bodies = realistic_bodies(600, seed=7)
    assert len(set(bodies)) == len(bodies)
    event_types = Counter(json.loads(body)["eventType"] for body in bodies)
    assert set(event_types) == set(TRACKED_EVENT_TYPES)

    outcomes = Counter(result.outcome for result in sqlite_tracker.apply_many(bodies))

    assert outcomes == {Outcome.APPLIED: len(bodies)}
