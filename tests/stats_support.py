"""Shared by the statistics tests: a generated workload and its figures counted in plain Python."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tracker import Call, CallStatistics, Outcome, Tracker
from tracker.testing import (
    answer,
    call_url,
    disconnect_between,
    initiate,
    new_call_id,
    transfer_disconnect_between,
)

T0 = datetime(2026, 3, 27, 22, 0, tzinfo=UTC)  # two hours before a day ends
NOW = T0 + timedelta(days=4)
ACCOUNTS = ("1111111", "2222222", "3333333")
CAUSES = ("hangup", "hangup", "hangup", "busy", "timeout", "cancel", "rejected", "callback-error")
UNANSWERED = frozenset({"busy", "timeout", "cancel", "rejected"})
MICROSECOND = timedelta(microseconds=1)


# --- a generated workload -------------------------------------------------------------------


def generated_bodies(seed: int, calls: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Callbacks for `calls` calls over about two and a half days, crossing hours and a day:
    answered and not, talks from a second to three hours, legs, some calls of no known account,
    starts on the hour, calls still ringing or talking, and parents known only through a leg.
    Also the ids of the live calls that started early, for a sweep to expire."""
    draw = random.Random(seed)
    bodies: list[dict[str, Any]] = []
    stale: list[str] = []
    for _ in range(calls):
        start = T0 + timedelta(seconds=draw.uniform(0, 60 * 3600))
        if draw.random() < 0.1:  # exactly on the hour
            start = start.replace(minute=0, second=0, microsecond=0)
        start = start.replace(microsecond=start.microsecond // 1000 * 1000)
        account = draw.choice((*ACCOUNTS, None))
        call_id = new_call_id()
        identity: dict[str, Any] = {"accountId": ..., "callUrl": ..., "applicationId": ...}
        if account is not None:
            identity = {"accountId": account, "callUrl": call_url(call_id, account)}
        kind = draw.random()
        if kind < 0.06:  # ringing now: its terminal event has not come (or was lost)
            bodies.append(initiate(call_id, start=start, **identity))
            stale += [call_id] if start < T0 + timedelta(hours=19) else []
            continue
        if kind < 0.12:  # talking now
            bodies.append(answer(call_id, start=start, ring=draw.uniform(0.5, 9), **identity))
            stale += [call_id] if start < T0 + timedelta(hours=19) else []
            continue
        cause = draw.choice(CAUSES)
        answered = None if cause in UNANSWERED or draw.random() < 0.1 else draw.uniform(0.3, 20)
        length = draw.choice(
            (draw.uniform(1, 120), draw.uniform(60, 1800), draw.uniform(1, 3 * 3600))
        )
        answered_at = None if answered is None else start + timedelta(seconds=answered)
        end = (answered_at or start) + timedelta(seconds=length)
        if draw.random() < 0.95:  # else only its legs report: a parent without a start
            bodies.append(
                disconnect_between(
                    start, end, call_id, answered=answered_at, cause=cause, **identity
                )
            )
        if answered_at is not None and draw.random() < 0.3:
            for _leg in range(draw.randint(1, 3)):
                leg_id = new_call_id()
                leg_start = answered_at + timedelta(seconds=draw.uniform(1, 60))
                leg_answer = leg_start + timedelta(seconds=draw.uniform(1, 10))
                leg_end = leg_answer + timedelta(seconds=draw.uniform(1, 600))
                taken = draw.random() < 0.5
                where = {"accountId": ..., "callUrl": ...}
                if account is not None:
                    where = {"accountId": account, "callUrl": call_url(leg_id, account)}
                bodies.append(
                    transfer_disconnect_between(
                        call_id,
                        leg_start,
                        leg_end,
                        leg_id,
                        answered=leg_answer if taken else None,
                        cause="hangup" if taken else draw.choice(("timeout", "busy")),
                        **where,
                    )
                )
    return bodies, stale


def load(tracker: Tracker, bodies: Iterable[dict[str, Any]]) -> list[Call]:
    results = tracker.apply_many(bodies)
    assert {result.outcome for result in results} == {Outcome.APPLIED}, [
        result for result in results if result.outcome is not Outcome.APPLIED
    ][:3]
    return tracker.calls()


# --- the same figures, counted in Python ----------------------------------------------------


@dataclass(frozen=True)
class Expected:
    attempts: int
    answered: int
    live: int
    acd: float | None
    mean_ring_time: float | None
    dispositions: dict[str, int]
    causes: dict[str, int]
    peak_concurrent_calls: int


def expected(
    calls: list[Call],
    by: str | None,
    since: datetime | None = None,
    until: datetime | None = None,
    account_id: str | None = None,
) -> dict[Any, Expected]:
    """Bucket key -> figures, by docs/statistics.md's definitions, with no SQL in sight."""
    attempts = [
        call
        for call in calls
        if call.start_time is not None
        and (since is None or call.start_time >= since)
        and (until is None or call.start_time < until)
        and (account_id is None or call.account_id == account_id)
    ]
    buckets: dict[Any, list[Call]] = {}
    for call in attempts:
        buckets.setdefault(bucket_of(call, by), []).append(call)
    if by is None and not buckets:
        buckets[None] = []
    spans = [
        (call, span)
        for call in calls
        if (span := up_and_down(call)) is not None
        and (account_id is None or call.account_id == account_id)
    ]
    result = {}
    for key, members in buckets.items():
        answered = [call for call in members if call.answer_time is not None]
        talks = [c.talk_duration // MICROSECOND for c in answered if c.talk_duration is not None]
        rings = [c.ring_duration // MICROSECOND for c in answered if c.ring_duration is not None]
        low, high = bounds(key, by, since, until)
        in_scope = [span for call, span in spans if by != "account" or call.account_id == key]
        result[key] = Expected(
            attempts=len(members),
            answered=len(answered),
            live=sum(1 for call in members if call.disposition is None),
            acd=mean_seconds(talks),
            mean_ring_time=mean_seconds(rings),
            dispositions=dict(Counter(c.disposition for c in members if c.disposition)),
            causes=dict(Counter(c.cause for c in members if c.cause is not None)),
            peak_concurrent_calls=peak(in_scope, low, high),
        )
    return result


def mean_seconds(microseconds: list[int]) -> float | None:
    """The mean of whole microseconds, in seconds: summed exactly, divided once, so the one
    float every backend must give to the last bit."""
    return sum(microseconds) / (len(microseconds) * 1_000_000) if microseconds else None


def bucket_of(call: Call, by: str | None) -> Any:
    assert call.start_time is not None
    if by == "hour":
        return call.start_time.replace(minute=0, second=0, microsecond=0)
    if by == "day":
        return call.start_time.replace(hour=0, minute=0, second=0, microsecond=0)
    if by == "account":
        return call.account_id
    return None


def up_and_down(call: Call) -> tuple[datetime, datetime] | None:
    """When the call was up: to its end; live, to NOW; expired, to its last known time."""
    if call.start_time is None:
        return None
    if call.end_time is not None:
        down = call.end_time
    elif call.live:
        down = NOW
    else:
        down = call.answer_time or call.start_time
    return (call.start_time, down) if down > call.start_time else None


def bounds(
    key: Any, by: str | None, since: datetime | None, until: datetime | None
) -> tuple[datetime | None, datetime | None]:
    """The instants a bucket's peak is looked for in: its hour or day within the window."""
    low, high = since, until
    if by in ("hour", "day"):
        length = timedelta(hours=1) if by == "hour" else timedelta(days=1)
        low = key if since is None else max(key, since)
        high = key + length if until is None else min(key + length, until)
    return low, high


def peak(
    spans: list[tuple[datetime, datetime]], low: datetime | None, high: datetime | None
) -> int:
    """The most spans holding one instant of [low, high): the count only rises at a start, so
    the instants to try are `low` and every start inside."""
    candidates = {up for up, _down in spans}
    if low is not None:
        candidates = {t for t in candidates if t > low} | {low}
    if high is not None:
        candidates = {t for t in candidates if t < high}
    return max(
        (sum(1 for up, down in spans if up <= t < down) for t in candidates),
        default=0,
    )


def assert_figures(
    found: list[CallStatistics], wanted: dict[Any, Expected], by: str | None
) -> None:
    keys = [key_of(row, by) for row in found]
    assert keys == sorted(wanted, key=lambda key: (key is None, key))
    for row in found:
        want = wanted[key_of(row, by)]
        label = f"bucket {key_of(row, by)}"
        assert (row.attempts, row.answered, row.live) == (
            want.attempts,
            want.answered,
            want.live,
        ), label
        assert row.dispositions == want.dispositions, label
        assert row.causes == want.causes, label
        assert row.peak_concurrent_calls == want.peak_concurrent_calls, label
        assert row.acd == want.acd, label
        assert row.mean_ring_time == want.mean_ring_time, label
        assert row.asr == (want.answered / want.attempts if want.attempts else None)


def key_of(row: CallStatistics, by: str | None) -> Any:
    if by in ("hour", "day"):
        return row.start
    if by == "account":
        return row.account_id
    return None


def micro_stamp(at: datetime) -> str:
    """An instant to the microsecond, as a callback may carry it (the factories stamp
    milliseconds)."""
    return at.isoformat(timespec="microseconds").replace("+00:00", "Z")


def with_micro_times(
    body: dict[str, Any], start: datetime, answered: datetime | None, end: datetime | None
) -> dict[str, Any]:
    body["startTime"] = micro_stamp(start)
    if answered is not None:
        body["answerTime"] = micro_stamp(answered)
    if end is not None:
        body["endTime"] = micro_stamp(end)
    return body
