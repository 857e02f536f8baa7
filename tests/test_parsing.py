"""Reading bodies: tolerant of what Bandwidth really sends, precise about what it cannot read."""

from __future__ import annotations

import json
from collections import UserDict
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

import pytest

from tracker.parsing import (
    Disconnect,
    Event,
    TransferDisconnect,
    Unreadable,
    Untracked,
    content_key,
    read,
    read_call_url,
)
from tracker.testing import answer, disconnect, initiate, transfer_disconnect


def parsed(body: object) -> Disconnect | TransferDisconnect:
    content = read(body).content
    assert isinstance(content, Disconnect | TransferDisconnect), content
    return content


def refusal(body: object) -> Unreadable:
    content = read(body).content
    assert isinstance(content, Unreadable), content
    return content


def test_seed_busy_example_reads_every_field() -> None:
    event = parsed(disconnect(cause="busy", errorMessage="Callee is busy", errorId="4642"))
    assert event.cause == "busy"
    assert event.error_message == "Callee is busy"
    assert event.account_id == "55555555"
    assert event.direction == "outbound"


def test_transfer_leg_own_numbers_are_transfer_caller_id_and_transfer_to() -> None:
    event = parsed(transfer_disconnect("c-parent"))
    assert (event.own_from, event.own_to) == ("+15551115555", "+15556667777")
    assert (event.from_number, event.to_number) == ("+15551112222", "+15553334444")


@pytest.mark.parametrize("cause", ["sip-503-service-unavailable", "node-capacity-exceeded"])
def test_cause_no_list_names_is_kept_verbatim(cause: str) -> None:
    assert parsed(disconnect(cause=cause)).cause == cause


@pytest.mark.parametrize(
    "caller", ["Anonymous", "Private", "Restricted", "sip:alice@example.com", "+44 20 7946 0958"]
)
def test_from_and_to_are_kept_as_sent(caller: str) -> None:
    event = parsed(disconnect(**{"from": caller, "to": "sip:bob@pbx.example.org;transport=tls"}))
    assert event.from_number == caller
    assert event.to_number == "sip:bob@pbx.example.org;transport=tls"


@pytest.mark.parametrize(
    ("spelling", "instant"),
    [
        ("2026-06-10T19:15:00Z", datetime(2026, 6, 10, 19, 15, tzinfo=UTC)),
        ("2026-06-10T19:15:00.5Z", datetime(2026, 6, 10, 19, 15, 0, 500000, tzinfo=UTC)),
        ("2026-06-10T19:15:00.123Z", datetime(2026, 6, 10, 19, 15, 0, 123000, tzinfo=UTC)),
        ("2026-06-10T19:15:00.123456Z", datetime(2026, 6, 10, 19, 15, 0, 123456, tzinfo=UTC)),
        ("2026-06-10T19:15:00.123456789Z", datetime(2026, 6, 10, 19, 15, 0, 123456, tzinfo=UTC)),
        ("2026-06-10T21:15:00.250+02:00", datetime(2026, 6, 10, 19, 15, 0, 250000, tzinfo=UTC)),
        ("2026-06-10T19:15Z", datetime(2026, 6, 10, 19, 15, tzinfo=UTC)),
        ("2026-06-10T19:15:00", datetime(2026, 6, 10, 19, 15, tzinfo=UTC)),
    ],
)
def test_timestamps_of_any_precision_and_zone_become_utc(spelling: str, instant: datetime) -> None:
    event = parsed(disconnect(startTime=spelling, answerTime=..., endTime="2026-06-10T20:00:00Z"))
    assert event.start_time == instant
    assert event.start_time.tzinfo is not None
    assert event.start_time.utcoffset() == timedelta(0)


def test_stamps_in_another_zone_read_as_the_same_model_and_content() -> None:
    body = disconnect()
    start = datetime.fromisoformat(body["startTime"])
    respelled = parsed(dict(body, startTime=start.replace(tzinfo=None).isoformat()))
    assert type(respelled) is Disconnect
    assert respelled == parsed(body)


