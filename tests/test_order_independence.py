"""The final records depend neither on delivery order nor on repetition (property-based)."""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracker import Outcome, Tracker
from tracker.testing import (
    BASE_TIME,
    answer,
    disconnect,
    initiate,
    machine_detection_complete,
    new_call_id,
    relayed,
    stamp,
    transfer_answer,
    transfer_complete,
    transfer_disconnect,
)

CAUSES = [
    "hangup",
    "busy",
    "timeout",
    "cancel",
    "rejected",
    "callback-error",
    "invalid-bxml",
    "application-error",
    "account-limit",
    "node-capacity-exceeded",
    "error",
    "unknown",
    "sip-603-decline",
]


@st.composite
def transfer_trees(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A parent call and its legs (some with legs of their own), answered or not, every cause;
    some parents never report, some legs carry no account at all."""
    bodies: list[dict[str, Any]] = []

    def call(parent: str | None, start_offset: float, depth: int) -> str:
        call_id = new_call_id()
        start = BASE_TIME + timedelta(seconds=start_offset)
        ring = draw(st.one_of(st.none(), st.floats(0.0, 30.0)))
        cause = draw(st.sampled_from(CAUSES))
        talk = draw(st.floats(0.5, 600.0))
        extra: dict[str, Any] = {}
        if draw(st.booleans()):
            extra["tag"] = draw(st.sampled_from(["", "vip", "queue-7"]))
        if parent is None:
            body = disconnect(
                call_id,
                start=start,
                ring=ring,
                cause=cause,
                talk=talk,
                direction=draw(st.sampled_from(["inbound", "outbound"])),
                **extra,
            )
        else:
            if draw(st.integers(0, 4)) == 0:
                extra["callUrl"] = ...
            # Legs of one parent normally agree on the original numbers; vary them anyway, so
            # which leg a placeholder takes its numbers from is put to the test.
            extra["from"] = draw(st.sampled_from(["+15551112222", "Anonymous", "+15550000001"]))
            body = transfer_disconnect(
                parent, call_id, start=start, ring=ring, cause=cause, talk=talk, **extra
            )
        for leg_index in range(draw(st.integers(0, 3 if depth == 0 else 1 if depth == 1 else 0))):
            call(call_id, start_offset + draw(st.floats(0.0, 20.0)) + leg_index, depth + 1)
        if parent is not None or draw(st.integers(0, 5)) > 0:  # some parents never report
            bodies.append(body)
        return call_id

    for _ in range(draw(st.integers(1, 3))):
        call(None, draw(st.floats(0.0, 100.0)), 0)
    return bodies


@st.composite
def live_calls(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Whole lifecycles with every tracked type, times consistent as Bandwidth sends them:
    an inbound call transferred to one leg or to a simultaneous ring of several, a busy
    transfer with its transferComplete, an original call hanging up while bridged (so no
    transferComplete comes), an outbound call with machine detection. Tags differ from event to
    event, as `<Tag>` changes them during a call."""
    tags = st.sampled_from([None, "", "ivr", "queue-7"])

    def tagged(body: dict[str, Any]) -> dict[str, Any]:
        tag = draw(tags)
        if tag is not None:
            body["tag"] = tag
        return body

    def seconds(low: float, high: float) -> timedelta:
        return timedelta(milliseconds=draw(st.integers(int(low * 1000), int(high * 1000))))

    scenario = draw(st.sampled_from(["one leg", "simultaneous ring", "busy", "bridged", "amd"]))
    original = new_call_id()
    start = BASE_TIME + seconds(0, 3600)
    answered = start + seconds(0.5, 20)
    if scenario == "amd":
        talk = seconds(1, 300)
        return [
            tagged(answer(original, start=start, ring=(answered - start).total_seconds())),
            tagged(
                machine_detection_complete(
                    original,
                    start=start,
                    answerTime=stamp(answered),
                    result=draw(st.sampled_from(["human", "answering-machine", "silence"])),
                )
            ),
            tagged(
                disconnect(
                    original,
                    start=start,
                    ring=(answered - start).total_seconds(),
                    talk=talk.total_seconds(),
                    cause=draw(st.sampled_from(CAUSES)),
                )
            ),
        ]
    bodies = [tagged(initiate(original, start=start))]
    legs = draw(st.integers(2, 4)) if scenario == "simultaneous ring" else 1
    winner = draw(st.integers(0, legs - 1)) if scenario != "busy" else None
    leg_start = answered + seconds(0.1, 2)
    bridge_end = leg_start
    for number in range(legs):
        leg = new_call_id()
        own_start = leg_start + timedelta(milliseconds=number)
        if number == winner:
            ring = seconds(0.5, 15)
            talk = seconds(1, 600)
            bridge_end = own_start + ring + talk
            if draw(st.integers(0, 3)) > 0:  # transferAnswer is sent only when its URL is set
                bodies.append(
                    tagged(
                        transfer_answer(
                            original if draw(st.booleans()) else None,
                            leg,
                            start=own_start,
                            ring=ring.total_seconds(),
                        )
                    )
                )
            cause = "hangup"
        else:
            ring, talk = None, seconds(0, 0)
            cause = "busy" if scenario == "busy" else "cancel"
        bodies.append(
            tagged(
                transfer_disconnect(
                    original,
                    leg,
                    start=own_start,
                    ring=None if ring is None else ring.total_seconds(),
                    talk=talk.total_seconds(),
                    cause=cause,
                )
            )
        )
    if scenario == "bridged":
        ended = bridge_end - seconds(0.1, 0.5)  # the caller hung up first: no transferComplete
    else:
        bodies.append(
            tagged(
                transfer_complete(
                    original,
                    start=start,
                    at=bridge_end + timedelta(milliseconds=40),
                    answerTime=stamp(answered),
                    cause="busy" if scenario == "busy" else "hangup",
                )
            )
        )
        ended = bridge_end + seconds(0.1, 30)
    bodies.append(
        tagged(
            disconnect(
                original,
                start=start,
                ring=(answered - start).total_seconds(),
                talk=(ended - answered).total_seconds(),
                direction="inbound",
            )
        )
    )
    return bodies


def reserialize(body: dict[str, Any], rng: random.Random) -> bytes:
    """What a relay may do to a body: reorder keys and add or drop explicit nulls in objects at
    any depth, change whitespace, respell an instant (drawn by the kit's `relayed`)."""
    return relayed(body, seed=rng.getrandbits(32))


def snapshot(tracker: Tracker, call_ids: set[str]) -> dict[str, Any]:
    records: dict[str, Any] = {}
    for call_id in sorted(call_ids):
        call = tracker.get_call(call_id)
        if call is None:
            records[call_id] = None
            continue
        record = asdict(call)
        record["history"] = [
            {key: value for key, value in step.items() if key != "event_id"}
            for step in record["history"]
        ]
        records[call_id] = record
    return records


def ids_of(bodies: list[dict[str, Any]]) -> set[str]:
    return {b["callId"] for b in bodies} | {
        b["parentCallId"] for b in bodies if "parentCallId" in b
    }


@st.composite
def workloads(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Transfer trees of terminal events and whole live lifecycles, side by side."""
    bodies = draw(transfer_trees()) if draw(st.booleans()) else []
    for _ in range(draw(st.integers(0 if bodies else 1, 2))):
        bodies += draw(live_calls())
    return bodies


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(trees=workloads(), seed=st.integers(0, 2**32 - 1))
def test_shuffled_repeated_delivery_gives_the_in_order_records(
    two_trackers: tuple[Tracker, Tracker], trees: list[dict[str, Any]], seed: int
) -> None:
    in_order, shuffled = two_trackers
    rng = random.Random(seed)
    for body in trees:
        assert in_order.apply(json.dumps(body)).outcome is Outcome.APPLIED

    deliveries = [json.dumps(body) for body in trees]
    if trees:
        deliveries += [json.dumps(rng.choice(trees)) for _ in range(rng.randint(0, len(trees)))]
        deliveries += [reserialize(rng.choice(trees), rng) for _ in range(rng.randint(0, 3))]
    rng.shuffle(deliveries)
    outcomes = [shuffled.apply(body).outcome for body in deliveries]

    assert outcomes.count(Outcome.APPLIED) == len(trees)
    assert outcomes.count(Outcome.DUPLICATE) == len(deliveries) - len(trees)
    ids = ids_of(trees)
    assert snapshot(shuffled, ids) == snapshot(in_order, ids)


def test_apply_many_gives_the_outcomes_of_one_by_one(
    two_trackers: tuple[Tracker, Tracker],
) -> None:
    one_by_one, batched = two_trackers
    parent = disconnect()
    bodies: list[Any] = [
        transfer_disconnect(parent["callId"]),
        parent,
        parent,
        b"not json",
        {"eventType": "dtmf"},
        disconnect(ring=None, endTime=stamp(BASE_TIME - timedelta(seconds=5))),
        dict(parent, cause="busy", eventTime="2031-01-01T00:00:00Z"),
    ]
    expected = [one_by_one.apply(body) for body in bodies]
    results = batched.apply_many([json.dumps(b) if isinstance(b, dict) else b for b in bodies])
    assert [(r.outcome, r.call_id, r.reason) for r in results] == [
        (r.outcome, r.call_id, r.reason) for r in expected
    ]
    assert [r.outcome for r in results] == [
        "applied",
        "applied",
        "duplicate",
        "invalid",
        "ignored",
        "rejected",
        "rejected",
    ]


# --- nested objects re-serialized ------------------------------------------------------------

NESTED = {
    "diversion": lambda: initiate(
        new_call_id(), diversion={"origTo": "+1555", "reason": "busy", "x": {"b": [1, {"d": 2}]}}
    ),
    "diversion with a null inside": lambda: initiate(
        new_call_id(), diversion={"origTo": "+1555", "gone": None, "x": {"b": None, "c": [None]}}
    ),
    "stirShaken with unknown keys": lambda: initiate(
        new_call_id(), stirShaken={"verstat": "v", "attestationIndicator": "A", "z": 1, "a": {}}
    ),
    "machineDetectionResult reordered": lambda: answer(
        new_call_id(), machineDetectionResult={"value": "human", "duration": "PT1S"}
    ),
    "machineDetectionResult with unknown keys": lambda: machine_detection_complete(
        new_call_id(), machineDetectionResult={"value": "silence", "z": [1, {"b": 1, "a": 2}]}
    ),
    # A live type: a terminal event saying what the first said is a duplicate whatever its key.
    "an unknown nested key": lambda: dict(
        transfer_complete(new_call_id()), extra={"b": {"d": 1, "c": None}, "a": 3}
    ),
}


def reversed_with_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {"zNull": None} | {key: reversed_with_nulls(value[key]) for key in reversed(value)}
    if isinstance(value, list):
        return [reversed_with_nulls(item) for item in value]
    return value


@pytest.mark.parametrize("name", list(NESTED))
def test_a_body_with_nested_objects_reordered_or_null_padded_is_a_duplicate(
    tracker: Tracker, name: str
) -> None:
    body = NESTED[name]()
    assert tracker.apply(json.dumps(body)).outcome is Outcome.APPLIED
    before = tracker.get_call(body["callId"])

    again = tracker.apply(json.dumps(reversed_with_nulls(body), indent=2))

    assert again.outcome is Outcome.DUPLICATE, again.detail
    assert tracker.get_call(body["callId"]) == before
    assert [entry.outcome for entry in tracker.events(call_id=body["callId"])] == [
        Outcome.APPLIED,
        Outcome.DUPLICATE,
    ]


# Values of any JSON type; keys that no nested model declares (a declared key has its own type).
# Text is Unicode a body can carry: no NUL (refused), no lone surrogate (no UTF-8 can hold one,
# and its `\ud800` escape is refused as not JSON).
_characters = st.characters(exclude_characters="\x00", exclude_categories=("Cs",))
_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(_characters, max_size=8)
)
_keys = st.text(_characters, max_size=6).map(lambda key: "k" + key)
_values = st.recursive(
    _leaves,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_keys, children, max_size=3),
    max_leaves=10,
)
_objects = st.dictionaries(_keys, _values, max_size=4)


@st.composite
def nested_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A tracked body of any type with nested objects wherever it may hold them."""
    call_id = new_call_id()
    kind = draw(
        st.sampled_from(["initiate", "answer", "machineDetectionComplete", "transferComplete"])
    )
    if kind == "initiate":
        body = initiate(
            call_id,
            diversion=draw(_objects),
            stirShaken={"verstat": "TN-Validation-Passed", **draw(_objects)},
        )
    elif kind == "answer":
        body = answer(call_id, machineDetectionResult={"value": "human", **draw(_objects)})
    elif kind == "machineDetectionComplete":
        body = machine_detection_complete(
            call_id, machineDetectionResult={"value": "human", **draw(_objects)}
        )
    else:  # not a terminal type, whose repeat is a duplicate whatever its key
        body = transfer_complete(call_id)
    body.update(draw(_objects))
    return body


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(body=nested_bodies(), seed=st.integers(0, 2**32 - 1))
def test_any_reserialization_of_a_nested_body_is_a_duplicate(
    tracker: Tracker, body: dict[str, Any], seed: int
) -> None:
    rng = random.Random(seed)
    first = tracker.apply(json.dumps(body))
    assert first.outcome is Outcome.APPLIED, first.detail
    for _ in range(3):
        again = tracker.apply(reserialize(body, rng))
        assert again.outcome is Outcome.DUPLICATE, again.detail
