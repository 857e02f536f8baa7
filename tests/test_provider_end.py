"""The provider's end: Bandwidth's call state ends a call whose terminal callback was lost, below
every callback, and a sweep asks it before expiring a call (SPEC 11, "Provenance" and the
resolver's outcomes). Every test runs on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import json
import random
import threading
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_order_independence import ids_of, snapshot, workloads
from tests.test_sweep import FOUR_HOURS, NOW, TERMINAL_TYPES, applied
from tracker import Call, Outcome, ProviderError, Tracker
from tracker.testing import (
    ACCOUNT,
    BASE_TIME,
    answer,
    call_state_from,
    disconnect,
    initiate,
    new_call_id,
    stamp,
    transfer_answer,
    transfer_disconnect,
)


def provider_entries(tracker: Tracker, call_id: str) -> list[Any]:
    return [entry for entry in tracker.events(call_id=call_id) if entry.origin == "provider"]


def one_ms_later(instant_text: str) -> str:
    """The same instant one millisecond on: what a second clock's rounding gives."""
    return stamp(datetime.fromisoformat(instant_text) + timedelta(milliseconds=1))


# --- a call state applied ----------------------------------------------------------------------


def test_a_call_state_ends_a_live_call_as_the_providers(tracker: Tracker) -> None:
    call_id = new_call_id()
    lost = disconnect(call_id, start=BASE_TIME, direction="inbound", cause="busy", ring=None)
    applied(tracker, initiate(call_id, start=BASE_TIME))

    (result,) = tracker.apply_call_states([call_state_from(lost)])

    assert result.outcome is Outcome.APPLIED, result
    call = tracker.get_call(call_id)
    assert call is not None
    assert (call.state, call.cause, call.disposition) == ("disconnected", "busy", "busy")
    assert (call.end_source, call.swept) == ("provider", False)
    assert call.end_time is not None and stamp(call.end_time) == lost["endTime"]
    assert [(step.target, step.event) for step in call.history] == [("disconnected", "callState")]
    (entry,) = provider_entries(tracker, call_id)
    assert (entry.event_type, entry.outcome) == ("callState", "applied")
    assert call.history[-1].event_id == entry.id


def test_a_late_terminal_callback_replaces_the_providers_end_entirely(
    two_trackers: tuple[Tracker, Tracker],
) -> None:
    """The bug a `resolve` hook's `disconnect` used to cause: the real one, a millisecond and a
    cause apart, was refused as a second terminal event. It now replaces the provider's end."""
    callbacks_only, with_provider = two_trackers
    call_id = new_call_id()
    live = answer(call_id, start=BASE_TIME, ring=4, direction="outbound")
    real = disconnect(call_id, start=BASE_TIME, ring=4, talk=60, direction="outbound")
    provider = call_state_from(
        real, endTime=one_ms_later(real["endTime"]), disconnectCause="cancel"
    )
    applied(callbacks_only, live, real)

    applied(with_provider, live)
    assert with_provider.apply_call_states([provider])[0].outcome is Outcome.APPLIED
    ended_there = with_provider.get_call(call_id)
    assert ended_there is not None and ended_there.cause == "cancel"
    assert with_provider.apply(real).outcome is Outcome.APPLIED

    assert snapshot(with_provider, {call_id}) == snapshot(callbacks_only, {call_id})
    call = with_provider.get_call(call_id)
    assert call is not None and (call.end_source, call.cause) == ("callback", "hangup")


def test_the_providers_answer_never_changes_a_call_its_callback_ended(tracker: Tracker) -> None:
    call_id = new_call_id()
    real = disconnect(call_id, start=BASE_TIME, direction="inbound")
    applied(tracker, initiate(call_id, start=BASE_TIME), real)
    before = tracker.get_call(call_id)

    (result,) = tracker.apply_call_states(
        [call_state_from(real, disconnectCause="timeout", endTime=one_ms_later(real["endTime"]))]
    )

    assert (result.outcome, result.reason) == (Outcome.IGNORED, "ended_by_callback")
    assert "timeout" in result.detail and "hangup" in result.detail
    assert tracker.get_call(call_id) == before