@pytest.mark.parametrize(
    ("spelling", "instant"),
    [
        ("1000-01-01T00:00:00Z", datetime(1000, 1, 1, tzinfo=UTC)),
        ("0999-12-31T23:30:00-01:00", datetime(1000, 1, 1, 0, 30, tzinfo=UTC)),
        ("1000-01-01T00:30:00+01:00", None),
        ("9999-12-31T23:30:00-01:00", None),
        ("0999-12-31T23:59:59", None),
    ],
)
def test_only_instants_of_the_years_1000_to_9999_in_utc_are_read(
    spelling: str, instant: datetime | None
) -> None:
    content = read(disconnect(startTime=spelling)).content
    if instant is None:
        assert isinstance(content, Unreadable)
        assert (content.reason, "'startTime'" in content.detail) == ("invalid_field", True)
    else:
        assert isinstance(content, Disconnect) and content.start_time == instant


def test_event_time_may_be_missing() -> None:
    assert parsed(disconnect(eventTime=...)).event_time is None


def test_explicit_null_is_the_same_as_an_absent_key() -> None:
    body = disconnect(ring=None)
    with_nulls = parsed(dict(body, tag=None, answerTime=None, errorMessage=None, enqueuedTime=None))
    without = parsed(body)
    assert with_nulls.tag is None and with_nulls.answer_time is None
    assert content_key(with_nulls) == content_key(without)


def test_empty_tag_stays_an_empty_string() -> None:
    assert parsed(disconnect(tag="")).tag == ""


def test_unknown_keys_are_accepted_and_part_of_the_content() -> None:
    body = disconnect(sipResponseCode=486, privacy=True, callerDisplayName="ACME", newKey={"a": 1})
    event = parsed(body)
    assert event.sip_response_code == 486
    assert event.model_extra == {"privacy": True, "callerDisplayName": "ACME", "newKey": {"a": 1}}
    assert content_key(event) != content_key(parsed(disconnect(call_id=body["callId"])))


def test_documented_optional_fields_of_transfer_disconnect_are_read() -> None:
    event = parsed(
        transfer_disconnect(
            "c-parent", accountId="9", applicationId="app", enqueuedTime="2026-06-10T19:14:00Z"
        )
    )
    assert (event.account_id, event.application_id) == ("9", "app")
    assert event.enqueued_time == datetime(2026, 6, 10, 19, 14, tzinfo=UTC)


def test_relay_reserialization_keeps_the_content_key() -> None:
    body = disconnect()
    shuffled = dict(reversed(list(body.items())))
    respelled = dict(shuffled, startTime=body["startTime"].replace("Z", "+00:00"))
    keys = {
        content_key(parsed(json.dumps(body))),
        content_key(parsed(json.dumps(respelled, indent=4))),
        content_key(parsed(dict(respelled, tag=None))),
    }
    assert len(keys) == 1


def test_another_instant_changes_the_content_key() -> None:
    body = disconnect()
    later = dict(body, eventTime="2030-01-01T00:00:00Z")
    assert content_key(parsed(body)) != content_key(parsed(later))


def test_same_instant_in_another_zone_keeps_the_content_key() -> None:
    body = disconnect()
    start = datetime.fromisoformat(body["startTime"]).astimezone(timezone(timedelta(hours=-5)))
    assert content_key(parsed(body)) == content_key(parsed(dict(body, startTime=start.isoformat())))


# Literal bytes rather than factories: these exact bodies' keys are stored as dedup keys of
# applied deliveries, so a change of `content_key` that moves them would let a redelivery of
# an already applied body through.
_PINNED_KEYS = [
    (
        b'{"eventType":"disconnect","eventTime":"2026-06-10T19:16:00.010Z","accountId":"55555555",'
        b'"applicationId":"7fc9698a-b04a-468b-9e8f-91238c0d0086","from":"+15551112222",'
        b'"to":"+15553334444","direction":"outbound",'
        b'"callId":"c-95ac8d6e-00000001-b38f-4198-93c1-51633ec68f8d",'
        b'"callUrl":"https://voice.bandwidth.com/api/v2/accounts/55555555/calls/'
        b'c-95ac8d6e-00000001-b38f-4198-93c1-51633ec68f8d","startTime":"2026-06-10T19:15:00.000Z",'
        b'"answerTime":"2026-06-10T19:15:03.000Z","endTime":"2026-06-10T19:16:00.000Z",'
        b'"cause":"hangup","tag":null}',
        "1a0b57541935dc5e6b18fffe0ae5baebdd37469dc8633578529725d1d2e21f13",
    ),
    (
        b'{"eventType":"transferDisconnect","callId":"c-leg","parentCallId":"c-parent",'
        b'"startTime":"2026-06-10T21:15:00.250+02:00","endTime":"2026-06-10T19:16:00",'
        b'"cause":"busy","sipResponseCode":486,"transferCallerId":"+15551115555",'
        b'"zeta":[1,"\xc3\xa9"],"alpha":{"b":2,"a":1},"gone":null}',
        "e435917bffde318187f641c2f165987deddc88be638dc84356c23d2c5260c5d9",
    ),
]


