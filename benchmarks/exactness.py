"""Whether a concurrent run left the records a serial one would: the benchmark's exactness check.

The reference is one process applying the same deliveries one by one, in order, on a fresh
database of the same backend. Compared are only what the contract makes independent of the
order the deliveries came in and of who applied them:

- every call's record, its transitions included, as `tests.workers.snapshot` reads it for the
  concurrency tests (without the log id each transition names: which entry applied a change
  depends on the order);
- the log, counted per delivery: how many entries each body has with each outcome and reason.
  A body delivered twice has one `applied` entry and one `duplicate` whoever came first, so the
  counts agree where the log's ids, its times and its order need not.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tests.workers import snapshot
from tracker import Tracker

# One log entry, as compared: the body's digest, the call and type it names, outcome, reason.
LogKey = tuple[str, str | None, str | None, str, str | None]


@dataclass(frozen=True)
class Records:
    """What a database holds, in the comparable form."""

    calls: dict[str, dict[str, object] | None]
    log: Counter[LogKey]

    @classmethod
    def read(cls, url: str, bodies: Sequence[bytes]) -> Records:
        with Tracker(url) as tracker:
            try:
                calls = snapshot(tracker, call_ids_of(bodies))
            except ValueError as error:  # more calls than `Tracker.calls()` lists
                raise SystemExit(
                    f"the exactness check reads every call at once and cannot here ({error}): "
                    "run with fewer --deliveries"
                ) from error
            log: Counter[LogKey] = Counter()
            for entry in tracker.iter_events():
                digest = hashlib.sha256(entry.body).hexdigest()[:16]
                key = (digest, entry.call_id, entry.event_type, entry.outcome.value, entry.reason)
                log[key] += 1
        return cls(calls, log)

    def first_difference(self, other: Records) -> str | None:
        """The first way `other` differs from these records, in words; None when it does not."""
        for call_id in sorted(set(self.calls) | set(other.calls)):
            expected, found = self.calls.get(call_id), other.calls.get(call_id)
            if expected == found:
                continue
            if expected is None or found is None:
                return (
                    f"call {call_id}: {'absent' if found is None else 'present'} here, "
                    + ("present" if expected is not None else "absent")
                    + " after the serial replay"
                )
            for name in expected:
                if expected[name] != found.get(name):
                    return (
                        f"call {call_id}, {name}: {found.get(name)!r} here, "
                        f"{expected[name]!r} after the serial replay"
                    )
        for key in sorted(set(self.log) | set(other.log), key=repr):
            if self.log[key] != other.log[key]:
                digest, call, event_type, outcome, reason = key
                return (
                    f"log: {other.log[key]} entries here, {self.log[key]} after the serial "
                    f"replay, of the {event_type} body {digest} of call {call} with outcome "
                    f"{outcome}" + (f" ({reason})" if reason else "")
                )
        return None


def call_ids_of(bodies: Sequence[bytes]) -> set[str]:
    found: set[str] = set()
    for body in bodies:
        document: dict[str, Any] = json.loads(body)
        found.add(document["callId"])
        if "parentCallId" in document:
            found.add(document["parentCallId"])
    return found


def serial_replay(url: str, bodies: Sequence[bytes]) -> Records:
    """Apply `bodies` one by one, in order, on the fresh database `url`; read back the records."""
    with Tracker(url) as tracker:
        tracker.upgrade()
        for body in bodies:
            tracker.apply(body)
    return Records.read(url, bodies)


def exactness_lines(exact: bool, runs: str, differences: Sequence[tuple[str, str]]) -> list[str]:
    """The closing lines of a benchmark's report: `exact: yes`, saying after which `runs` the
    records were compared, or `exact: NO` and each (run, difference) found."""
    if exact:
        return [
            f"exact: yes (after every {runs}, every call's record and the log's outcomes per "
            "delivery equal a serial replay's in one process)"
        ]
    return ["exact: NO", *(f"  {run}: {difference}" for run, difference in differences)]
