"""End to end: a day of calls whose terminal callbacks were partly lost, swept with the real
Bandwidth resolver (`tracker.bandwidth`, the real `bandwidth-sdk`) against the fake Voice API on
loopback, then the lost callbacks arriving late (SPEC 11, the resolver's outcomes). Every test
runs on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.test_order_independence import ids_of, snapshot
from tracker import Outcome, ProviderError, Tracker
from tracker.bandwidth import BandwidthResolver
from tracker.provider import KEPT_DAYS
from tracker.testing import (
    ACCOUNTS,
    FakeBandwidth,
    FakeRequest,
    call_state_from,
    conversation,
    stamp,
)

# Small enough that a failing look-up costs milliseconds: three attempts, 20 then 40 ms apart.
FAST: dict[str, Any] = {"timeout": 2.0, "backoff": 0.02, "max_backoff": 0.1, "attempts": 3}
OLDER_THAN = timedelta(hours=2)
TERMINAL_TYPES = ("disconnect", "transferDisconnect")
# What Bandwidth's call state tells of a call, compared with what its callbacks told.
PROVIDER_FACTS = (
    "state",
    "cause",
    "disposition",
    "start_time",
    "answer_time",
    "end_time",
    "parent_call_id",
    "account_id",
    "direction",
)


@pytest.fixture
def resolver(bandwidth_api: FakeBandwidth) -> Iterator[BandwidthResolver]:
    """The resolver `tracker sweep --resolve bandwidth` builds, from the environment the
    `bandwidth_api` fixture set (HTTP Basic), with small timeouts and backoff."""
    instance = BandwidthResolver.from_environment(**FAST)
    yield instance
    instance.close()


def delivered(tracker: Tracker, bodies: list[dict[str, Any]]) -> None:
    for body in bodies:
        result = tracker.apply(body)
        assert result.outcome is Outcome.APPLIED, result


def asked(fake: FakeBandwidth, call_id: str) -> list[FakeRequest]:
    return [request for request in fake.requests if request.call_id == call_id]


def account_of(request: FakeRequest) -> str:
    """The account a call state request asked under (`/api/v2/accounts/{account}/calls/...`)."""
    return request.path.split("/")[4]


@dataclass
class Day:
    """A day of calls: every callback Bandwidth sent, and the terminal ones that were lost,
    sorted by what Bandwidth's call state API will say of their call."""

    bodies: list[dict[str, Any]] = field(default_factory=list)
    # call id -> its lost terminal callback, per outcome of the look-up.
    disconnected: dict[str, dict[str, Any]] = field(default_factory=dict)
    active: dict[str, dict[str, Any]] = field(default_factory=dict)
    unknown: dict[str, dict[str, Any]] = field(default_factory=dict)
    failing: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Started longer ago than Bandwidth keeps a call: not asked about.
    forgotten: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def lost(self) -> dict[str, dict[str, Any]]:
        return self.disconnected | self.active | self.unknown | self.failing | self.forgotten

    @property
    def received(self) -> list[dict[str, Any]]:
        """The callbacks that reached the tracker, in the order Bandwidth sent them."""
        lost = [id(body) for body in self.lost.values()]
        return [body for body in self.bodies if id(body) not in lost]