# Computed before the content key became canonical at every depth: a flat body, and nested ones
# already canonical (keys sorted, no null in an object), keep the key they had.
_PINNED_LIVE_KEYS = [
    (
        b'{"eventType":"transferComplete","callId":"c-tc","startTime":"2026-06-10T19:15:00Z",'
        b'"eventTime":"2026-06-10T19:15:40.5+00:00","cause":"busy","transferTo":"+15556667777",'
        b'"errorMessage":"Callee is busy","tag":"","extra":7,"other":"x"}',
        "bef5163b5fafa6ed30c955f4a1092c1ca683f62225ba41ffac7c9eeba29b5256",
    ),
    (
        b'{"eventType":"answer","callId":"c-ans","startTime":"2026-06-10T19:15:00Z",'
        b'"answerTime":"2026-06-10T19:15:03Z",'
        b'"machineDetectionResult":{"value":"human","duration":"PT4.5S"}}',
        "9216eaa47215ef2d86370d91e80e7b5010c30f0b32060e4d4f63fe275a9ec53b",
    ),
    (
        b'{"eventType":"initiate","callId":"c-init","startTime":"2026-06-10T19:15:00Z",'
        b'"direction":"inbound","stirShaken":{"verstat":"TN-Validation-Passed",'
        b'"attestationIndicator":"A"},"diversion":{"counter":1,"nested":{"a":[1,null,{"b":2}],'
        b'"c":"\xc3\xa9"},"origTo":"+15550001111","privacy":"off","reason":"unconditional"},'
        b'"callerDisplayName":"ALICE"}',
        "8c82803eb79001a1cd675404abd4d8c5762915f06b78a6bfc344393213f60631",
    ),
]


@pytest.mark.parametrize(("body", "key"), _PINNED_KEYS)
def test_content_key_of_a_known_body_never_changes(body: bytes, key: str) -> None:
    assert content_key(parsed(body)) == key


@pytest.mark.parametrize(("body", "key"), _PINNED_LIVE_KEYS)
def test_content_key_of_a_known_live_body_never_changes(body: bytes, key: str) -> None:
    assert content_key(tracked(body)) == key


def tracked(body: object) -> Event:
    content = read(body).content
    assert not isinstance(content, Unreadable | Untracked), content
    return content


def reordered(value: Any) -> Any:
    """`value` with the keys of every object reversed and a null added: a relay's spelling."""
    if isinstance(value, dict):
        return {key: reordered(value[key]) for key in reversed(value)} | {"zNull": None}
    if isinstance(value, list):
        return [reordered(item) for item in value]
    return value


NESTED_BODIES = {
    "diversion": initiate(
        "c-nested", diversion={"origTo": "+1555", "reason": "busy", "x": {"b": [1, {"d": 2}]}}
    ),
    "stirShaken with unknown keys": initiate(
        "c-nested", stirShaken={"verstat": "v", "attestationIndicator": "A", "z": 1, "a": [2]}
    ),
    "machineDetectionResult with unknown keys": answer(
        "c-nested", machineDetectionResult={"value": "human", "duration": "PT1S", "z": 1, "y": 2}
    ),
    "unknown nested key": dict(initiate("c-nested"), extra={"b": {"d": 1, "c": 2}, "a": 3}),
}


@pytest.mark.parametrize("name", list(NESTED_BODIES))
def test_nested_objects_in_another_key_order_or_with_nulls_keep_the_content_key(name: str) -> None:
    body = NESTED_BODIES[name]
    assert content_key(tracked(body)) == content_key(tracked(reordered(body)))


