"""`tracker.bandwidth` asking a fake of Bandwidth's Voice API through the real `bandwidth-sdk`:
every outcome of a look-up, the bounds on retries, waits and concurrency, the call list's pages,
and the sweep's resolver."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import MISSING, fields
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from tracker import Call
from tracker.bandwidth import (
    BandwidthClient,
    BandwidthResolver,
    BandwidthSettings,
    next_page_token,
    retry_after_seconds,
)
from tracker.provider import KEPT_DAYS, ProviderError, read_call_state
from tracker.testing import ACCOUNT, BASE_TIME, FakeBandwidth, FakeRequest, call_state

# Small enough that a test waits milliseconds, not seconds.
FAST: dict[str, Any] = {"timeout": 2.0, "backoff": 0.02, "max_backoff": 0.1, "attempts": 3}


@pytest.fixture
def client(bandwidth_api: FakeBandwidth) -> Iterator[BandwidthClient]:
    with BandwidthClient(BandwidthSettings.from_environment(), **FAST) as instance:
        yield instance


def _client(**options: Any) -> BandwidthClient:
    return BandwidthClient(BandwidthSettings.from_environment(), **{**FAST, **options})


def _stored(fake: FakeBandwidth, **fields: Any) -> str:
    document = call_state(**fields)
    fake.put(document)
    return str(document["callId"])


def _voice(fake: FakeBandwidth) -> list[FakeRequest]:
    """The Voice API requests the fake answered (the token endpoint's left out)."""
    return [request for request in fake.requests if request.path.startswith("/api/v2/")]


def _gap(first: FakeRequest, second: FakeRequest) -> float:
    """How long after the first answer was sent the second request arrived."""
    return second.at - (first.at + first.duration)


# --- one call's state -------------------------------------------------------------------------


def test_a_disconnected_call_is_answered_with_its_state_as_bandwidth_wrote_it(
    bandwidth_api: FakeBandwidth, client: BandwidthClient
) -> None:
    answered = BASE_TIME + timedelta(seconds=4)
    call_id = _stored(bandwidth_api, answered=answered, cause="busy", errorMessage="no")
    text = client.call_state(call_id)
    assert text is not None
    assert json.loads(text) == bandwidth_api.get(call_id)
    found = read_call_state(text)
    assert (found.state, found.cause, found.answer_time) == ("disconnected", "busy", answered)
    assert client.requests == Counter(ok=1)


def test_an_active_call_is_answered_with_its_live_state(
    bandwidth_api: FakeBandwidth, client: BandwidthClient
) -> None:
    call_id = _stored(bandwidth_api, state="answered", answered=BASE_TIME)
    text = client.call_state(call_id)
    assert text is not None
    assert read_call_state(text).state == "answered"
    assert read_call_state(text).end_time is None


def test_a_call_bandwidth_does_not_know_is_none(
    bandwidth_api: FakeBandwidth, client: BandwidthClient
) -> None:
    assert client.call_state("c-never-made") is None
    assert client.requests == Counter(not_found=1)
    assert [request.status for request in bandwidth_api.requests] == [404]


def test_the_account_asked_is_the_calls_own_else_the_configured_one(
    bandwidth_api: FakeBandwidth, client: BandwidthClient
) -> None:
    call_id = _stored(bandwidth_api, accountId="7777")
    assert client.call_state(call_id, "7777") is not None
    assert client.call_state(call_id) is None  # asked under BANDWIDTH_ACCOUNT_ID: not there
    assert [r.path.split("/")[4] for r in bandwidth_api.requests] == ["7777", ACCOUNT]


def test_without_any_account_the_error_names_the_variable_and_nothing_is_asked(
    bandwidth_api: FakeBandwidth, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BANDWIDTH_ACCOUNT_ID")
    with _client() as client:
        with pytest.raises(ProviderError, match="set BANDWIDTH_ACCOUNT_ID"):
            client.call_state("c-1")
        with pytest.raises(ProviderError, match="set BANDWIDTH_ACCOUNT_ID"):
            client.list_calls(None, BASE_TIME)
    assert bandwidth_api.requests == []


def test_an_answer_that_is_not_a_call_state_fails_the_look_up(
    bandwidth_api: FakeBandwidth, client: BandwidthClient
) -> None:
    bandwidth_api.put({"callId": "c-odd", "state": 5})
    with pytest.raises(ProviderError, match="not a Bandwidth call state") as raised:
        client.call_state("c-odd")
    assert not raised.value.refused
    assert client.requests == Counter(failed=1)


# --- failures, retried or not -----------------------------------------------------------------


def test_a_429_is_waited_out_as_retry_after_says_then_asked_again(
    bandwidth_api: FakeBandwidth, client: BandwidthClient
) -> None:
    call_id = _stored(bandwidth_api)
    bandwidth_api.fail(call_id, status=429, retry_after=0.3)
    assert client.call_state(call_id) is not None
    limited, answered = bandwidth_api.requests
    assert (limited.status, answered.status) == (429, 200)
    assert _gap(limited, answered) >= 0.3
    assert client.requests == Counter(retried=1, ok=1)


def test_a_503_with_retry_after_is_waited_out_too(
    bandwidth_api: FakeBandwidth, client: BandwidthClient
) -> None:
    call_id = _stored(bandwidth_api)
    bandwidth_api.fail(call_id, status=503, retry_after=0.3)
    assert client.call_state(call_id) is not None
    unavailable, answered = bandwidth_api.requests
    assert _gap(unavailable, answered) >= 0.3


def test_a_429_holds_back_every_thread_until_retry_after_passed(
    bandwidth_api: FakeBandwidth, client: BandwidthClient
) -> None:
    limited_id, other_id = _stored(bandwidth_api), _stored(bandwidth_api)
    bandwidth_api.fail(limited_id, status=429, retry_after=0.4)
    first = threading.Thread(target=client.call_state, args=(limited_id,))
    first.start()
    deadline = time.monotonic() + 5
    while not client.requests["retried"] and time.monotonic() < deadline:
        time.sleep(0.005)
    assert client.call_state(other_id) is not None
    first.join()
    limited, *later = bandwidth_api.requests
    assert limited.status == 429 and len(later) == 2
    assert all(_gap(limited, request) >= 0.4 for request in later)


def test_a_retry_after_given_as_an_http_date_is_honoured(
    bandwidth_api: FakeBandwidth, client: BandwidthClient
) -> None:
    call_id = _stored(bandwidth_api)
    # An HTTP date has whole seconds: 2 s ahead is between 1 and 2 s of waiting.
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    bandwidth_api.fail(call_id, status=429, retry_after=format_datetime(when, usegmt=True))
    assert client.call_state(call_id) is not None
    limited, answered = bandwidth_api.requests
    assert _gap(limited, answered) >= 0.9
    assert datetime.now(UTC) >= when - timedelta(milliseconds=50)


def test_a_retry_after_longer_than_the_cap_fails_at_once(
    bandwidth_api: FakeBandwidth,
) -> None:
    call_id = _stored(bandwidth_api)
    bandwidth_api.fail(call_id, status=429, retry_after=3600)
    with _client(max_retry_after=30) as client:
        with pytest.raises(ProviderError, match="asks to wait 3600 s") as raised:
            client.call_state(call_id)
        assert not raised.value.refused
        assert client.requests == Counter(failed=1)
    assert len(bandwidth_api.requests) == 1


def test_a_5xx_is_retried_with_growing_backoff_then_answered(
    bandwidth_api: FakeBandwidth,
) -> None:
    call_id = _stored(bandwidth_api)
    bandwidth_api.fail(call_id, status=500, times=2)
    with _client(backoff=0.1, max_backoff=1.0) as client:
        assert client.call_state(call_id) is not None
        assert client.requests == Counter(retried=2, ok=1)
    first, second, third = bandwidth_api.requests
    assert [first.status, second.status, third.status] == [500, 500, 200]
    assert _gap(first, second) >= 0.1
    assert _gap(second, third) >= 0.2


def test_a_5xx_every_time_fails_after_the_bounded_attempts(
    bandwidth_api: FakeBandwidth,
) -> None:
    call_id = _stored(bandwidth_api)
    bandwidth_api.fail(call_id, status=502, times=None)
    with _client(attempts=4) as client:
        with pytest.raises(ProviderError, match=r"502.*after 4 attempts") as raised:
            client.call_state(call_id)
        assert not raised.value.refused
        assert client.requests == Counter(retried=3, failed=1)
    assert len(bandwidth_api.requests) == 4


def test_an_answer_slower_than_the_timeout_fails_the_look_up(
    bandwidth_api: FakeBandwidth,
) -> None:
    call_id = _stored(bandwidth_api)
    bandwidth_api.slow(call_id, delay=0.6, times=None)
    started = time.monotonic()
    with _client(timeout=0.15, attempts=2) as client:
        with pytest.raises(ProviderError, match=r"timed out.*after 2 attempts"):
            client.call_state(call_id)
        assert client.requests == Counter(retried=1, failed=1)
    assert time.monotonic() - started < 0.6 * 2


def test_one_slow_answer_is_asked_again_and_answered(
    bandwidth_api: FakeBandwidth,
) -> None:
    call_id = _stored(bandwidth_api)
    bandwidth_api.slow(call_id, delay=0.5)
    with _client(timeout=0.15) as client:
        assert client.call_state(call_id) is not None
        assert client.requests == Counter(retried=1, ok=1)


def test_refused_credentials_fail_at_once_naming_the_variables(
    bandwidth_api: FakeBandwidth, monkeypatch: pytest.MonkeyPatch
) -> None:
    call_id = _stored(bandwidth_api)
    monkeypatch.setenv("BANDWIDTH_PASSWORD", "not-the-password")
    with _client() as client:
        with pytest.raises(
            ProviderError, match="BANDWIDTH_USERNAME and BANDWIDTH_PASSWORD"
        ) as raised:
            client.call_state(call_id)
        assert raised.value.refused
        assert client.requests == Counter(refused=1)
    assert [request.status for request in bandwidth_api.requests] == [401]


def test_a_403_is_a_refusal_too(bandwidth_api: FakeBandwidth, client: BandwidthClient) -> None:
    call_id = _stored(bandwidth_api)
    bandwidth_api.fail(call_id, status=403)
    with pytest.raises(ProviderError, match="403") as raised:
        client.call_state(call_id)
    assert raised.value.refused
    assert len(bandwidth_api.requests) == 1


def test_another_4xx_fails_without_a_retry(
    bandwidth_api: FakeBandwidth, client: BandwidthClient
) -> None:
    call_id = _stored(bandwidth_api)
    bandwidth_api.fail(call_id, status=400)
    with pytest.raises(ProviderError, match="answered 400") as raised:
        client.call_state(call_id)
    assert not raised.value.refused
    assert client.requests == Counter(failed=1)


def test_an_api_that_is_down_fails_every_look_up_and_answers_again_once_up(
    bandwidth_api: FakeBandwidth, client: BandwidthClient
) -> None:
    call_id = _stored(bandwidth_api)
    bandwidth_api.down()
    with pytest.raises(ProviderError, match="503"):
        client.call_state(call_id)
    bandwidth_api.down(status=None)
    with pytest.raises(ProviderError, match="no answer"):
        client.call_state(call_id)
    bandwidth_api.up()
    assert client.call_state(call_id) is not None
    assert client.requests == Counter(retried=4, failed=2, ok=1)


def test_every_request_sent_is_counted_once(
    bandwidth_api: FakeBandwidth, client: BandwidthClient
) -> None:
    ids = [_stored(bandwidth_api) for _ in range(6)]
    bandwidth_api.fail(ids[0], status=500)
    bandwidth_api.fail(ids[1], status=429, retry_after=0)
    for call_id in [*ids, "c-unknown"]:
        client.call_state(call_id)
    assert client.requests == Counter(ok=6, retried=2, not_found=1)
    assert client.requests.total() == len(bandwidth_api.requests)


# --- concurrency ------------------------------------------------------------------------------


def test_no_more_requests_than_the_concurrency_are_in_flight_at_once(
    bandwidth_api: FakeBandwidth,
) -> None:
    ids = [_stored(bandwidth_api) for _ in range(12)]
    bandwidth_api.slow(delay=0.1, times=None)
    with _client(concurrency=3) as client, ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(client.call_state, ids))
    assert [read_call_state(text or "").call_id for text in answers] == ids
    assert bandwidth_api.max_in_flight == 3


# --- OAuth2 -----------------------------------------------------------------------------------


@pytest.fixture
def oauth(bandwidth_api: FakeBandwidth, monkeypatch: pytest.MonkeyPatch) -> FakeBandwidth:
    monkeypatch.delenv("BANDWIDTH_USERNAME")
    monkeypatch.delenv("BANDWIDTH_PASSWORD")
    for name, value in bandwidth_api.environment(oauth=True).items():
        monkeypatch.setenv(name, value)
    return bandwidth_api


def _token_requests(fake: FakeBandwidth) -> list[int]:
    return [request.status for request in fake.requests if request.path.endswith("/token")]


def test_oauth2_fetches_one_token_from_the_apis_origin_for_many_requests(
    oauth: FakeBandwidth,
) -> None:
    ids = [_stored(oauth) for _ in range(8)]
    with _client(concurrency=4) as client, ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(client.call_state, ids))
    assert _token_requests(oauth) == [200]
    assert [request.status for request in _voice(oauth)] == [200] * 8