def day_of_calls(now: datetime) -> Day:
    """Twenty calls of three accounts started between a day and three hours before `now`
    (inbound and outbound, answered or not, transferred to one or to three legs), one started
    three days ago and one eight days ago; twelve of their terminal callbacks lost: four of
    calls Bandwidth says disconnected (an answered call, an unanswered one, a transfer leg, the
    original call of a transfer), three of calls it says still active (the three-day-old one
    among them), two it does not know, two it fails to answer about, and the eight-day-old
    one's, older than Bandwidth keeps."""
    shapes: list[dict[str, Any]] = [
        {"direction": "inbound"},
        {"direction": "inbound", "answered": False},
        {"direction": "outbound", "legs": 1},
        {"direction": "inbound", "legs": 3},
        {"direction": "outbound", "cause": "busy", "answered": False},
        {"direction": "outbound", "machine_detection": "answering-machine"},
    ]
    talks = [
        conversation(
            start=now - timedelta(hours=23) + index * timedelta(minutes=60),
            account=ACCOUNTS[index % len(ACCOUNTS)],
            **shape,
        )
        for index, shape in enumerate(shapes * 3 + shapes[:2])
    ]
    talks.append(conversation("inbound", start=now - timedelta(days=3)))
    talks.append(conversation("outbound", start=now - timedelta(days=KEPT_DAYS + 1)))
    day = Day(bodies=[body for talk in talks for body in talk.bodies])

    def lost_end(talk_index: int, *, leg: bool = False) -> tuple[str, dict[str, Any]]:
        talk = talks[talk_index]
        call_id = talk.answering_leg_id if leg else talk.call_id
        assert call_id is not None
        (body,) = [
            body
            for body in talk.bodies
            if body["callId"] == call_id and body["eventType"] in TERMINAL_TYPES
        ]
        return call_id, body

    for index, leg in ((0, False), (1, False), (2, True), (3, False)):
        call_id, body = lost_end(index, leg=leg)
        day.disconnected[call_id] = body
    for index, leg in ((6, False), (9, True), (20, False)):
        call_id, body = lost_end(index, leg=leg)
        day.active[call_id] = body
    for index in (7, 11):
        call_id, body = lost_end(index)
        day.unknown[call_id] = body
    for index, leg in ((12, False), (15, True)):
        call_id, body = lost_end(index, leg=leg)
        day.failing[call_id] = body
    call_id, body = lost_end(21)
    day.forgotten[call_id] = body
    return day


def still_active(terminal: dict[str, Any]) -> dict[str, Any]:
    """Bandwidth's call state of the call `terminal` ends, asked before it ended."""
    state = "answered" if terminal.get("answerTime") else "initiated"
    return call_state_from(terminal, state=state, endTime=..., disconnectCause=...)


def told_bandwidth(fake: FakeBandwidth, day: Day) -> None:
    """Bandwidth knows every call but the unknown ones, and fails every time on the failing;
    the fake even holds the forgotten one, so that asking about it would show."""
    ended = day.disconnected | day.failing | day.forgotten
    fake.put_many(call_state_from(body) for body in ended.values())
    fake.put_many(still_active(body) for body in day.active.values())
    for call_id in day.failing:
        fake.fail(call_id, status=500, times=None)


@pytest.mark.parametrize("oauth", [False, True], ids=["basic", "oauth2"])
def test_a_day_of_calls_swept_with_bandwidth_then_its_lost_callbacks_arriving_late(
    two_trackers: tuple[Tracker, Tracker], bandwidth_api: FakeBandwidth, oauth: bool
) -> None:
    """Each outcome of a look-up does what SPEC 11 says; once the lost callbacks come, the
    records equal those of a database that got every callback, whatever the sweep did."""
    every_callback, lossy = two_trackers
    resolver = BandwidthResolver.from_environment(bandwidth_api.environment(oauth=oauth), **FAST)
    now = datetime.now(UTC)
    day = day_of_calls(now)
    told_bandwidth(bandwidth_api, day)
    delivered(every_callback, day.bodies)
    delivered(lossy, day.received)

    report = lossy.sweep(OLDER_THAN, now=now, resolve=resolver, batch_size=5)

    assert report.checked == len(day.lost)
    assert sorted(report.resolved) == sorted(day.disconnected)
    assert sorted(report.kept) == sorted(day.active)
    assert sorted(report.expired) == sorted(day.unknown | day.forgotten)
    assert sorted(report.failed) == sorted(day.failing)
    for call_id in day.disconnected:
        ended, truth = lossy.get_call(call_id), every_callback.get_call(call_id)
        assert ended is not None and truth is not None
        assert (ended.end_source, ended.swept_at) == ("provider", None)
        assert {name: getattr(ended, name) for name in PROVIDER_FACTS} == {
            name: getattr(truth, name) for name in PROVIDER_FACTS
        }, call_id
    for call_id in day.active | day.failing:
        live = lossy.get_call(call_id)
        assert live is not None and live.live and live.end_source is None, call_id
    for call_id in day.unknown | day.forgotten:
        swept = lossy.get_call(call_id)
        assert swept is not None
        assert (swept.end_source, swept.disposition, swept.end_time) == ("sweep", "expired", None)
    # Every look-up went through the real client: once a call, three times a failing one,
    # never about the forgotten one; each call asked under its own account.
    assert resolver.requests == Counter(
        ok=len(day.disconnected) + len(day.active),
        not_found=len(day.unknown),
        retried=2 * len(day.failing),
        failed=len(day.failing),
    )
    times = {call_id: 3 if call_id in day.failing else 1 for call_id in day.lost}
    times |= dict.fromkeys(day.forgotten, 0)
    assert {call_id: len(asked(bandwidth_api, call_id)) for call_id in day.lost} == times
    accounts = {
        call_id: {account_of(r) for r in asked(bandwidth_api, call_id)} for call_id in times
    }
    assert accounts == {
        call_id: {call_state_from(day.lost[call_id])["accountId"]} if count else set()
        for call_id, count in times.items()
    }
    assert set().union(*accounts.values()) == set(ACCOUNTS)
    resolver.close()

    for body in day.lost.values():
        assert lossy.apply(body).outcome is Outcome.APPLIED, body
    ids = ids_of(day.bodies)
    assert snapshot(lossy, ids) == snapshot(every_callback, ids)
    sources = {call_id: lossy.get_call(call_id).end_source for call_id in day.lost}  # type: ignore[union-attr]
    assert set(sources.values()) == {"callback"}