def test_arrays_keep_their_order_and_their_nulls_in_the_content_key() -> None:
    def key(value: list[Any]) -> str:
        return content_key(tracked(initiate("c-array", diversion={"list": value})))

    assert len({key([1, 2]), key([2, 1]), key([1, None, 2]), key([1, 2, None])}) == 4


def test_a_nested_value_that_differs_changes_the_content_key() -> None:
    def key(**diversion: Any) -> str:
        return content_key(tracked(initiate("c-diff", diversion=diversion)))

    assert key(a={"b": 1}) != key(a={"b": 2}) != key(a={"c": 1})
    assert key(a={"b": 1}) == key(a={"b": 1, "c": None})


# --- NaN and Infinity are not JSON (RFC 8259) -------------------------------------------------

NOT_FINITE = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"]


def _spliced(template: dict[str, Any], number: str) -> str:
    """`template` as JSON with the string "@" replaced by the bare token `number`."""
    return json.dumps(template).replace('"@"', number)


NOT_FINITE_PLACES = {
    "a declared number": disconnect("c-nan", sipResponseCode="@"),
    "a declared string": disconnect("c-nan", startTime="@"),
    "an unknown key": disconnect("c-nan", extra="@"),
    "deep in an unknown key": disconnect("c-nan", extra={"a": [1, {"b": "@"}]}),
    "in diversion": initiate("c-nan", diversion={"a": ["@"]}),
    "in stirShaken": initiate("c-nan", stirShaken={"verstat": "v", "x": "@"}),
    "in machineDetectionResult": answer("c-nan", machineDetectionResult={"value": "h", "x": "@"}),
    "an untracked body": {"eventType": "dtmf", "callId": "c-nan", "digit": "@"},
    "an untracked body's callId": {"eventType": "dtmf", "callId": "@"},
    "a body missing fields": {"eventType": "disconnect", "callId": "c-nan", "x": "@"},
}


@pytest.mark.parametrize("as_bytes", [True, False], ids=["bytes", "str"])
@pytest.mark.parametrize("number", NOT_FINITE)
@pytest.mark.parametrize("place", list(NOT_FINITE_PLACES))
def test_nan_and_infinity_anywhere_are_not_json(place: str, number: str, as_bytes: bool) -> None:
    text = _spliced(NOT_FINITE_PLACES[place], number)
    problem = refusal(text.encode() if as_bytes else text)
    assert problem.reason == "not_json"
    assert "RFC 8259" in problem.detail and "NaN or Infinity" in problem.detail
    expected_call = None if place == "an untracked body's callId" else "c-nan"
    assert problem.call_id == expected_call


@pytest.mark.parametrize("number", NOT_FINITE)
def test_a_body_that_is_only_nan_or_infinity_is_not_json(number: str) -> None:
    for text in (number, f"[1, {number}]"):
        assert refusal(text).reason == "not_json"


def test_finite_numbers_of_any_size_are_kept() -> None:
    event = tracked(_spliced(initiate("c-big", diversion={"a": "@"}), "1.7e308"))
    assert event.diversion == {"a": 1.7e308}  # type: ignore[union-attr]


def test_a_mapping_holding_nan_or_infinity_is_not_json() -> None:
    for number in (float("nan"), float("inf")):
        problem = refusal(dict(disconnect(), extra={"a": [number]}))
        assert problem.reason == "not_json"
        assert "RFC 8259" in problem.detail


# --- any Mapping is a body ------------------------------------------------------------------


def test_any_mapping_at_any_depth_is_read_as_its_json() -> None:
    body = disconnect("c-mapping")
    expected = dict(body, extra={"a": {"b": [{"c": 1}]}})
    given = UserDict(
        MappingProxyType(dict(body, extra=UserDict(a=MappingProxyType({"b": [UserDict(c=1)]}))))
    )
    delivery = read(given)
    assert json.loads(delivery.raw) == expected
    assert delivery.raw == read(expected).raw
    assert content_key(tracked(given)) == content_key(tracked(expected))


@pytest.mark.parametrize("wrap", [MappingProxyType, UserDict], ids=["proxy", "userdict"])
def test_a_mapping_that_is_not_a_dict_is_read(wrap: Any) -> None:
    assert tracked(wrap(disconnect("c-wrapped"))).call_id == "c-wrapped"