def test_oauth2_fetches_a_new_token_when_bandwidth_refuses_the_old_one(
    oauth: FakeBandwidth,
) -> None:
    call_id = _stored(oauth)
    with _client() as client:
        assert client.call_state(call_id) is not None
        oauth.revoke_tokens()
        assert client.call_state(call_id) is not None
        assert client.requests == Counter(ok=2, retried=1)
    assert _token_requests(oauth) == [200, 200]


def test_oauth2_refused_client_credentials_fail_naming_the_variables(
    oauth: FakeBandwidth, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BANDWIDTH_CLIENT_SECRET", "not-the-secret")
    with _client() as client:
        with pytest.raises(
            ProviderError, match="BANDWIDTH_CLIENT_ID and BANDWIDTH_CLIENT_SECRET"
        ) as raised:
            client.call_state(_stored(oauth))
        assert raised.value.refused
    assert _token_requests(oauth) == [401]
    assert _voice(oauth) == []


# --- the call list ----------------------------------------------------------------------------


def test_the_call_list_follows_every_page_and_gives_each_call_of_the_window_once(
    bandwidth_api: FakeBandwidth,
) -> None:
    since, until = BASE_TIME, BASE_TIME + timedelta(hours=1)
    inside = [
        call_state(start=since + timedelta(seconds=97 * n), state="disconnected") for n in range(25)
    ]
    outside = [
        call_state(start=since - timedelta(milliseconds=1)),
        call_state(start=until),  # the window is [since, until)
        call_state(start=until + timedelta(minutes=5)),
        call_state(start=since + timedelta(minutes=1), accountId="7777"),
    ]
    bandwidth_api.put_many([*inside, *outside])
    with _client(page_size=10) as client:
        pages = list(client.list_calls(ACCOUNT, since, until))
    assert len(pages) > 1 and all(1 <= len(page) <= 10 for page in pages)
    listed = [call.call_id for page in pages for call in page]
    assert sorted(listed) == sorted(document["callId"] for document in inside)
    assert all(call.state == "disconnected" and call.ended for page in pages for call in page)
    tokens = [request.query.get("pageToken") for request in bandwidth_api.requests]
    assert tokens[0] is None and all(tokens[1:]) and len(set(tokens)) == len(tokens)


def test_the_call_list_holds_one_page_at_a_time(bandwidth_api: FakeBandwidth) -> None:
    bandwidth_api.put_many(call_state(start=BASE_TIME + timedelta(seconds=n)) for n in range(30))
    with _client(page_size=10) as client:
        pages = client.list_calls(None, BASE_TIME)
        assert len(next(pages)) == 10
        assert len(bandwidth_api.requests) == 1
        assert len(next(pages)) == 10
        assert len(bandwidth_api.requests) == 2


def test_a_page_that_fails_ends_the_list_with_an_error_after_the_pages_given(
    bandwidth_api: FakeBandwidth,
) -> None:
    bandwidth_api.put_many(call_state(start=BASE_TIME + timedelta(seconds=n)) for n in range(15))
    with _client(page_size=10, attempts=2) as client:
        pages = client.list_calls(ACCOUNT, BASE_TIME)
        assert len(next(pages)) == 10
        bandwidth_api.fail(status=500, times=None)
        with pytest.raises(ProviderError, match="page 2: 500"):
            next(pages)


def test_an_empty_window_lists_nothing(
    bandwidth_api: FakeBandwidth, client: BandwidthClient
) -> None:
    bandwidth_api.put(call_state(start=BASE_TIME))
    later = BASE_TIME + timedelta(days=1)
    assert list(client.list_calls(ACCOUNT, later, later + timedelta(hours=1))) == []
    assert len(bandwidth_api.requests) == 1


def test_a_window_that_names_no_instant_is_refused(client: BandwidthClient) -> None:
    with pytest.raises(ValueError, match="no time zone"):
        client.list_calls(ACCOUNT, datetime(2026, 6, 10))
    with pytest.raises(ValueError, match="must be after"):
        client.list_calls(ACCOUNT, BASE_TIME, BASE_TIME)


@pytest.mark.parametrize(
    "header",
    [
        '<https://v.test/calls?pageToken=abc&pageSize=10>; rel="next"',
        '<https://v.test/calls?x=1>; rel="prev", <https://v.test/calls?pageToken=abc>; rel=next',
        '<https://v.test/calls?pageToken=abc>; title="a, b"; rel="next last"',
        '<https://v.test/x?pageToken=no>; title="rel=next; \\"q\\""; rel=prev, '
        '<https://v.test/calls?pageToken=abc>; REL = "next"',
        '</api/v2/accounts/1/calls?minStartTime=a,b&pageToken=abc>;rel="Next"',
    ],
)
def test_the_next_pages_token_is_read_from_any_link_header_shape(header: str) -> None:
    assert next_page_token(header) == "abc"


def test_a_link_header_without_a_next_page_ends_the_list() -> None:
    assert next_page_token(None) is None
    assert next_page_token('<https://v.test/calls?pageToken=abc>; rel="prev"') is None
    with pytest.raises(ProviderError, match="no pageToken"):
        next_page_token('<https://v.test/calls?pageSize=3>; rel="next"')


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    now = datetime(2026, 6, 10, 19, 15, tzinfo=UTC)
    assert retry_after_seconds("5") == 5.0
    assert retry_after_seconds(" 0.25 ") == 0.25
    assert retry_after_seconds("Wed, 10 Jun 2026 19:15:30 GMT", now) == 30.0
    assert retry_after_seconds("Wed, 10 Jun 2026 19:00:00 GMT", now) == 0.0
    assert retry_after_seconds("-3") == 0.0
    for unreadable in (None, "", "soon", "nan", "inf"):
        assert retry_after_seconds(unreadable) is None


# --- the sweep's resolver ---------------------------------------------------------------------


def _call(call_id: str, start: datetime | None, account_id: str | None = ACCOUNT) -> Call:
    """A live call as the tracker would hand it to the resolver."""
    required: dict[str, Any] = {
        field.name: None
        for field in fields(Call)
        if field.default is MISSING and field.default_factory is MISSING
    }
    return Call(
        **{
            **required,
            "call_id": call_id,
            "legs": (),
            "history": (),
            "state": "answered",
            "start_time": start,
            "account_id": account_id,
        }
    )


def test_the_resolver_answers_with_bandwidths_state_of_the_call(
    bandwidth_api: FakeBandwidth,
) -> None:
    ended = _stored(bandwidth_api, start=datetime.now(UTC) - timedelta(hours=5))
    live = _stored(bandwidth_api, state="answered", start=datetime.now(UTC) - timedelta(hours=5))
    resolver = BandwidthResolver(_client())
    for call_id, state in ((ended, "disconnected"), (live, "answered")):
        text = resolver(_call(call_id, datetime.now(UTC) - timedelta(hours=5)))
        assert read_call_state(text or "").state == state
    assert resolver(_call("c-gone", datetime.now(UTC))) is None
    assert resolver.requests == Counter(ok=2, not_found=1)


def test_the_resolver_asks_the_calls_own_account(bandwidth_api: FakeBandwidth) -> None:
    call_id = _stored(bandwidth_api, accountId="7777")
    resolver = BandwidthResolver(_client())
    now = datetime.now(UTC)
    assert resolver(_call(call_id, now, "7777")) is not None
    assert resolver(_call(call_id, now, None)) is None  # BANDWIDTH_ACCOUNT_ID's: unknown


def test_the_resolver_does_not_ask_of_a_call_older_than_bandwidth_keeps(
    bandwidth_api: FakeBandwidth,
) -> None:
    now = datetime(2026, 6, 20, tzinfo=UTC)
    old = _stored(bandwidth_api, start=now - timedelta(days=KEPT_DAYS, seconds=1))
    recent = _stored(bandwidth_api, start=now - timedelta(days=KEPT_DAYS - 1))
    resolver = BandwidthResolver(_client(), now=lambda: now)
    assert resolver(_call(old, now - timedelta(days=KEPT_DAYS, seconds=1))) is None
    assert bandwidth_api.requests == []
    assert resolver(_call(recent, now - timedelta(days=KEPT_DAYS - 1))) is not None
    assert resolver(_call(old, None)) is not None  # no start time: it asks


def test_the_resolver_raises_when_the_look_up_failed(bandwidth_api: FakeBandwidth) -> None:
    call_id = _stored(bandwidth_api)
    bandwidth_api.fail(call_id, status=503, times=None)
    resolver = BandwidthResolver(_client(attempts=2))
    with pytest.raises(ProviderError, match="503") as raised:
        resolver(_call(call_id, datetime.now(UTC)))
    assert not raised.value.refused


def test_the_resolver_answers_many_threads_at_once_each_its_own_call(
    bandwidth_api: FakeBandwidth,
) -> None:
    states = ["disconnected", "answered", "initiated"]
    ids = [_stored(bandwidth_api, state=states[n % 3]) for n in range(60)]
    resolver = BandwidthResolver(_client(concurrency=5))
    assert resolver.concurrency == 5
    with ThreadPoolExecutor(max_workers=resolver.concurrency * 2) as pool:
        answers = list(pool.map(lambda call_id: resolver(_call(call_id, None)), ids))
    found = [read_call_state(text or "") for text in answers]
    assert [(call.call_id, call.state) for call in found] == [
        (call_id, states[n % 3]) for n, call_id in enumerate(ids)
    ]
    assert bandwidth_api.max_in_flight <= 5