def test_a_call_state_saying_the_call_goes_on_changes_nothing(tracker: Tracker) -> None:
    call_id = new_call_id()
    applied(tracker, initiate(call_id, start=BASE_TIME))
    still = call_state_from(
        disconnect(call_id, start=BASE_TIME), state="answered", endTime=..., disconnectCause=...
    )

    (result,) = tracker.apply_call_states([still])

    assert (result.outcome, result.reason) == (Outcome.IGNORED, "live_there")
    call = tracker.get_call(call_id)
    assert call is not None and call.live and call.end_source is None


def test_a_call_state_of_a_call_never_heard_of_records_it_until_its_callbacks_come(
    two_trackers: tuple[Tracker, Tracker],
) -> None:
    callbacks_only, with_provider = two_trackers
    call_id = new_call_id()
    real = disconnect(call_id, start=BASE_TIME, direction="inbound")
    bodies = [initiate(call_id, start=BASE_TIME), real]
    applied(callbacks_only, *bodies)

    assert with_provider.apply_call_states([call_state_from(real)])[0].outcome is Outcome.APPLIED
    created = with_provider.get_call(call_id)
    assert created is not None
    assert (created.end_source, created.from_number, created.account_id) == (
        "provider",
        real["from"],
        real["accountId"],
    )
    applied(with_provider, *bodies)
    assert snapshot(with_provider, {call_id}) == snapshot(callbacks_only, {call_id})


def test_a_provider_end_replaces_the_sweeps_and_a_later_sweep_leaves_it(tracker: Tracker) -> None:
    call_id = new_call_id()
    lost = disconnect(call_id, start=BASE_TIME, direction="inbound")
    applied(tracker, initiate(call_id, start=BASE_TIME))
    assert tracker.sweep(FOUR_HOURS, now=NOW).expired == (call_id,)

    assert tracker.apply_call_states([call_state_from(lost)])[0].outcome is Outcome.APPLIED
    assert tracker.sweep(FOUR_HOURS, now=NOW + timedelta(days=1)).expired == ()

    call = tracker.get_call(call_id)
    assert call is not None
    assert (call.end_source, call.swept_at, call.disposition) == ("provider", None, "completed")


def test_a_legs_call_state_links_it_to_its_parent_seen_or_not(tracker: Tracker) -> None:
    parent, leg, other_leg, unseen = (new_call_id() for _ in range(4))
    applied(tracker, initiate(parent, start=BASE_TIME))
    for call_id in (leg, other_leg):
        applied(tracker, transfer_answer(None, call_id, start=BASE_TIME))
    leg_end = transfer_disconnect(parent, leg, start=BASE_TIME)
    other_end = transfer_disconnect(unseen, other_leg, start=BASE_TIME)

    results = tracker.apply_call_states([call_state_from(leg_end), call_state_from(other_end)])

    assert [result.outcome for result in results] == [Outcome.APPLIED, Outcome.APPLIED]
    linked, other = tracker.get_call(leg), tracker.get_call(other_leg)
    assert linked is not None and (linked.parent_call_id, linked.end_source) == (parent, "provider")
    assert other is not None and other.parent_call_id == unseen
    placeholder = tracker.get_call(unseen)
    assert placeholder is not None and placeholder.legs == (other_leg,) and placeholder.live


@pytest.mark.parametrize(
    ("document", "reason", "words"),
    [
        (b'{"callId": "c-1"}', "not_a_call_state", "state"),
        (
            b'{"callId": "c-1", "state": "disconnected", "endTime": 5}',
            "not_a_call_state",
            "endTime",
        ),
        (b"[1, 2]", "not_a_call_state", "object"),
        (b"{not json", "not_json", "JSON"),
        (b'{"callId": "c-1\\u0000", "state": "disconnected"}', "invalid_field", "NUL"),
    ],
)
def test_what_is_not_a_call_state_is_invalid_and_logged(
    tracker: Tracker, document: bytes, reason: str, words: str
) -> None:
    (result,) = tracker.apply_call_states([document])
    assert (result.outcome, result.reason) == (Outcome.INVALID, reason)
    assert words in result.detail
    (entry,) = [e for e in tracker.events(outcome="invalid") if e.origin == "provider"]
    assert entry.body == document


def test_a_live_callback_is_no_providers_answer(tracker: Tracker) -> None:
    call_id = new_call_id()
    (result,) = tracker.apply_call_states([initiate(call_id, start=BASE_TIME)])
    assert (result.outcome, result.reason) == (Outcome.INVALID, "not_a_call_state")
    assert tracker.get_call(call_id) is None


