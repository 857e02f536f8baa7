"""For any calls and any window, the figures are those counted from what the callbacks said."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.stats_support import (
    MICROSECOND,
    NOW,
    T0,
    bounds,
    key_of,
    load,
    mean_seconds,
    peak,
    with_micro_times,
)
from tracker import Tracker
from tracker.testing import (
    answer,
    call_url,
    disconnect_between,
    initiate,
    new_call_id,
)

# --- any calls, any window: the figures counted from what the callbacks said -------------------

_examples = itertools.count(1)
# Instants over four hours from T0, crossing midnight, crowded onto hour starts and a few
# seconds, with fractions that a rounding strftime or a float sum would get wrong.
INSTANTS = st.builds(
    lambda hours, minutes, seconds, micro: (
        T0 + timedelta(hours=hours, minutes=minutes, seconds=seconds, microseconds=micro)
    ),
    st.integers(0, 3),
    st.sampled_from([0, 0, 1, 30, 59]),
    st.sampled_from([0, 0, 1, 59]),
    st.sampled_from([0, 0, 1, 123_456, 500_000, 999_500, 999_999]),
)
# How a call is known: ended unanswered (start, end), ended answered (start, answer, end),
# ringing (start), talking (start, answer).
INSTANTS_OF = {"unanswered": 2, "answered": 3, "ringing": 1, "talking": 2}


@dataclass(frozen=True)
class Drawn:
    """A call as its callbacks tell it, and what the figures make of it."""

    kind: str
    start: datetime
    answered: datetime | None
    end: datetime | None

    def body(self, call_id: str, account: str) -> dict[str, Any]:
        where = {"accountId": account, "callUrl": call_url(call_id, account)}
        if self.kind == "ringing":
            body = initiate(call_id, start=self.start, **where)
        elif self.kind == "talking":
            assert self.answered is not None
            ring = (self.answered - self.start).total_seconds()
            body = answer(call_id, start=self.start, ring=ring, **where)
        else:
            assert self.end is not None
            cause = "hangup" if self.answered else "timeout"
            body = disconnect_between(
                self.start, self.end, call_id, answered=self.answered, cause=cause, **where
            )
        return with_micro_times(body, self.start, self.answered, self.end)

    def span(self, now: datetime, swept: bool) -> tuple[datetime, datetime] | None:
        """[start, end) of the call being up: live until `now`; expired, until its last known
        time."""
        if self.end is not None:
            down = self.end
        elif swept:
            down = self.answered or self.start
        else:
            down = now
        return (self.start, down) if down > self.start else None


@st.composite
def drawn_calls(draw: st.DrawFn) -> Drawn:
    kind = draw(st.sampled_from(sorted(INSTANTS_OF)))
    times = sorted(draw(st.lists(INSTANTS, min_size=INSTANTS_OF[kind], max_size=INSTANTS_OF[kind])))
    answered = times[1] if kind in ("answered", "talking") else None
    end = times[-1] if kind in ("answered", "unanswered") else None
    return Drawn(kind, times[0], answered, end)


def figures_of(
    drawn: list[Drawn],
    by: str | None,
    since: datetime | None,
    until: datetime | None,
    now: datetime,
    swept: bool,
    account: str,
) -> dict[Any, tuple[int, int, int, float | None, float | None, int]]:
    """Bucket -> (attempts, answered, live, acd, mean ring time, peak), from the drawn times."""
    attempts = [
        call
        for call in drawn
        if (since is None or call.start >= since) and (until is None or call.start < until)
    ]
    buckets: dict[Any, list[Drawn]] = {}
    for call in attempts:
        if by == "hour":
            key: Any = call.start.replace(minute=0, second=0, microsecond=0)
        elif by == "day":
            key = call.start.replace(hour=0, minute=0, second=0, microsecond=0)
        else:
            key = account if by == "account" else None
        buckets.setdefault(key, []).append(call)
    if by is None and not buckets:
        buckets[None] = []
    spans = [span for call in drawn if (span := call.span(now, swept)) is not None]
    figures = {}
    for key, members in buckets.items():
        answered = [call for call in members if call.answered is not None]
        talks = [(c.end - c.answered) // MICROSECOND for c in answered if c.end and c.answered]
        rings = [(c.answered - c.start) // MICROSECOND for c in answered if c.answered]
        figures[key] = (
            len(members),
            len(answered),
            0 if swept else sum(1 for call in members if call.end is None),
            mean_seconds(talks),
            mean_seconds(rings),
            peak(spans, *bounds(key, by, since, until)),
        )
    return figures


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    drawn=st.lists(drawn_calls(), min_size=1, max_size=8),
    since=st.none() | INSTANTS,
    until=st.none() | INSTANTS,
    now=INSTANTS,
    swept=st.booleans(),
)
def test_the_figures_of_any_calls_are_those_counted_from_their_callbacks(
    tracker: Tracker,
    drawn: list[Drawn],
    since: datetime | None,
    until: datetime | None,
    now: datetime,
    swept: bool,
) -> None:
    """Ends on bucket starts and on `since`, fractions of .9995 s and more, sums a float would
    round: every backend gives exactly (==) the figures counted here from the drawn times."""
    if since is not None and until is not None and since >= until:
        since, until = until, (since if since > until else None)
    account = f"{9_000_000 + next(_examples)}"  # examples share the database, not an account
    load(tracker, [call.body(new_call_id(), account) for call in drawn])
    if swept:  # every live call, of every account so far, ends expired
        tracker.sweep(timedelta(hours=1), now=NOW)
    for by in ("hour", "day", "account", None):
        rows = tracker.stats(by=by, since=since, until=until, account_id=account, now=now)
        found = {
            key_of(row, by): (
                row.attempts,
                row.answered,
                row.live,
                row.acd,
                row.mean_ring_time,
                row.peak_concurrent_calls,
            )
            for row in rows
        }
        assert [key_of(row, by) for row in rows] == sorted(
            found, key=lambda key: (key is None, key)
        )
        assert found == figures_of(drawn, by, since, until, now, swept, account), by