def test_an_active_call_stays_live_however_old_and_a_failing_one_is_asked_again(
    tracker: Tracker, bandwidth_api: FakeBandwidth, resolver: BandwidthResolver
) -> None:
    """Sweeps later and later: Bandwidth saying the call goes on keeps it live each time, and
    a look-up failing on one sweep is asked again on the next, which ends the call."""
    now = datetime.now(UTC)
    going_on, failing_once = (conversation("outbound", start=now - timedelta(days=2)) for _ in "ab")
    delivered(tracker, [*going_on.bodies[:-1], *failing_once.bodies[:-1]])
    bandwidth_api.put(still_active(going_on.bodies[-1]))
    bandwidth_api.put(call_state_from(failing_once.bodies[-1], disconnectCause="timeout"))
    bandwidth_api.fail(failing_once.call_id, status=500, times=FAST["attempts"])

    first = tracker.sweep(OLDER_THAN, now=now, resolve=resolver)
    later = tracker.sweep(timedelta(minutes=1), now=now + timedelta(hours=1), resolve=resolver)

    assert (first.kept, first.failed, first.expired) == (
        (going_on.call_id,),
        (failing_once.call_id,),
        (),
    )
    assert (later.kept, later.resolved, later.expired) == (
        (going_on.call_id,),
        (failing_once.call_id,),
        (),
    )
    kept = tracker.get_call(going_on.call_id)
    assert kept is not None and kept.live
    ended = tracker.get_call(failing_once.call_id)
    assert ended is not None and (ended.end_source, ended.cause) == ("provider", "timeout")


@pytest.mark.parametrize("down", [503, None], ids=["503", "refusing-connections"])
def test_the_provider_down_for_a_whole_sweep_expires_nothing_and_the_next_sweep_resolves(
    tracker: Tracker, bandwidth_api: FakeBandwidth, resolver: BandwidthResolver, down: int | None
) -> None:
    now = datetime.now(UTC)
    talks = [conversation("inbound", start=now - timedelta(hours=5 + hour)) for hour in range(7)]
    delivered(tracker, [body for talk in talks for body in talk.bodies[:-1]])
    bandwidth_api.put_many(call_state_from(talk.bodies[-1]) for talk in talks[:5])
    call_ids = sorted(talk.call_id for talk in talks)
    bandwidth_api.down(status=down)

    report = tracker.sweep(OLDER_THAN, now=now, resolve=resolver, batch_size=3)

    assert (report.expired, report.resolved, report.kept) == ((), (), ())
    assert sorted(report.failed) == call_ids
    assert all(tracker.get_call(call_id).live for call_id in call_ids)  # type: ignore[union-attr]
    assert resolver.requests["failed"] == len(call_ids)

    bandwidth_api.up()
    again = tracker.sweep(OLDER_THAN, now=now, resolve=resolver, batch_size=3)

    assert sorted(again.resolved) == sorted(talk.call_id for talk in talks[:5])
    assert sorted(again.expired) == sorted(talk.call_id for talk in talks[5:])
    assert again.failed == ()
    sources = Counter(tracker.get_call(c).end_source for c in call_ids)  # type: ignore[union-attr]
    assert sources == Counter(provider=5, sweep=2)


