"""Reading bodies: tolerant of what Bandwidth really sends, precise about what it cannot read."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from tests.factories import disconnect, transfer_disconnect
from tracker.parsing import (
    Disconnect,
    TransferDisconnect,
    Unreadable,
    Untracked,
    content_key,
    read,
    read_call_url,
)


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


@pytest.mark.parametrize(("body", "key"), _PINNED_KEYS)
def test_content_key_of_a_known_body_never_changes(body: bytes, key: str) -> None:
    assert content_key(parsed(body)) == key


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