def test_a_rebuild_replays_the_providers_answers(tracker: Tracker) -> None:
    ended, swept_then_ended = new_call_id(), new_call_id()
    for call_id in (ended, swept_then_ended):
        applied(tracker, initiate(call_id, start=BASE_TIME))
    tracker.sweep(FOUR_HOURS, now=NOW)
    tracker.apply_call_states(
        [call_state_from(disconnect(c, start=BASE_TIME)) for c in (ended, swept_then_ended)]
    )
    report = tracker.rebuild()
    assert (report.differences, report.not_reapplied) == ((), ())
    assert report.deliveries_replayed == 6


# --- any order converges -------------------------------------------------------------------------


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(trees=workloads(), seed=st.integers(0, 2**32 - 1))
def test_callbacks_sweeps_and_provider_answers_in_any_order_converge(
    two_trackers: tuple[Tracker, Tracker], trees: list[dict[str, Any]], seed: int
) -> None:
    """Two databases get the same deliveries in two orders: callbacks (some terminal ones lost,
    some repeated), Bandwidth's call state of some ended calls (a millisecond off, as another
    clock rounds), and sweeps at random points. They end with the same records, and each
    call's end says where it came from."""
    first, second = two_trackers
    rng = random.Random(seed)
    terminals = [body for body in trees if body["eventType"] in TERMINAL_TYPES]
    lost = {body["callId"] for body in terminals if rng.random() < 0.5}
    answered_there = {body["callId"] for body in terminals if rng.random() < 0.6}
    delivered = [
        body
        for body in trees
        if not (body["callId"] in lost and body["eventType"] in TERMINAL_TYPES)
    ]
    deliveries: list[tuple[str, Any]] = [("callback", json.dumps(body)) for body in delivered]
    if delivered:
        deliveries += [("callback", json.dumps(rng.choice(delivered))) for _ in range(2)]
    deliveries += [
        ("provider", call_state_from(body, endTime=one_ms_later(body["endTime"])))
        for body in terminals
        if body["callId"] in answered_there
    ]
    deliveries += [("sweep", None)] * rng.randint(0, 2)
    swept_at = BASE_TIME + timedelta(days=30)
    for tracker in (first, second):
        rng.shuffle(deliveries)
        for kind, body in deliveries:
            if kind == "sweep":
                tracker.sweep(timedelta(hours=1), now=swept_at)
            elif kind == "provider":
                outcome = tracker.apply_call_states([body])[0].outcome
                assert outcome in (Outcome.APPLIED, Outcome.IGNORED, Outcome.DUPLICATE)
            else:
                assert tracker.apply(body).outcome in (Outcome.APPLIED, Outcome.DUPLICATE)
        tracker.sweep(timedelta(hours=1), now=swept_at)

    ids = ids_of(trees)
    assert snapshot(first, ids) == snapshot(second, ids)
    heard_of = {body["callId"] for body in delivered} | answered_there
    for body in terminals:
        call = first.get_call(body["callId"])
        if body["callId"] not in heard_of:  # its one callback lost, and Bandwidth not asked
            continue
        assert call is not None
        if body["callId"] not in lost:
            expected = "callback"
        elif body["callId"] in answered_there:
            expected = "provider"
        else:
            expected = "sweep"
        assert call.end_source == expected, (body["callId"], call)


# --- the sweep asks before it expires -----------------------------------------------------------


class Provider:
    """A stand-in for Bandwidth's call state API as the sweep sees it (the real client's own
    tests run it against a fake HTTP server): call states by id, failures by id."""

    concurrency = 4

    def __init__(self) -> None:
        self.states: dict[str, dict[str, Any]] = {}
        self.failing: dict[str, ProviderError] = {}
        self.asked: list[str] = []
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, call: Call) -> str | None:
        with self.lock:
            self.asked.append(call.call_id)
            self.threads.add(threading.current_thread().name)
        if call.call_id in self.failing:
            raise self.failing[call.call_id]
        state = self.states.get(call.call_id)
        return None if state is None else json.dumps(state)