def test_refused_credentials_stop_the_sweep_and_nothing_is_expired(
    tracker: Tracker, bandwidth_api: FakeBandwidth, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC)
    talks = [conversation("inbound", start=now - timedelta(hours=5 + hour)) for hour in range(6)]
    delivered(tracker, [body for talk in talks for body in talk.bodies[:-1]])
    # Bandwidth knows half of them; the other half it does not, and would have been expired.
    bandwidth_api.put_many(call_state_from(talk.bodies[-1]) for talk in talks[:3])
    wrong = "not-" + bandwidth_api.password
    monkeypatch.setenv("BANDWIDTH_PASSWORD", wrong)

    resolver = BandwidthResolver.from_environment(**FAST, concurrency=4)
    with pytest.raises(ProviderError) as raised:
        tracker.sweep(OLDER_THAN, now=now, resolve=resolver, batch_size=4)
    resolver.close()

    assert raised.value.refused
    message = str(raised.value)
    assert "BANDWIDTH_USERNAME" in message and "BANDWIDTH_PASSWORD" in message
    assert wrong not in message and bandwidth_api.password not in message
    assert {request.status for request in bandwidth_api.requests} == {401}
    # The first batch's four look-ups were each refused once; no other batch was asked about.
    assert len(bandwidth_api.requests) == 4
    for talk in talks:
        call = tracker.get_call(talk.call_id)
        assert call is not None and call.live and call.end_source is None
    assert [entry.origin for entry in tracker.events()] == [None] * len(talks)  # callbacks only


def test_a_429_during_a_sweep_is_waited_out_and_the_call_still_resolved(
    tracker: Tracker, bandwidth_api: FakeBandwidth, resolver: BandwidthResolver
) -> None:
    now = datetime.now(UTC)
    talks = [conversation("outbound", start=now - timedelta(hours=3 + hour)) for hour in range(3)]
    delivered(tracker, [body for talk in talks for body in talk.bodies[:-1]])
    bandwidth_api.put_many(call_state_from(talk.bodies[-1]) for talk in talks)
    limited = talks[0].call_id
    bandwidth_api.fail(limited, status=429, retry_after=0.3)

    report = tracker.sweep(OLDER_THAN, now=now, resolve=resolver)

    assert sorted(report.resolved) == sorted(talk.call_id for talk in talks)
    assert (report.failed, report.expired) == ((), ())
    refused, answered = asked(bandwidth_api, limited)
    assert (refused.status, answered.status) == (429, 200)
    assert answered.at - (refused.at + refused.duration) >= 0.3
    assert resolver.requests == Counter(ok=len(talks), retried=1)
    call = tracker.get_call(limited)
    assert call is not None and call.end_source == "provider"
    assert call.end_time is not None and stamp(call.end_time) == talks[0].bodies[-1]["endTime"]


def test_an_answer_slower_than_the_timeout_leaves_the_call_live_for_the_next_sweep(
    tracker: Tracker, bandwidth_api: FakeBandwidth
) -> None:
    now = datetime.now(UTC)
    talk = conversation("outbound", start=now - timedelta(hours=6))
    delivered(tracker, list(talk.bodies[:-1]))
    bandwidth_api.put(call_state_from(talk.bodies[-1]))
    bandwidth_api.slow(talk.call_id, delay=0.5, times=2)
    resolver = BandwidthResolver.from_environment(**FAST | {"timeout": 0.1, "attempts": 2})

    timed_out = tracker.sweep(OLDER_THAN, now=now, resolve=resolver)
    call = tracker.get_call(talk.call_id)
    assert (timed_out.failed, timed_out.expired) == ((talk.call_id,), ())
    assert call is not None and call.live
    assert resolver.requests == Counter(retried=1, failed=1)

    answered = tracker.sweep(OLDER_THAN, now=now, resolve=resolver)
    resolver.close()
    assert answered.resolved == (talk.call_id,)
