"""Bad input never raises, is always logged byte for byte, and changes no call (property-based)."""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.factories import (
    answer,
    disconnect,
    initiate,
    machine_detection_complete,
    transfer_answer,
    transfer_complete,
    transfer_disconnect,
)
from tracker import Outcome, Result, Tracker
from tracker.parsing import TRACKED_EVENT_TYPES, identifier

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