def test_the_sweep_ends_each_call_as_the_provider_says(tracker: Tracker) -> None:
    ended, going, unknown, failing = (new_call_id() for _ in range(4))
    for call_id in (ended, going, unknown, failing):
        applied(tracker, initiate(call_id, start=BASE_TIME))
    provider = Provider()
    provider.states[ended] = call_state_from(disconnect(ended, start=BASE_TIME, cause="timeout"))
    provider.states[going] = call_state_from(
        disconnect(going, start=BASE_TIME), state="answered", endTime=..., disconnectCause=...
    )
    provider.failing[failing] = ProviderError("Bandwidth answered 503 three times")

    report = tracker.sweep(FOUR_HOURS, now=NOW, resolve=provider)

    assert (report.resolved, report.kept, report.expired, report.failed) == (
        (ended,),
        (going,),
        (unknown,),
        (failing,),
    )
    states = {c: tracker.get_call(c) for c in (ended, going, unknown, failing)}
    assert {c: (s.state, s.end_source) for c, s in states.items() if s} == {
        ended: ("disconnected", "provider"),
        going: ("initiated", None),
        unknown: ("disconnected", "sweep"),
        failing: ("initiated", None),
    }
    (entry,) = provider_entries(tracker, ended)
    assert (entry.event_type, entry.outcome) == ("callState", "applied")
    assert provider_entries(tracker, going) == []  # a call going on is no news: nothing logged

    # The next sweep asks again about those it could not settle, however old.
    del provider.failing[failing]
    again = tracker.sweep(FOUR_HOURS, now=NOW + timedelta(days=2), resolve=provider)
    assert sorted(again.kept + again.expired) == sorted([going, failing])
    assert provider.asked.count(failing) == 2 and provider.asked.count(going) == 2


def test_a_provider_down_for_a_whole_sweep_expires_nothing(tracker: Tracker) -> None:
    call_ids = [new_call_id() for _ in range(7)]
    for call_id in call_ids:
        applied(tracker, initiate(call_id, start=BASE_TIME))
    provider = Provider()
    provider.failing = dict.fromkeys(call_ids, ProviderError("connection refused"))

    report = tracker.sweep(FOUR_HOURS, now=NOW, resolve=provider, batch_size=3)

    assert (report.expired, report.resolved, sorted(report.failed)) == ((), (), sorted(call_ids))
    assert tracker.count_calls(state=["initiated", "answered"]) >= len(call_ids)
    assert all(tracker.get_call(c).live for c in call_ids)  # type: ignore[union-attr]


def test_refused_credentials_stop_the_sweep_before_it_expires_anything(tracker: Tracker) -> None:
    call_id = new_call_id()
    applied(tracker, initiate(call_id, start=BASE_TIME))
    provider = Provider()
    provider.failing[call_id] = ProviderError("401: set BANDWIDTH_USERNAME", refused=True)

    with pytest.raises(ProviderError, match="BANDWIDTH_USERNAME") as raised:
        tracker.sweep(FOUR_HOURS, now=NOW, resolve=provider)
    assert raised.value.refused
    call = tracker.get_call(call_id)
    assert call is not None and call.live


def test_another_error_in_resolve_stops_the_sweep_and_reaches_the_caller(
    tracker: Tracker,
) -> None:
    call_id = new_call_id()
    applied(tracker, initiate(call_id, start=BASE_TIME))

    def broken(call: Call) -> None:
        raise KeyError("a bug in the host's hook")

    with pytest.raises(KeyError, match="host's hook"):
        tracker.sweep(FOUR_HOURS, now=NOW, resolve=broken)
    call = tracker.get_call(call_id)
    assert call is not None and call.live


def test_the_sweep_asks_from_as_many_threads_as_the_resolver_allows(tracker: Tracker) -> None:
    call_ids = [new_call_id() for _ in range(24)]
    for call_id in call_ids:
        applied(tracker, initiate(call_id, start=BASE_TIME))
    provider = Provider()
    barrier = threading.Barrier(provider.concurrency, timeout=10)
    asked = provider.__call__

    def all_together(call: Call) -> str | None:
        barrier.wait()  # passes only when `concurrency` look-ups are in flight at once
        return asked(call)

    all_together.concurrency = provider.concurrency  # type: ignore[attr-defined]
    report = tracker.sweep(FOUR_HOURS, now=NOW, resolve=all_together, batch_size=8)

    assert sorted(report.expired) == sorted(call_ids)
    assert len(provider.threads) == provider.concurrency


