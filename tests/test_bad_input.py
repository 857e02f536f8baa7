"""Bad input never raises, is always logged byte for byte, and changes no call (property-based)."""

from __future__ import annotations

import itertools
import json
import signal
from collections import UserDict
from types import MappingProxyType
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_cli import run as run_cli
from tests.test_feed import start_follow
from tracker import InvalidReason, Outcome, Result, Tracker
from tracker.parsing import TRACKED_EVENT_TYPES, identifier
from tracker.testing import (
    answer,
    disconnect,
    initiate,
    machine_detection_complete,
    transfer_answer,
    transfer_complete,
    transfer_disconnect,
)

FIELDS = [
    "eventType", "eventTime", "accountId", "applicationId", "from", "to", "direction", "callId",
    "callUrl", "startTime", "answerTime", "endTime", "cause", "errorMessage", "errorId", "tag",
    "enqueuedTime", "parentCallId", "transferCallerId", "transferTo", "sipResponseCode",
    "machineDetectionResult", "stirShaken", "diversion", "callerDisplayName",
]  # fmt: skip

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=300)
    # What once escaped on the servers: NUL, ids longer than their column, trailing spaces.
    | st.sampled_from(["\x00", "c-\x00", "x" * 300, "é" * 257, "c-pad ", " "]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


_fresh = itertools.count()


@st.composite
def damaged_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid body with some fields removed or replaced by any JSON value."""
    body = draw(
        st.sampled_from(
            [
                disconnect(),
                transfer_disconnect("c-parent-of-damaged"),
                initiate("c-damaged"),
                answer("c-damaged"),
                transfer_answer("c-parent-of-damaged", "c-damaged"),
                transfer_complete("c-damaged", cause="busy"),
                machine_detection_complete("c-damaged"),
            ]
        )
    )
    # Ids of this example's own: the examples share one database, where a drawn id could name
    # a call an earlier example applied.
    example = next(_fresh)
    body = dict(body, callId=f"c-damaged-{example}")
    if "parentCallId" in body:
        body["parentCallId"] = f"c-parent-{example}"
    for field in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=4, unique=True)):
        if draw(st.booleans()):
            body.pop(field, None)
        else:
            body[field] = draw(json_values)
    return body


def apply_logged_once(tracker: Tracker, body: bytes | str) -> Result:
    """Apply `body`, and check the log grew by exactly one entry, left the others as they were,
    and that entry is this body byte for byte with the outcome returned."""
    before = tracker.events()
    result = tracker.apply(body)
    after = tracker.events()
    assert len(after) == len(before) + 1
    assert after[: len(before)] == before
    expected = body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass")
    assert (after[-1].body, after[-1].outcome) == (expected, result.outcome)
    return result


@SETTINGS
@given(body=st.binary(max_size=2000))
def test_any_bytes_are_answered_and_logged_on_any_backend(tracker: Tracker, body: bytes) -> None:
    result = apply_logged_once(tracker, body)
    assert result.outcome in (Outcome.INVALID, Outcome.IGNORED)
    assert result.detail


@SETTINGS
@given(value=json_values)
def test_any_json_value_is_answered_and_logged_on_any_backend(tracker: Tracker, value: Any) -> None:
    body = json.dumps(value)
    result = apply_logged_once(tracker, body)
    assert result.outcome in (Outcome.INVALID, Outcome.IGNORED)


@SETTINGS
@given(event_type=st.text(max_size=300), call_id=json_values, extra=json_values)
def test_any_untracked_callback_is_ignored_and_logged_on_any_backend(
    tracker: Tracker, event_type: str, call_id: Any, extra: Any
) -> None:
    if event_type in TRACKED_EVENT_TYPES:
        event_type += "-not-tracked"
    body = json.dumps({"eventType": event_type, "callId": call_id, "extra": extra})
    result = apply_logged_once(tracker, body)
    assert result.outcome is Outcome.IGNORED
    assert result.call_id == (call_id if identifier(call_id) else None)


@SETTINGS
@given(body=damaged_bodies())
def test_damaged_callbacks_never_raise_on_any_backend(
    tracker: Tracker, body: dict[str, Any]
) -> None:
    text = json.dumps(body, ensure_ascii=False)
    result = apply_logged_once(tracker, text)
    call = tracker.get_call(body["callId"]) if isinstance(body.get("callId"), str) else None
    if result.outcome is Outcome.INVALID:
        assert result.reason in ("missing_field", "invalid_field", "not_json")
        assert call is None
    if result.outcome is Outcome.APPLIED:
        assert call is not None
        if body.get("eventType") in ("disconnect", "transferDisconnect"):
            assert call.state == "disconnected"


# --- NaN and Infinity are not JSON (RFC 8259) ---------------------------------------------------
# pydantic-core reads them (and reads a number past a double's range as an infinity); a stored
# one would come out of `show --json` and `follow` as output strict JSON readers refuse.

NOT_FINITE = ["NaN", "Infinity", "-Infinity", "1e999"]


def with_number(body: dict[str, Any], number: str) -> str:
    """`body` as JSON with each string "@" replaced by the bare token `number`."""
    return json.dumps(body, ensure_ascii=False).replace('"@"', number)


def not_finite_bodies(call_id: str) -> list[dict[str, Any]]:
    return [
        disconnect(call_id, sipResponseCode="@"),
        disconnect(call_id, extra="@"),
        initiate(call_id, diversion={"origTo": "+1", "x": [1, {"y": "@"}]}),
        initiate(call_id, stirShaken={"verstat": "v", "x": "@"}),
        answer(call_id, machineDetectionResult={"value": "human", "x": "@"}),
        {"eventType": "dtmf", "callId": call_id, "digit": "@"},
        {"eventType": "disconnect", "callId": call_id, "x": "@"},  # missing fields too
    ]


def test_nan_or_infinity_anywhere_is_not_json_logged_and_stored_nowhere(tracker: Tracker) -> None:
    for number in NOT_FINITE:
        for as_bytes in (True, False):
            for index, template in enumerate(not_finite_bodies(f"c-nan-{number}-{as_bytes}")):
                call_id = f"c-nan-{number}-{as_bytes}-{index}"
                text = with_number(dict(template, callId=call_id), number)
                result = apply_logged_once(tracker, text.encode() if as_bytes else text)
                assert (result.outcome, result.reason) == (Outcome.INVALID, InvalidReason.NOT_JSON)
                assert "RFC 8259" in result.detail, result.detail
                assert result.call_id == call_id
                assert tracker.get_call(call_id) is None


def strict_json(text: str) -> Any:
    """`text` read as RFC 8259 JSON: NaN and Infinity refused."""

    def refuse(constant: str) -> Any:
        raise AssertionError(f"{constant} printed, which is not JSON: {text[:200]}")

    return json.loads(text, parse_constant=refuse)


def test_show_calls_and_follow_print_only_strict_json(tracker: Tracker, database_url: str) -> None:
    refused, kept = "c-printed-nan", "c-printed-finite"
    tracker.apply(with_number(initiate(refused, diversion={"x": "@", "y": "@"}), "NaN"))
    tracker.apply(with_number(initiate(refused + "-inf", diversion={"x": "@"}), "1e999"))
    tracker.apply(json.dumps(initiate(kept, diversion={"big": 1.7e308, "tiny": 5e-324})))
    applied = tracker.events(outcome=Outcome.APPLIED)

    shown = run_cli("--db", database_url, "show", "--json", kept)
    assert shown.exit_code == 0, shown.output
    assert strict_json(shown.stdout)["diversion"] == {"big": 1.7e308, "tiny": 5e-324}
    listed = run_cli("--db", database_url, "calls", "--json")
    assert listed.exit_code == 0, listed.output
    assert [call["call_id"] for call in strict_json(listed.stdout)] == [kept]

    follower = start_follow(database_url)
    try:
        assert follower.stdout is not None
        lines = [follower.stdout.readline() for _ in applied]
    finally:
        follower.send_signal(signal.SIGTERM)
        follower.communicate(timeout=60)
    assert [strict_json(line)["call_id"] for line in lines] == [kept]


# --- any Mapping is a body ----------------------------------------------------------------------


def test_mappings_that_are_not_dicts_are_applied_at_any_depth(tracker: Tracker) -> None:
    plain = initiate("c-mapping", diversion={"origTo": "+1", "x": {"y": [{"z": 1}]}})
    wrapped = UserDict(
        dict(
            plain,
            diversion=MappingProxyType(
                {"origTo": "+1", "x": UserDict(y=[MappingProxyType({"z": 1})])}
            ),
        )
    )
    for body in (MappingProxyType(plain), wrapped):
        result = tracker.apply(body)
        assert result.outcome in (Outcome.APPLIED, Outcome.DUPLICATE), result.detail
    assert [entry.outcome for entry in tracker.events()] == [Outcome.APPLIED, Outcome.DUPLICATE]
    assert [json.loads(entry.body) for entry in tracker.events()] == [plain, plain]
    call = tracker.get_call("c-mapping")
    assert call is not None and call.diversion == plain["diversion"]