def test_a_mapping_holding_what_json_cannot_write_is_still_not_json() -> None:
    assert refusal(dict(disconnect(), extra={1, 2})).reason == "not_json"


def test_untracked_event_type_needs_only_a_string_event_type() -> None:
    content = read({"eventType": "dtmf"}).content
    assert isinstance(content, Untracked)
    assert content.event_type == "dtmf"


@pytest.mark.parametrize(
    ("body", "reason", "words"),
    [
        (b"\xff\xfe{}", "not_utf8", "UTF-8"),
        (b'{"eventType": "disconnect",', "not_json", "JSON"),
        (b"", "not_json", "JSON"),
        (b"[1, 2]", "not_an_object", "array"),
        (b'"disconnect"', "not_an_object", "string"),
        (b"null", "not_an_object", "null"),
        (b"[" * 100_000 + b"]" * 100_000, "too_deeply_nested", "deeply"),
        (b"{}", "missing_field", "eventType"),
        (b'{"eventType": 7}', "invalid_field", "eventType"),
        (42, "unsupported_body", "int"),
    ],
)
def test_unreadable_bodies_get_a_reason_and_a_detail(body: object, reason: str, words: str) -> None:
    problem = refusal(body)
    assert problem.reason == reason
    assert words in problem.detail


@pytest.mark.parametrize("field", ["eventType", "callId", "startTime", "endTime", "cause"])
def test_missing_required_field_is_named(field: str) -> None:
    body = disconnect()
    del body[field]
    problem = refusal(body)
    if field == "eventType":
        assert problem.reason == "missing_field"
    else:
        assert (problem.reason, problem.call_id is None) == ("missing_field", field == "callId")
    assert f"'{field}'" in problem.detail


def test_transfer_disconnect_requires_parent_call_id() -> None:
    problem = refusal(transfer_disconnect("c-parent", parentCallId=...))
    assert problem.reason == "missing_field"
    assert "'parentCallId'" in problem.detail


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("direction", "Inbound"),
        ("direction", "sideways"),
        ("accountId", 55555555),
        ("cause", 17),
        ("cause", ""),
        ("callId", ""),
        ("startTime", 1781118900),
        ("startTime", "yesterday"),
        ("endTime", "2026-06-10"),
        ("answerTime", "2026-13-40T00:00:00Z"),
        ("tag", ["a"]),
        ("sipResponseCode", "486"),
        ("callId", "c-" + "x" * 300),
        ("startTime", "0999-12-31T23:59:59Z"),
    ],
)
def test_mistyped_field_is_invalid_and_named(field: str, value: object) -> None:
    problem = refusal(disconnect(**{field: value}))
    assert problem.reason == "invalid_field"
    assert f"'{field}'" in problem.detail


def test_nul_character_in_a_field_is_refused_everywhere() -> None:
    problem = refusal(disconnect(tag="vip\x00"))
    assert problem.reason == "invalid_field"
    assert "'tag'" in problem.detail


def test_call_id_is_reported_when_readable_despite_other_errors() -> None:
    body = disconnect(endTime=...)
    assert refusal(body).call_id == body["callId"]


def test_str_and_mapping_bodies_are_stored_as_utf8_json() -> None:
    body = disconnect(tag="café ☎")
    assert (
        read(json.dumps(body, ensure_ascii=False)).raw
        == json.dumps(body, ensure_ascii=False).encode()
    )
    assert json.loads(read(body).raw) == body


@pytest.mark.parametrize(
    ("url", "account", "call"),
    [
        ("https://voice.bandwidth.com/api/v2/accounts/555/calls/c-1", "555", "c-1"),
        ("https://test.voice.bandwidth.com/api/v2/accounts/9/calls/c-2/", "9", "c-2"),
        ("https://voice.bandwidth.com/api/v2/accounts/9/calls/c-3?x=1", "9", "c-3"),
    ],
)
def test_call_url_path_names_account_and_call(url: str, account: str, call: str) -> None:
    named = read_call_url(url)
    assert named is not None
    assert (named.account_id, named.call_id) == (account, call)


def test_call_url_of_another_shape_names_nothing() -> None:
    assert read_call_url("https://example.com/hooks/voice") is None