def test_a_hooks_terminal_callback_is_the_providers_answer(tracker: Tracker) -> None:
    """A host's `resolve` may still build a `disconnect` from the call state: it ends the call
    as the provider's, and the real one replaces it when it comes after all."""
    call_id = new_call_id()
    applied(tracker, initiate(call_id, start=BASE_TIME))
    real = disconnect(call_id, start=BASE_TIME, ring=None, cause="timeout", direction="inbound")
    built = {**real, "endTime": one_ms_later(real["endTime"])}

    report = tracker.sweep(FOUR_HOURS, now=NOW, resolve=lambda call: built)

    assert report.resolved == (call_id,)
    call = tracker.get_call(call_id)
    assert call is not None and (call.end_source, call.disposition) == ("provider", "no-answer")
    (entry,) = provider_entries(tracker, call_id)
    assert (entry.event_type, entry.outcome) == ("callState", "applied")
    assert tracker.apply(real).outcome is Outcome.APPLIED
    call = tracker.get_call(call_id)
    assert call is not None and call.end_source == "callback"
    assert call.end_time is not None and stamp(call.end_time) == real["endTime"]


def test_a_hooks_live_callback_showing_the_call_recent_keeps_it(tracker: Tracker) -> None:
    call_id = new_call_id()
    applied(tracker, initiate(call_id, start=BASE_TIME))
    lately = NOW - BASE_TIME - timedelta(minutes=5)

    def still_talking(call: Call) -> dict[str, Any]:
        return answer(
            call.call_id, start=BASE_TIME, ring=lately.total_seconds(), direction="inbound"
        )

    report = tracker.sweep(FOUR_HOURS, now=NOW, resolve=still_talking)

    assert (report.kept, report.expired, report.resolved) == ((call_id,), (), ())
    call = tracker.get_call(call_id)
    assert call is not None and call.state == "answered"


def test_an_answer_with_impossible_times_is_refused_and_the_call_expired(
    tracker: Tracker,
) -> None:
    call_id = new_call_id()
    applied(tracker, initiate(call_id, start=BASE_TIME))
    impossible = call_state_from(
        disconnect(call_id, start=BASE_TIME), endTime=stamp(BASE_TIME - timedelta(seconds=1))
    )

    report = tracker.sweep(FOUR_HOURS, now=NOW, resolve=lambda call: impossible)

    assert report.expired == (call_id,)
    outcomes = [(e.event_type, e.outcome, e.reason) for e in provider_entries(tracker, call_id)]
    assert outcomes == [("callState", "rejected", "end_before_start")]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(trees=workloads(), seed=st.integers(0, 2**32 - 1))
def test_once_every_callback_came_the_provider_leaves_no_trace_in_the_records(
    two_trackers: tuple[Tracker, Tracker], trees: list[dict[str, Any]], seed: int
) -> None:
    """Every callback delivered, in order, to one database; to the other, shuffled among
    Bandwidth's answers for every ended call (a millisecond and a cause off) and sweeps: the
    records end the same, each terminal callback having replaced what the provider said. The
    account is the one fact the provider adds: not one of the end but of the call's tree, a
    tree whose callbacks name none (no `accountId`, no `callUrl`) takes the one Bandwidth was
    asked for, whichever came first."""
    callbacks_only, with_provider = two_trackers
    rng = random.Random(seed)
    swept_at = BASE_TIME + timedelta(days=30)
    for body in trees:
        applied(callbacks_only, body)
    callbacks_only.sweep(timedelta(hours=1), now=swept_at)
    deliveries: list[tuple[str, Any]] = [("callback", json.dumps(body)) for body in trees]
    deliveries += [
        (
            "provider",
            call_state_from(body, endTime=one_ms_later(body["endTime"]), disconnectCause="error"),
        )
        for body in trees
        if body["eventType"] in TERMINAL_TYPES
    ]
    deliveries += [("sweep", None)] * rng.randint(0, 2)
    rng.shuffle(deliveries)
    for kind, body in deliveries:
        if kind == "sweep":
            with_provider.sweep(timedelta(hours=1), now=swept_at)
        elif kind == "provider":
            with_provider.apply_call_states([body])
        else:
            assert with_provider.apply(body).outcome is Outcome.APPLIED
    with_provider.sweep(timedelta(hours=1), now=swept_at)

    ids = ids_of(trees)
    expected = snapshot(callbacks_only, ids)
    for call_id, record in snapshot(with_provider, ids).items():
        if expected[call_id]["account_id"] is None:
            assert record["account_id"] in (None, ACCOUNT)
            record["account_id"] = None
        assert record == expected[call_id], call_id
